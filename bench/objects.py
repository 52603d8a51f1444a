"""Berth on S3 + PostgreSQL beside Berth on the filesystem + SQLite, and three instances on
S3 + PostgreSQL behind haproxy: blob push (monolithic and chunked), blob pull (redirected to
a presigned URL, and streamed through Berth), manifest GET and tag list rates.

The S3 server is moto's (scripts/s3.sh), a single Python process that keeps objects in
memory, and PostgreSQL is Debian's (scripts/postgres.sh), both on this machine: the figures
show what Berth adds on top of these engines here, not what a real S3 would give.

    python3 bench/objects.py [--smoke] [--out FILE]

writes a Markdown table (docs/BENCHMARKS-objects.md by default, a temporary file with --smoke).
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from e2eutil import Cluster, RegistryServer, free_port, fresh_postgres_database  # noqa: E402
from test_object_storage import s3_env  # noqa: E402

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FULL = {"blob": 256 * MiB, "chunks": 4, "rounds": 3, "wrk_s": 10, "conns": 64}
SMOKE = {"blob": 8 * MiB, "chunks": 2, "rounds": 1, "wrk_s": 1, "conns": 8}


def engine(script: str, work: str) -> tuple[str, callable]:
    """Starts an engine with one of the project's scripts; its URL and how to stop it."""
    d = os.path.join(work, script.split(".")[0])
    os.makedirs(d)
    os.chmod(d, 0o755)
    path = os.path.join(REPO, "scripts", script)
    p = subprocess.run([path, "start", d, str(free_port())], capture_output=True, text=True, timeout=180, check=True)
    return p.stdout.strip().splitlines()[-1], lambda: subprocess.run([path, "stop", d], timeout=60)


def host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


def request(url: str, method: str, path: str, body=None, headers=None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(*host_port(url), timeout=600, blocksize=1 * MiB)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    r.data = r.read()
    conn.close()
    return r


def expect(r, status: int, what: str):
    if r.status != status:
        raise SystemExit(f"{what}: {r.status} {r.data[:300]!r}")
    return r


def location(r) -> str:
    loc = r.getheader("Location")
    return "/" + loc.split("://", 1)[1].split("/", 1)[1] if "://" in loc else loc


def push(url: str, repo: str, path: str, size: int, digest: str, chunks: int) -> float:
    """Seconds to push the file at `path` in `chunks` PATCHes (1: one monolithic PUT)."""
    t0 = time.monotonic()
    loc = location(expect(request(url, "POST", f"/v2/{repo}/blobs/uploads/"), 202, "POST"))
    step = size // chunks
    with open(path, "rb") as f:
        for i in range(chunks - 1):
            f.seek(i * step)
            body = f.read(step)
            loc = location(expect(request(url, "PATCH", loc, body, {
                "Content-Type": "application/octet-stream", "Content-Range": f"{i * step}-{(i + 1) * step - 1}",
                "Content-Length": str(step)}), 202, "PATCH"))
        f.seek((chunks - 1) * step)
        sep = "&" if "?" in loc else "?"
        expect(request(url, "PUT", f"{loc}{sep}digest={digest}", f, {
            "Content-Type": "application/octet-stream", "Content-Length": str(size - (chunks - 1) * step)}), 201, "PUT")
    return time.monotonic() - t0


def pull(url: str, repo: str, digest: str, size: int) -> float:
    """Seconds for curl to fetch the blob, following a redirect if there is one."""
    out = subprocess.run(["curl", "-sSL", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
                          f"{url}/v2/{repo}/blobs/{digest}"], capture_output=True, text=True, timeout=600, check=True)
    code, got, seconds = out.stdout.split()
    if code != "200" or int(got) != size:
        raise SystemExit(f"pull {digest}: {out.stdout}")
    return float(seconds)


def s3_alone(s3: str, work: str, cfg: dict) -> float:
    """MiB/s of the S3 server itself: curl PUTs of a blob of the same size, best of the rounds."""
    best = []
    for _ in range(cfg["rounds"]):
        with Blob(work, cfg["blob"]) as (path, digest):
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "-T", path,
                                  f"{s3}/berth-test/bench-alone-{digest[7:]}"],
                                 capture_output=True, text=True, timeout=600, check=True).stdout.split()
            if out[0] != "200":
                raise SystemExit(f"PUT to the S3 server alone: {out}")
            best.append(float(out[1]))
    return cfg["blob"] / min(best) / MiB


