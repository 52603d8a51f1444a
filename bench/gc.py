"""Garbage collection: how fast a pass frees blobs, and what pushes and pulls get while passes
run, on the filesystem + SQLite and on S3 + PostgreSQL (moto's S3 server and Debian's
PostgreSQL on this machine, started by the project's scripts).

1. Collection rate: `blobs` unreferenced blobs (pushed with no manifest) are freed by one
   `berth gc` with no grace period; blobs per minute is their count over the command's time
   (process start included).
2. Under collection: for `seconds`, 4 clients push new 64 KiB blobs (each one garbage a
   a second later) while wrk reads a manifest; once with collection off, once with a pass
   every 100 ms and a grace of 1 s, so passes free what the pushers pushed while they push.

    python3 bench/gc.py [--smoke] [--out FILE]

writes a Markdown table (docs/BENCHMARKS-gc.md by default, a temporary file with --smoke).
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
sys.path.insert(0, HERE)

from e2eutil import BERTH_BIN, RegistryServer, fresh_postgres_database  # noqa: E402
from objects import arguments, engine, expect, location, rate, request, tiny_image  # noqa: E402
from test_object_storage import s3_env  # noqa: E402

FULL = {"blobs": 5000, "seconds": 20, "wrk_s": 20, "conns": 32}
SMOKE = {"blobs": 100, "seconds": 2, "wrk_s": 2, "conns": 4}
CLIENTS = 4


def push_blob(url: str, repo: str, data: bytes) -> None:
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = location(expect(request(url, "POST", f"/v2/{repo}/blobs/uploads/"), 202, "POST"))
    sep = "&" if "?" in loc else "?"
    expect(request(url, "PUT", f"{loc}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"}),
           201, "PUT blob")


def push_many(url: str, repo: str, count: int, size: int) -> None:
    """`count` distinct blobs of `size` bytes, by CLIENTS threads."""
    def work(n: int):
        for i in range(n, count, CLIENTS):
            push_blob(url, repo, i.to_bytes(8, "big") + os.urandom(size - 8))
    threads = [threading.Thread(target=work, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pushes_for(url: str, repo: str, seconds: float) -> float:
    """Blob pushes per second by CLIENTS threads for `seconds`."""
    done, stop = [0] * CLIENTS, time.monotonic() + seconds

    def work(n: int):
        while time.monotonic() < stop:
            push_blob(url, repo, os.urandom(64 << 10))
            done[n] += 1
    threads = [threading.Thread(target=work, args=(n,)) for n in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def collected_in_log(server: RegistryServer) -> int:
    """Blobs the server's passes freed, from its log lines."""
    return sum(int(n) for n in re.findall(r"garbage collection pass.*?\bblobs=(\d+)", server.log_text(10 ** 9)))


def setup(name: str, work: str, env: dict, cfg: dict) -> dict:
    row = {"setup": name}
    base = {**env, "REGISTRY_BERTH_GC_ENABLED": "false"}
    srv = RegistryServer("berth", os.path.join(work, name.split()[0] + "-rate"))
    srv.extra_env = base
    srv.start()
    push_many(srv.url, "bench/garbage", cfg["blobs"], 4096)
    srv.stop()
    cli_env = {**srv.env(), "REGISTRY_BERTH_GC_GRACE": "0s"}
    t0 = time.monotonic()
    out = subprocess.run([BERTH_BIN, "gc"], env=cli_env, capture_output=True, text=True, timeout=3600, check=True)
    seconds = time.monotonic() - t0
    freed = int(re.search(r"freed (\d+) blobs", out.stdout).group(1))
    if freed != cfg["blobs"]:
        raise SystemExit(f"{name}: a pass freed {freed} of {cfg['blobs']} blobs:\n{out.stdout[-2000:]}")
    row["per_minute"] = freed / seconds * 60
    row["pass_s"] = seconds

    for mode, gc_env in (("off", {"REGISTRY_BERTH_GC_ENABLED": "false"}),
                         ("on", {"REGISTRY_BERTH_GC_INTERVAL": "100ms", "REGISTRY_BERTH_GC_GRACE": "1s"})):
        s = RegistryServer("berth", os.path.join(work, name.split()[0] + "-" + mode))
        s.extra_env = {**env, **gc_env}
        s.start()
        repo = "bench/" + uuid.uuid4().hex[:8]
        tiny_image(s.url, repo)
        results = {}
        reader = threading.Thread(target=lambda: results.update(pull=rate(s.url, f"/v2/{repo}/manifests/latest", cfg)))
        reader.start()
        results["push"] = pushes_for(s.url, repo + "-push", cfg["seconds"])
        reader.join()
        # Collection frees the pushers' blobs, never the image that is being read.
        expect(request(s.url, "GET", f"/v2/{repo}/manifests/latest", headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"}), 200, "the read image")
        s.stop()
        row[mode] = {**results, "collected": collected_in_log(s)}
    return row


def table(rows: list[dict], cfg: dict, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Garbage-collection benchmark",
        "",
        f"Measured with `{command}` on {os.cpu_count()} cores ({cpu}); S3 is moto's server and PostgreSQL",
        "Debian's, both on this machine. Collection rate: one `berth gc` (no grace) freeing "
        f"{cfg['blobs']} unreferenced 4 KiB blobs, process start included. Under collection: "
        f"{CLIENTS} clients pushing new 64 KiB blobs and wrk ({cfg['conns']} connections) reading a "
        f"manifest for {cfg['seconds']} s, with collection off and with a pass every 100 ms and a grace of "
        "1 s (the pushers' blobs are garbage a second later, so passes delete while they push).",
        "",
        "| setup | blobs collected per minute | pass | collection | blob pushes/s | manifest GET req/s | p99 ms | blobs collected during the run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for mode in ("off", "on"):
            m = r[mode]
            lines.append(f"| {r['setup']} | {r['per_minute']:,.0f} | {r['pass_s']:.1f} s | {mode} | "
                         f"{m['push']:,.0f} | {m['pull'][0]:,.0f} | {m['pull'][1]:.1f} | {m['collected']:,} |")
    return "\n".join(lines) + "\n"


def main():
    cfg, command, out, work = arguments(__doc__, "gc", FULL, SMOKE)
    stops = []
    try:
        pg, stop = engine("postgres.sh", work)
        stops.append(stop)
        s3, stop = engine("s3.sh", work)
        stops.append(stop)
        rows = [setup("filesystem + SQLite", work, {}, cfg)]
        print(rows[-1], file=sys.stderr)
        env = {"REGISTRY_BERTH_DATABASE_URL": fresh_postgres_database(pg),
               **s3_env(s3, "/bench-gc-" + uuid.uuid4().hex[:8], redirect=False)}
        rows.append(setup("S3 + PostgreSQL", work, env, cfg))
        print(rows[-1], file=sys.stderr)
        with open(out, "w") as f:
            f.write(table(rows, cfg, command))
        print(f"wrote {out}", file=sys.stderr)
    finally:
        for stop in reversed(stops):
            stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