def tiny_image(url: str, repo: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = b"bench layer"
    for data in (config, layer):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        loc = location(expect(request(url, "POST", f"/v2/{repo}/blobs/uploads/"), 202, "POST"))
        sep = "&" if "?" in loc else "?"
        expect(request(url, "PUT", f"{loc}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"}),
               201, "PUT blob")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
        "digest": "sha256:" + hashlib.sha256(config).hexdigest()}, "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "size": len(layer),
            "digest": "sha256:" + hashlib.sha256(layer).hexdigest()}]}).encode()
    for tag in ("latest", "v1", "v2"):
        expect(request(url, "PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST}),
               201, "PUT manifest")


def rate(url: str, path: str, cfg: dict) -> tuple[float, float]:
    """wrk's requests per second and p99 latency (ms) for GETs of `path`."""
    out = subprocess.run(["wrk", "-t2", f"-c{cfg['conns']}", f"-d{cfg['wrk_s']}s", "--latency", "-s",
                          os.path.join(HERE, "wrk-report.lua"), "-H", f"Accept: {OCI_MANIFEST}", url + path],
                         capture_output=True, text=True, timeout=cfg["wrk_s"] + 60, check=True).stdout
    j = json.loads(out.split("WRKJSON ", 1)[1].splitlines()[0])
    errors = j["status_err"] + j["connect_err"] + j["read_err"] + j["write_err"] + j["timeout_err"]
    if errors:
        raise SystemExit(f"wrk {path}: {errors} errors of {j['requests']} requests")
    return j["requests"] / (j["duration_us"] / 1e6), j["p99_us"] / 1000


def measure(name: str, url: str, work: str, cfg: dict, streamed_url: str | None = None) -> dict:
    repo = "bench/" + uuid.uuid4().hex[:8]
    size = cfg["blob"]
    row = {"setup": name}
    mono, chunked, pulls, streamed = [], [], [], []
    for _ in range(cfg["rounds"]):
        # New bytes for every push: a blob the registry has already is not written again.
        with Blob(work, size) as (path, digest):
            mono.append(push(url, repo, path, size, digest, 1))
        with Blob(work, size) as (path, digest):
            chunked.append(push(url, repo, path, size, digest, cfg["chunks"]))
        pulls.append(pull(url, repo, digest, size))
        if streamed_url:
            streamed.append(pull(streamed_url, repo, digest, size))
    row["push"] = size / min(mono) / MiB
    row["push_chunked"] = size / min(chunked) / MiB
    row["pull"] = size / min(pulls) / MiB
    if streamed:
        row["pull_streamed"] = size / min(streamed) / MiB
    tiny_image(url, f"{repo}-t")
    row["manifest"] = rate(url, f"/v2/{repo}-t/manifests/latest", cfg)
    row["tags"] = rate(url, f"/v2/{repo}-t/tags/list", cfg)
    print(json.dumps(row), file=sys.stderr)
    return row


class Blob:
    """A file of `size` random bytes for one push, and its digest; removed afterwards."""

    def __init__(self, work: str, size: int):
        self.path, self.size = os.path.join(work, "blob-" + uuid.uuid4().hex), size

    def __enter__(self) -> tuple[str, str]:
        h = hashlib.sha256()
        with open(self.path, "wb") as f:
            for _ in range(self.size // MiB):
                data = os.urandom(MiB)
                h.update(data)
                f.write(data)
        return self.path, "sha256:" + h.hexdigest()

    def __exit__(self, *exc) -> None:
        os.remove(self.path)


CAVEAT = ("With PostgreSQL the read caches are off (several instances may share the database), so every "
          "manifest GET and tag list is a database query. On this machine's 2 cores the three instances, "
          "haproxy, PostgreSQL, moto and wrk share the same CPUs: the cluster row shows the cost of the "
          "extra hop, not the gain of scaling out.")


def table(rows: list[dict], alone: float, cfg: dict, command: str) -> str:
    def r(v):
        return f"{v[0]:,.0f} ({v[1]:.1f} ms)" if isinstance(v, tuple) else f"{v:,.0f}" if v else "–"
    lines = [
        "# Benchmarks: object storage and PostgreSQL, one instance and a cluster", "",
        f"Measured with `{command}` on {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}. Blob {cfg['blob'] // MiB} MiB of random bytes, best of {cfg['rounds']}; "
        f"chunked pushes in {cfg['chunks']} chunks; GET rates by wrk, {cfg['conns']} connections, "
        f"{cfg['wrk_s']} s, with p99 latency.", "",
        "S3 is moto's server (`scripts/s3.sh`: one Python process, objects in memory) and PostgreSQL "
        "Debian's (`scripts/postgres.sh`), on the same machine as Berth and the clients: the S3 rows are "
        "bounded by moto, not by a real object store. Pushes include the digest check and, on S3, "
        "composing the parts into the blob's key; a redirected pull is served by moto from a "
        "presigned URL, a streamed one through Berth. The three instances share one database and "
        "bucket behind haproxy (round robin per request), so the chunks of one push land on "
        "different instances. " + CAVEAT, "",
        "| setup | push MiB/s | chunked push MiB/s | pull MiB/s | pull streamed through Berth MiB/s "
        "| manifest GET req/s (p99) | tag list req/s (p99) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['setup']} | {r(row['push'])} | {r(row['push_chunked'])} | {r(row['pull'])} | "
                     f"{r(row.get('pull_streamed'))} | {r(row['manifest'])} | {r(row['tags'])} |")
    lines += ["", f"The S3 server alone takes {alone:,.0f} MiB/s: a `curl -T` PUT of a blob of the same size "
              "(best of the rounds). A push to Berth on S3 writes the bytes to the server twice (the parts, "
              "then the blob composed from them by a server-side copy, which moto performs by copying in "
              "memory) and deletes the parts."]
    return "\n".join(lines) + "\n"


def arguments(doc: str, name: str, full: dict, smoke: dict) -> tuple[dict, str, str, str]:
    """The command line of `bench/NAME.py [--smoke] [--out FILE]`: the sizes, the command as the
    table quotes it, where the table goes (docs/BENCHMARKS-NAME.md, or a temporary file for a
    smoke run) and a fresh work directory."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; the table goes to a temp file")
    ap.add_argument("--out", help="where the table goes")
    args = ap.parse_args()
    command = f"python3 bench/{name}.py" + (" --smoke" if args.smoke else "")
    out = args.out or (os.path.join(tempfile.gettempdir(), f"berth-bench-{name}-smoke.md") if args.smoke
                       else os.path.join(REPO, "docs", f"BENCHMARKS-{name}.md"))
    work = tempfile.mkdtemp(prefix=f"berth-bench-{name}-")
    os.chmod(work, 0o755)
    return (smoke if args.smoke else full), command, out, work


def main():
    cfg, command, out, work = arguments(__doc__, "objects", FULL, SMOKE)
    stops, servers = [], []
    try:
        pg, stop = engine("postgres.sh", work)
        stops.append(stop)
        s3, stop = engine("s3.sh", work)
        stops.append(stop)
        rows = []
        alone = s3_alone(s3, work, cfg)

        fs = RegistryServer("berth", os.path.join(work, "fs"))
        servers.append(fs)
        fs.start()
        rows.append(measure("filesystem + SQLite", fs.url, work, cfg))

        db = fresh_postgres_database(pg)
        prefix = "/bench-" + uuid.uuid4().hex[:8]
        one = RegistryServer("berth", os.path.join(work, "s3"))
        one.extra_env = {"REGISTRY_BERTH_DATABASE_URL": db, **s3_env(s3, prefix)}
        streamed = RegistryServer("berth", os.path.join(work, "s3-streamed"))
        streamed.extra_env = {"REGISTRY_BERTH_DATABASE_URL": db, **s3_env(s3, prefix, redirect=False)}
        servers += [one, streamed]
        one.start()
        streamed.start()
        rows.append(measure("S3 + PostgreSQL, one instance", one.url, work, cfg, streamed_url=streamed.url))

        env = {"REGISTRY_BERTH_DATABASE_URL": fresh_postgres_database(pg),
               **s3_env(s3, "/bench-" + uuid.uuid4().hex[:8], redirect=False)}
        cluster_dir = os.path.join(work, "cluster")
        os.makedirs(cluster_dir)
        cluster = Cluster(cluster_dir, env)
        servers.append(cluster)
        rows.append(measure("S3 + PostgreSQL, 3 instances behind haproxy (pulls streamed)", cluster.url, work, cfg))

        with open(out, "w") as f:
            f.write(table(rows, alone, cfg, command))
        print(f"wrote {out}", file=sys.stderr)
    finally:
        for s in reversed(servers):
            s.stop()
        for stop in reversed(stops):
            stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
