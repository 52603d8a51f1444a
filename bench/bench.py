#!/usr/bin/env python3
"""Berth vs Distribution benchmark driver. Started by bench/run.sh, which owns the
work directory and kills every PID listed in WORK/pids at exit.

Clients: http.client + sendfile (blob pushes), curl (pulls), wrk (GET rates), ab (HEAD rate), skopeo (image
round trip), Python threads with keep-alive http.client (bulk tag/repo creation,
100 concurrent pushes whose throughput is not reported).
"""
import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = ", ".join([OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"])

FULL = dict(big=1024 * MiB, chunk=16 * MiB, conc_blob=256 * MiB, conc_pulls=16,
            many_pushes=100, many_size=64 * MiB, tags=100_000, repos=10_000,
            wrk_s=10, wrk_rounds=2, rounds=3, skopeo_rounds=3, layer=4 * MiB,
            page_samples=15, restarts=5, conns=64, sha_s=3, iperf_s=5, dd_count=64,
            bulk_threads=16)
SMOKE = dict(big=8 * MiB, chunk=1 * MiB, conc_blob=8 * MiB, conc_pulls=4,
             many_pushes=8, many_size=1 * MiB, tags=200, repos=50,
             wrk_s=2, wrk_rounds=1, rounds=1, skopeo_rounds=1, layer=256 * 1024,
             page_samples=5, restarts=2, conns=64, sha_s=1, iperf_s=1, dd_count=4,
             bulk_threads=8)


class StepFailed(Exception):
    pass


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes
class Procs:
    """Every long-lived child PID is listed in WORK/pids so run.sh's trap can stop it."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.live = {}
        self.lock = threading.Lock()

    def _write(self):
        tmp = self.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(f"{p}\n" for p in self.live))
        os.replace(tmp, self.pidfile)

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        with self.lock:
            self.live[p.pid] = p
            self._write()
        return p

    def reap(self, p, timeout=10):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        with self.lock:
            self.live.pop(p.pid, None)
            self._write()

    def wait(self, p, timeout):
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.reap(p)
            raise StepFailed(f"{p.args[0]} timed out after {timeout}s")
        self.reap(p)
        return p.returncode

    def stop_all(self):
        for p in list(self.live.values()):
            self.reap(p, timeout=5)


PROCS = None


def run(argv, timeout, check=True, **kw):
    """Run a command to completion (bounded), return stdout text."""
    p = PROCS.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.reap(p)
        raise StepFailed(f"timeout after {timeout}s: {' '.join(argv)}")
    PROCS.reap(p)
    if check and p.returncode != 0:
        raise StepFailed(f"exit {p.returncode}: {' '.join(argv)}\n{err.strip()[-2000:]}")
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- http helpers
class Conn:
    """Keep-alive HTTP/1.1 connection; reconnects once on a dropped connection."""

    def __init__(self, port, timeout=120):
        self.port, self.timeout, self.c = port, timeout, None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if hdrs.get("connection", "").lower() == "close":
                    self.close()
                return r.status, hdrs, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest):
                self.close()
                if attempt:
                    raise

    def close(self):
        if self.c:
            self.c.close()
        self.c = None


def req(port, method, path, body=None, headers=None, timeout=120):
    c = Conn(port, timeout)
    try:
        return c.request(method, path, body, headers)
    finally:
        c.close()


def desc(method, path, status, hdrs, body):
    b = body[:300].decode("utf-8", "replace") if body else ""
    return f"{method} {path} -> {status} {json.dumps(hdrs)} {b!r}"


def expect(status, want, what):
    if status != want:
        raise StepFailed(f"{what}: expected {want}")


def loc_path(location):
    u = urllib.parse.urlsplit(location)
    return u.path + (("?" + u.query) if u.query else "")


def with_param(path, k, v):
    return path + ("&" if "?" in path else "?") + f"{k}={urllib.parse.quote(v, safe=':')}"


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def start_upload(conn, repo):
    path = f"/v2/{repo}/blobs/uploads/"
    st, h, b = conn.request("POST", path, b"", {"Content-Length": "0"})
    if st != 202 or "location" not in h:
        raise StepFailed("start upload: " + desc("POST", path, st, h, b))
    return loc_path(h["location"])


def push_small_blob(conn, repo, data):
    d = sha(data)
    loc = start_upload(conn, repo)
    path = with_param(loc, "digest", d)
    st, h, b = conn.request("PUT", path, data, {"Content-Type": "application/octet-stream",
                                                  "Content-Length": str(len(data))})
    if st != 201:
        raise StepFailed("blob PUT: " + desc("PUT", path, st, h, b))
    return d


def put_manifest(conn, repo, ref, body):
    path = f"/v2/{repo}/manifests/{ref}"
    st, h, b = conn.request("PUT", path, body, {"Content-Type": OCI_MANIFEST})
    if st != 201:
        raise StepFailed("manifest PUT: " + desc("PUT", path, st, h, b))
    return h


def tiny_image(seed):
    """(config bytes, layer bytes, manifest bytes) of a tiny valid image."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        data = f"hello {seed}\n".encode()
        ti = tarfile.TarInfo("hello.txt")
        ti.size, ti.mtime = len(data), 0
        t.addfile(ti, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha(raw.getvalue())]}},
                        sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    return config, layer, manifest


def push_tiny_image(conn, repo, tag, img):
    config, layer, manifest = img
    push_small_blob(conn, repo, config)
    push_small_blob(conn, repo, layer)
    put_manifest(conn, repo, tag, manifest)
    return sha(manifest)


def parallel(n_threads, items, fn, port):
    """fn(conn, item) over items split across n_threads keep-alive connections."""
    errors = []
    chunks = [items[i::n_threads] for i in range(n_threads)]

    def worker(chunk):
        c = Conn(port)
        try:
            for it in chunk:
                if errors:
                    return
                fn(c, it)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            c.close()

    ts = [threading.Thread(target=worker, args=(ch,)) for ch in chunks if ch]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise StepFailed(errors[0])


# ---------------------------------------------------------------- servers
class Server:
    def __init__(self, slot, binpath, work):
        self.slot, self.bin, self.work = slot, binpath, work
        self.proc, self.port, self.datadir = None, None, None
        vers = subprocess.run([binpath, "--version"], capture_output=True, text=True, timeout=30)
        text = (vers.stdout + vers.stderr).strip()
        self.version = text.splitlines()[0] if text else "?"
        first = self.version.split(" ", 1)
        if "/" in first[0] and len(first) == 2:   # Distribution prints its argv[0] first
            self.version = first[1]
        self.is_distribution = "distribution" in self.version.lower()
        self.logn = 0

    def start(self, datadir):
        """Start on a fresh port with storage in datadir; return seconds from spawn to ready."""
        self.datadir = datadir
        os.makedirs(datadir, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ,
                   REGISTRY_HTTP_ADDR=f"127.0.0.1:{self.port}",
                   REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=datadir,
                   REGISTRY_STORAGE_DELETE_ENABLED="true",
                   REGISTRY_LOG_LEVEL="warn",
                   REGISTRY_LOG_ACCESSLOG_DISABLED="true")
        if self.is_distribution:
            cfg = os.path.join(self.work, f"{self.slot}-config.yml")
            with open(cfg, "w") as f:
                f.write("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
                        f"storage:\n  filesystem:\n    rootdirectory: {datadir}\n"
                        f"http:\n  addr: 127.0.0.1:{self.port}\n")
            argv = [self.bin, "serve", cfg]
        else:
            argv = [self.bin, "serve"]
        self.logn += 1
        self.logpath = os.path.join(self.work, f"{self.slot}-{self.logn}.log")
        logf = open(self.logpath, "w")
        t0 = time.monotonic()
        self.proc = PROCS.spawn(argv, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        logf.close()
        deadline = t0 + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StepFailed(f"{self.slot} exited with {self.proc.returncode} during startup, "
                                 f"see {logf.name}")
            try:
                st, _, _ = req(self.port, "GET", "/v2/", timeout=2)
                if st == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.002)
        raise StepFailed(f"{self.slot} not ready within 120 s")

    def died(self):
        """Describe a server that exited on its own, with the tail of its log."""
        rc = self.proc.returncode
        sig = f" (signal {signal.Signals(-rc).name})" if rc < 0 else ""
        with open(self.logpath, errors="replace") as f:
            tail = f.read()[-3000:]
        PROCS.reap(self.proc)
        return f"{self.slot} server process exited with code {rc}{sig}; log {self.logpath} ends:\n{tail}"

    def stop(self):
        if self.proc:
            PROCS.reap(self.proc)
            self.proc = None

    def status_kib(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise StepFailed(f"{key} missing")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"


# ---------------------------------------------------------------- data
def gen_blob(path, size, chunk=None, chunkdir=None):
    """Random file (optionally also split into chunk files); returns digest."""
    h = hashlib.sha256()
    piece = min(size, 16 * MiB)
    chunks = []
    with open(path, "wb") as f:
        written = 0
        cf, cwritten = None, 0
        while written < size:
            b = os.urandom(min(piece, size - written))
            f.write(b)
            h.update(b)
            if chunk:
                mv = memoryview(b)
                while len(mv):
                    if cf is None:
                        cp = os.path.join(chunkdir, f"chunk{len(chunks):05d}")
                        chunks.append((cp, written + len(b) - len(mv)))
                        cf, cwritten = open(cp, "wb"), 0
                    n = min(len(mv), chunk - cwritten)
                    cf.write(mv[:n])
                    cwritten += n
                    mv = mv[n:]
                    if cwritten == chunk:
                        cf.close()
                        cf = None
            written += len(b)
        if cf:
            cf.close()
    return "sha256:" + h.hexdigest(), chunks


def build_oci_layout(path, nlayers, layer_size, tag="latest"):
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        d = sha(data)
        with open(os.path.join(blobs, d[7:]), "wb") as f:
            f.write(data)
        return d

    layers, diff_ids = [], []
    for i in range(nlayers):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as t:
            data = os.urandom(layer_size)
            ti = tarfile.TarInfo(f"data/layer{i}.bin")
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            t.addfile(ti, io.BytesIO(data))
        diff_ids.append(sha(raw.getvalue()))
        gz = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
        layers.append({"mediaType": OCI_LAYER, "digest": put(gz), "size": len(gz)})
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                         "config": {"Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         "history": [{"created": "2024-01-01T00:00:00Z"} for _ in layers]}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": put(config), "size": len(config)},
                           "layers": layers}).encode()
    md = put(manifest)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": md, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    return md


# ---------------------------------------------------------------- measurements
class Bench:
    def __init__(self, args, cfg, work):
        self.args, self.cfg, self.work = args, cfg, work
        self.data = os.path.join(work, "data")
        os.makedirs(self.data)
        # Run private copies, so a concurrent rebuild of target/release/berth cannot
        # replace the executable under a running server.
        bindir = os.path.join(work, "bin")
        os.makedirs(bindir)
        bins = {}
        for slot, path in (("berth", args.berth_bin), ("distribution", args.distribution_bin)):
            bins[slot] = os.path.join(bindir, f"{slot}-{os.path.basename(path)}")
            shutil.copy2(path, bins[slot])
        self.servers = [Server("berth", bins["berth"], work),
                        Server("distribution", bins["distribution"], work)]
        for s, path in zip(self.servers, (args.berth_bin, args.distribution_bin)):
            s.origin = path
        self.results = {}   # figure -> {"berth": [..], "distribution": [..]}
        self.notes = {}     # figure -> text
        self.limits = {}
        self.failures = []
        self.phase_n = 0

    # -- bookkeeping
    def record(self, fig, slot, value):
        self.results.setdefault(fig, {}).setdefault(slot, []).append(value)

    def fail(self, what, e):
        msg = f"{what}: {e}"
        log("FAIL", msg)
        self.failures.append(msg)

    def step(self, what, fn, *a):
        try:
            return fn(*a)
        except StepFailed as e:
            self.fail(what, e)
        except Exception as e:  # noqa: BLE001 - any crash in a step is a failed step
            self.fail(what, f"{type(e).__name__}: {e}")
        return None

    def alternate(self, rounds, fn):
        """fn(server, round) for every server, alternating who goes first each round."""
        log(f"{fn.__name__}: {rounds} round(s)")
        for r in range(rounds):
            order = self.servers if r % 2 == 0 else self.servers[::-1]
            for s in order:
                what = f"{fn.__name__} [{s.slot}] round {r + 1}"
                self.step(what, fn, s, r)
                if s.proc is not None and s.proc.poll() is not None:
                    self.fail(what, s.died())
                    s.proc = None

    def fresh_dirs(self):
        self.phase_n += 1
        return {s.slot: os.path.join(self.work, f"store-{self.phase_n}-{s.slot}") for s in self.servers}

    def start_all(self, dirs):
        ok = []
        for s in self.servers:
            try:
                t = s.start(dirs[s.slot])
                ok.append(s)
                self.last_start = getattr(self, "last_start", {})
                self.last_start[s.slot] = t
            except StepFailed as e:
                self.fail(f"start {s.slot}", e)
        return ok

    def stop_all(self, dirs, remove=True):
        """Stop both servers; remove the phase's storage now (bulky phases) or leave it for
        run.sh's final cleanup (inode-heavy phases, where rm takes minutes)."""
        for s in self.servers:
            s.stop()
        for d in dirs.values() if remove else ():
            if os.path.exists(d):
                run(["rm", "-rf", d], timeout=1800, check=False)

    # -- machine limits
    def machine_limits(self):
        c = self.cfg
        out = run(["openssl", "speed", "-evp", "sha256", "-bytes", "16384", "-seconds", str(c["sha_s"])],
                  timeout=60)
        line = [ln for ln in out.splitlines() if ln.lower().startswith("sha256")][-1]
        self.limits["sha256"] = float(line.split()[-1].rstrip("k")) * 1000 / 1e6
        port = free_port()
        srv = PROCS.spawn(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            j = {"error": "not run"}
            for _ in range(100):   # the server may not be listening yet
                out = run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(c["iperf_s"]), "-J"],
                          timeout=60, check=False)
                try:
                    j = json.loads(out)
                except ValueError:
                    j = {"error": out[-500:]}
                if "error" not in j and "sum_received" in j.get("end", {}):
                    break
                time.sleep(0.05)
            else:
                raise StepFailed(f"iperf3 client failed: {j.get('error')}")
            self.limits["loopback"] = j["end"]["sum_received"]["bits_per_second"] / 8 / 1e6
        finally:
            PROCS.reap(srv)
        f = os.path.join(self.work, "dd.tmp")
        t0 = time.monotonic()
        run(["dd", "if=/dev/zero", f"of={f}", "bs=16M", f"count={c['dd_count']}", "conv=fdatasync"], timeout=300)
        self.limits["disk"] = c["dd_count"] * 16 * MiB / (time.monotonic() - t0) / 1e6
        os.unlink(f)
        log("limits (MB/s):", json.dumps({k: round(v) for k, v in self.limits.items()}))

    # -- blob pushes: one keep-alive connection, bodies sent from the page cache with
    # sendfile(2) so that the client is not what is measured; the same code for both
    # servers and for monolithic and chunked pushes, as docker and containerd push.
    @staticmethod
    def send_file(conn, method, path, fpath, headers):
        n = os.path.getsize(fpath)
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in {"Content-Type": "application/octet-stream", "Content-Length": str(n), **headers}.items():
            conn.putheader(k, v)
        conn.endheaders()
        with open(fpath, "rb") as f:
            conn.sock.sendfile(f)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()

    def push_file(self, s, repo, path, digest, size, chunks=None):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=1800)
        try:
            conn.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"", headers={"Content-Length": "0"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 202:
                raise StepFailed(desc("POST", f"/v2/{repo}/blobs/uploads/", r.status, dict(r.getheaders()), body))
            loc = loc_path(r.getheader("Location"))
            for cpath, off in chunks or []:
                n = os.path.getsize(cpath)
                st, h, b = self.send_file(conn, "PATCH", loc, cpath, {"Content-Range": f"{off}-{off + n - 1}"})
                if st != 202 or "location" not in h:
                    raise StepFailed(desc("PATCH", loc, st, h, b))
                loc = loc_path(h["location"])
            put = with_param(loc, "digest", digest)
            if chunks:
                conn.request("PUT", put, body=b"", headers={"Content-Length": "0"})
                r = conn.getresponse()
                st, h, b = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            else:
                st, h, b = self.send_file(conn, "PUT", put, path, {})
            if st != 201:
                raise StepFailed(f"push of {size} bytes: " + desc("PUT", put, st, h, b))
            if h.get("docker-content-digest", digest) != digest:
                raise StepFailed(f"PUT {put} -> Docker-Content-Digest {h['docker-content-digest']}, expected {digest}")
        finally:
            conn.close()

    def push_mono(self, s, repo, path, digest, size):
        self.push_file(s, repo, path, digest, size)

    def push_chunked(self, s, repo, chunks, digest, size):
        self.push_file(s, repo, None, digest, size, chunks)

    def curl_pull(self, s, repo, digest, size, verify=False):
        url = s.url(f"/v2/{repo}/blobs/{digest}")
        if verify:
            out = run(["bash", "-c", 'set -o pipefail; curl -sSfL "$1" | sha256sum', "_", url], timeout=1800)
            got = "sha256:" + out.split()[0]
            if got != digest:
                raise StepFailed(f"GET {url} body digest {got}, expected {digest}")
            return
        out = run(["curl", "-sSL", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url], timeout=1800)
        code, n = out.split()
        if code != "200" or int(n) != size:
            raise StepFailed(f"GET {url} -> {code}, {n} bytes (expected 200, {size})")

    def blob_throughput(self):
        c = self.cfg
        big = os.path.join(self.data, "big.bin")
        chunkdir = os.path.join(self.data, "chunks")
        os.makedirs(chunkdir)
        log(f"generating {c['big'] // MiB} MiB blob + {c['conc_blob'] // MiB} MiB blob")
        self.big_digest, self.big_chunks = gen_blob(big, c["big"], c["chunk"], chunkdir)
        mid = os.path.join(self.data, "mid.bin")
        self.mid_digest, _ = gen_blob(mid, c["conc_blob"])
        bigname = f"{c['big'] // MiB} MiB"
        f_mono = f"push {bigname} blob, monolithic PUT (MB/s ↑)"
        f_chunk = f"push {bigname} blob, PATCH {c['chunk'] // MiB} MiB chunks + PUT (MB/s ↑)"
        f_pull = f"pull {bigname} blob (MB/s ↑)"
        f_conc = f"{c['conc_pulls']} concurrent pulls of {c['conc_blob'] // MiB} MiB blob, aggregate (MB/s ↑)"

        def push_mono(s, r):
            t0 = time.monotonic()
            self.push_mono(s, "bench/big", big, self.big_digest, c["big"])
            self.record(f_mono, s.slot, c["big"] / (time.monotonic() - t0) / 1e6)

        def push_chunked(s, r):
            t0 = time.monotonic()
            self.push_chunked(s, "bench/big", self.big_chunks, self.big_digest, c["big"])
            self.record(f_chunk, s.slot, c["big"] / (time.monotonic() - t0) / 1e6)

        def verify_pull(s, r):
            self.curl_pull(s, "bench/big", self.big_digest, c["big"], verify=True)
            self.push_mono(s, "bench/mid", mid, self.mid_digest, c["conc_blob"])
            self.curl_pull(s, "bench/mid", self.mid_digest, c["conc_blob"], verify=True)
            st, h, b = req(s.port, "HEAD", f"/v2/bench/big/blobs/{self.big_digest}")
            if st != 200 or h.get("content-length") != str(c["big"]):
                raise StepFailed("blob HEAD: " + desc("HEAD", f"/v2/bench/big/blobs/{self.big_digest}", st, h, b))

        def pull(s, r):
            t0 = time.monotonic()
            self.curl_pull(s, "bench/big", self.big_digest, c["big"])
            self.record(f_pull, s.slot, c["big"] / (time.monotonic() - t0) / 1e6)

        def concurrent_pull(s, r):
            url = s.url(f"/v2/bench/mid/blobs/{self.mid_digest}")
            t0 = time.monotonic()
            ps = [PROCS.spawn(["curl", "-sSL", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(c["conc_pulls"])]
            outs = []
            for p in ps:
                try:
                    o, e = p.communicate(timeout=1800)
                finally:
                    PROCS.reap(p)
                outs.append((p.returncode, o.strip(), e.strip()))
            dt = time.monotonic() - t0
            for rc, o, e in outs:
                if rc != 0 or o != f"200 {c['conc_blob']}":
                    raise StepFailed(f"concurrent GET {url} -> rc={rc} '{o}' {e} (expected '200 {c['conc_blob']}')")
            self.record(f_conc, s.slot, c["conc_pulls"] * c["conc_blob"] / dt / 1e6)

        self.alternate(c["rounds"], push_mono)
        self.alternate(c["rounds"], push_chunked)
        self.alternate(1, verify_pull)
        self.alternate(c["rounds"], pull)
        self.alternate(c["rounds"], concurrent_pull)
        self.limited = {f_mono: "push", f_chunk: "push", f_pull: "pull", f_conc: "pull"}

    # -- request rates
    def request_rates(self):
        c = self.cfg
        img = tiny_image("wrk")
        refs = {}
        for s in self.servers:
            if s.proc is None:
                continue
            try:
                conn = Conn(s.port)
                md = push_tiny_image(conn, "bench/small", "latest", img)
                for ref in ("latest", md):
                    path = f"/v2/bench/small/manifests/{ref}"
                    st, h, b = conn.request("GET", path, None, {"Accept": ACCEPT})
                    if st != 200 or b != img[2] or h.get("docker-content-digest") != md:
                        raise StepFailed("manifest GET: " + desc("GET", path, st, h, b))
                st, h, b = conn.request("GET", "/v2/bench/small/tags/list")
                if st != 200 or json.loads(b).get("tags") != ["latest"]:
                    raise StepFailed("tags list: " + desc("GET", "/v2/bench/small/tags/list", st, h, b))
                refs[s.slot] = md
            except Exception as e:  # noqa: BLE001
                self.fail(f"prepare small image [{s.slot}]", e)
        layer_d = sha(img[1])
        conns = c["conns"]
        gets = [
            (f"manifest GET by tag ({conns} conns)", lambda s: "/v2/bench/small/manifests/latest"),
            (f"manifest GET by digest ({conns} conns)", lambda s: f"/v2/bench/small/manifests/{refs[s.slot]}"),
            (f"tag list GET, 1 tag ({conns} conns)", lambda s: "/v2/bench/small/tags/list"),
        ]
        for fig, pathf in gets:
            def wrk(s, r, fig=fig, pathf=pathf):
                if s.slot not in refs:
                    raise StepFailed("no image pushed")
                url = s.url(pathf(s))
                out = run(["wrk", "-t2", f"-c{conns}", f"-d{c['wrk_s']}s", "--latency",
                           "-s", os.path.join(HERE, "wrk-report.lua"), "-H", f"Accept: {ACCEPT}", url],
                          timeout=c["wrk_s"] + 60)
                m = re.search(r"WRKJSON (\{.*\})", out)
                if not m:
                    raise StepFailed(f"wrk output unparsable:\n{out}")
                j = json.loads(m.group(1))
                errs = {k: v for k, v in j.items() if k.endswith("_err") and v}
                if errs or not j["requests"]:
                    raise StepFailed(f"wrk GET {url}: errors {errs} of {j['requests']} requests")
                self.record(fig + " req/s ↑", s.slot, j["requests"] / (j["duration_us"] / 1e6))
                self.record(fig + " p50 ms ↓", s.slot, j["p50_us"] / 1000)
                self.record(fig + " p99 ms ↓", s.slot, j["p99_us"] / 1000)
            wrk.__name__ = "wrk " + fig
            self.alternate(c["wrk_rounds"], wrk)

        fig = f"blob HEAD ({conns} conns, ab -k)"

        def ab(s, r):
            if s.slot not in refs:
                raise StepFailed("no image pushed")
            url = s.url(f"/v2/bench/small/blobs/{layer_d}")
            csv = os.path.join(self.work, f"ab-{s.slot}.csv")
            out = run(["ab", "-q", "-i", "-k", "-c", str(conns), "-t", str(c["wrk_s"]), "-n", "100000000",
                       "-e", csv, url], timeout=c["wrk_s"] + 60)
            done = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
            failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
            non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
            ka = re.search(r"Keep-Alive requests:\s+(\d+)", out)
            if failed or non2xx or not done:
                raise StepFailed(f"ab HEAD {url}: {done} done, {failed} failed, non-2xx {non2xx and non2xx.group(1)}")
            if ka and int(ka.group(1)) < done // 2:
                self.notes[fig + " req/s ↑"] = self.notes.get(fig + " req/s ↑", "") + \
                    f"{s.slot}: only {ka.group(1)}/{done} requests kept alive. "
            rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
            pct = {}
            with open(csv) as f:
                for line in f:
                    a, _, b = line.strip().partition(",")
                    if a.isdigit():
                        pct[int(a)] = float(b)
            self.record(fig + " req/s ↑", s.slot, rps)
            self.record(fig + " p50 ms ↓", s.slot, pct[50])
            self.record(fig + " p99 ms ↓", s.slot, pct[99])
        ab.__name__ = "ab HEAD"
        self.alternate(c["wrk_rounds"], ab)

    # -- skopeo
    def skopeo_round_trip(self):
        c = self.cfg
        f_in = f"skopeo copy oci: → docker://, 5 × {c['layer'] / MiB:g} MiB layers (s ↓)"
        f_out = f"skopeo copy docker:// → oci:, 5 × {c['layer'] / MiB:g} MiB layers (s ↓)"
        layouts = []
        for r in range(c["skopeo_rounds"]):
            p = os.path.join(self.data, f"oci-{r}")
            layouts.append((p, build_oci_layout(p, 5, c["layer"])))
        common = ["skopeo", "--insecure-policy", "copy", "-q"]

        def copy_in(s, r):
            src, md = layouts[r]
            t0 = time.monotonic()
            run(common + ["--dest-tls-verify=false", f"oci:{src}:latest",
                          f"docker://127.0.0.1:{s.port}/bench/skopeo{r}:latest"], timeout=600)
            self.record(f_in, s.slot, time.monotonic() - t0)

        def copy_out(s, r):
            src, md = layouts[r]
            dst = os.path.join(self.work, f"skopeo-out-{s.slot}-{r}")
            t0 = time.monotonic()
            run(common + ["--src-tls-verify=false", f"docker://127.0.0.1:{s.port}/bench/skopeo{r}:latest",
                          f"oci:{dst}:latest"], timeout=600)
            self.record(f_out, s.slot, time.monotonic() - t0)
            with open(os.path.join(dst, "index.json")) as f:
                got = json.load(f)["manifests"][0]["digest"]
            shutil.rmtree(dst, ignore_errors=True)
            if got != md:
                raise StepFailed(f"round trip changed the manifest: {got} != {md}")

        self.alternate(c["skopeo_rounds"], copy_in)
        self.alternate(c["skopeo_rounds"], copy_out)

    # -- memory
    def peak_rss_push(self, chunked):
        c = self.cfg
        fig = f"peak RSS during {c['big'] // MiB} MiB {'chunked' if chunked else 'monolithic'} push (MiB ↓)"
        dirs = self.fresh_dirs()
        try:
            for s in self.servers:
                try:
                    s.start(dirs[s.slot])
                    if chunked:
                        self.push_chunked(s, "bench/big", self.big_chunks, self.big_digest, c["big"])
                    else:
                        self.push_mono(s, "bench/big", os.path.join(self.data, "big.bin"),
                                            self.big_digest, c["big"])
                    self.record(fig, s.slot, s.status_kib("VmHWM") / 1024)
                except Exception as e:  # noqa: BLE001
                    self.fail(fig + f" [{s.slot}]", e)
                finally:
                    s.stop()
        finally:
            self.stop_all(dirs)

    def peak_rss_many(self):
        c = self.cfg
        n, size = c["many_pushes"], c["many_size"]
        fig = f"peak RSS during {n} concurrent {size // MiB} MiB pushes (MiB ↓)"
        base = os.urandom(size - 16)
        h0 = hashlib.sha256(base)
        suffixes = [f"{i:016d}".encode() for i in range(n)]
        digests = []
        for sfx in suffixes:
            h = h0.copy()
            h.update(sfx)
            digests.append("sha256:" + h.hexdigest())
        dirs = self.fresh_dirs()

        def one(s, i, errors, barrier):
            try:
                c_ = Conn(s.port, timeout=600)
                loc = start_upload(c_, "bench/many")
                barrier.wait(60)
                path = with_param(loc, "digest", digests[i])
                conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=600)
                conn.putrequest("PUT", path)
                conn.putheader("Content-Type", "application/octet-stream")
                conn.putheader("Content-Length", str(size))
                conn.endheaders()
                mv = memoryview(base)
                for off in range(0, len(mv), MiB):
                    conn.send(mv[off:off + MiB])
                conn.send(suffixes[i])
                r = conn.getresponse()
                body = r.read()
                conn.close()
                c_.close()
                if r.status != 201:
                    errors.append(desc("PUT", path, r.status, dict(r.getheaders()), body))
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {e}")
                barrier.abort()

        try:
            for s in self.servers:
                try:
                    s.start(dirs[s.slot])
                    errors, barrier = [], threading.Barrier(n)
                    ts = [threading.Thread(target=one, args=(s, i, errors, barrier)) for i in range(n)]
                    for t in ts:
                        t.start()
                    for t in ts:
                        t.join(1800)
                    if errors:
                        raise StepFailed(f"{len(errors)} of {n} pushes failed; first: {errors[0]}")
                    self.record(fig, s.slot, s.status_kib("VmHWM") / 1024)
                    st, h, b = req(s.port, "HEAD", f"/v2/bench/many/blobs/{digests[-1]}")
                    if st != 200:
                        raise StepFailed("HEAD after push: " + desc("HEAD", "", st, h, b))
                except Exception as e:  # noqa: BLE001
                    self.fail(fig + f" [{s.slot}]", e)
                finally:
                    s.stop()
        finally:
            self.stop_all(dirs)

    # -- 100k tags
    def many_tags(self):
        c = self.cfg
        n = c["tags"]
        fig = f"tags/list page of 100 from a repo with {n} tags (ms ↓)"
        figc = f"create {n} tags: manifest PUTs, {c['bulk_threads']} keep-alive Python threads (s ↓)"
        img = tiny_image("tags")
        names = [f"t{i:06d}" for i in range(n)]
        last = names[n // 2]
        want = names[n // 2 + 1:n // 2 + 101]
        dirs = self.fresh_dirs()
        started = self.start_all(dirs)
        try:
            for s in started:
                try:
                    push_tiny_image(Conn(s.port), "bench/tags", "seed", img)
                    t0 = time.monotonic()
                    parallel(c["bulk_threads"], names, lambda conn, t: put_manifest(conn, "bench/tags", t, img[2]), s.port)
                    self.record(figc, s.slot, time.monotonic() - t0)
                except Exception as e:  # noqa: BLE001
                    self.fail(figc + f" [{s.slot}]", e)
                    started = [x for x in started if x is not s]

            def page(s, r):
                conn = Conn(s.port)
                path = f"/v2/bench/tags/tags/list?n=100&last={last}"
                t0 = time.monotonic()
                st, h, b = conn.request("GET", path)
                dt = time.monotonic() - t0
                conn.close()
                if st != 200:
                    raise StepFailed(desc("GET", path, st, h, b))
                tags = json.loads(b).get("tags")
                if tags != want:
                    note = (f"{s.slot}: returned {len(tags or [])} tags"
                            f" (first {tags[:1] if tags else None}), not the page after {last}. ")
                    if note not in self.notes.get(fig, ""):
                        self.notes[fig] = self.notes.get(fig, "") + note
                    if not s.is_distribution:
                        raise StepFailed(f"GET {path} -> 200 with {len(tags or [])} tags, "
                                         f"first {tags[:2] if tags else None}; expected {want[:2]}..{want[-1:]}")
                self.record(fig, s.slot, dt * 1000)
            self.alternate(c["page_samples"], page)
        finally:
            self.stop_all(dirs, remove=False)

    # -- 10k repos startup
    def many_repos(self):
        c = self.cfg
        n = c["repos"]
        fig = f"start to ready (GET /v2/ 200) with {n} repositories (ms ↓)"
        figc = f"create {n} repos: blob+manifest pushes, {c['bulk_threads']} keep-alive Python threads (s ↓)"
        img = tiny_image("repos")
        names = [f"r{i:05d}/img" for i in range(n)]
        dirs = self.fresh_dirs()
        started = self.start_all(dirs)
        ok = []
        try:
            for s in started:
                try:
                    t0 = time.monotonic()
                    parallel(c["bulk_threads"], names, lambda conn, r: push_tiny_image(conn, r, "latest", img), s.port)
                    self.record(figc, s.slot, time.monotonic() - t0)
                    ok.append(s)
                except Exception as e:  # noqa: BLE001
                    self.fail(figc + f" [{s.slot}]", e)

            def restart(s, r):
                if s not in ok:
                    raise StepFailed("repositories were not created")
                s.stop()
                self.record(fig, s.slot, s.start(dirs[s.slot]) * 1000)
                for name in (names[0], names[-1]):
                    path = f"/v2/{name}/manifests/latest"
                    st, h, b = req(s.port, "GET", path, headers={"Accept": ACCEPT})
                    if st != 200 or b != img[2]:
                        raise StepFailed("after restart: " + desc("GET", path, st, h, b))
            self.alternate(c["restarts"], restart)
        finally:
            self.stop_all(dirs, remove=False)

    # -- main
    def main(self):
        c = self.cfg
        self.step("machine limits", self.machine_limits)
        dirs = self.fresh_dirs()
        for s in self.servers:
            try:
                t = s.start(dirs[s.slot])
                self.record("start to ready, empty storage (ms ↓)", s.slot, t * 1000)
                req(s.port, "GET", "/v2/")
                time.sleep(1)
                self.record("idle RSS (MiB ↓)", s.slot, s.status_kib("VmRSS") / 1024)
            except Exception as e:  # noqa: BLE001
                self.fail(f"start {s.slot}", e)
        try:
            if all(s.proc for s in self.servers):
                self.step("blob throughput", self.blob_throughput)
                self.step("request rates", self.request_rates)
                self.step("skopeo", self.skopeo_round_trip)
        finally:
            self.stop_all(dirs)
        if not hasattr(self, "big_digest"):
            self.failures.append("skipping the remaining phases: no blob data")
            return
        self.step("peak RSS mono", self.peak_rss_push, False)
        self.step("peak RSS chunked", self.peak_rss_push, True)
        self.step("peak RSS many", self.peak_rss_many)
        self.step("many tags", self.many_tags)
        self.step("many repos", self.many_repos)


# ---------------------------------------------------------------- report
def fmt(v):
    if v is None:
        return "FAIL"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def machine_info():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return f"{os.cpu_count()} CPUs ({os.sched_getaffinity(0).__len__()} usable), {cpu}, " \
           f"{mem_kib / 1024 / 1024:.1f} GiB RAM, kernel {platform.release()}"


def report(b, command, smoke, elapsed):
    L = b.limits
    push_lim = min(L["sha256"], L["disk"]) if "sha256" in L and "disk" in L else None
    lim = {"push": push_lim, "pull": L.get("loopback")}
    rows, notes = [], []
    for fig, per in b.results.items():
        bv = per.get("berth")
        dv = per.get("distribution")
        bm = statistics.median(bv) if bv else None
        dm = statistics.median(dv) if dv else None
        ratio = f"{bm / dm:.2f}" if bm is not None and dm else "–"
        kind = getattr(b, "limited", {}).get(fig)
        pct = f"{100 * bm / lim[kind]:.0f}%" if kind and bm is not None and lim.get(kind) else ""
        name = fig
        if fig in b.notes:
            notes.append(b.notes[fig].strip())
            name += f" [{len(notes)}]"
        rows.append(f"| {name} | {fmt(bm)} | {fmt(dm)} | {ratio} | {pct} |")
    bsrv, dsrv = b.servers
    lines = [
        "# Benchmarks: Berth vs Distribution" + (" (SMOKE RUN — tiny sizes, numbers meaningless)" if smoke else ""),
        "",
        f"Generated by `bench/run.sh` on {time.strftime('%Y-%m-%d %H:%M %Z')} in {elapsed / 60:.1f} min.",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_info()}",
        f"- Berth: `{bsrv.origin}` — `{bsrv.version}`",
        f"- Distribution: `{dsrv.origin}` — `{dsrv.version}`",
        f"- Storage: filesystem driver, one fresh directory per server and phase under `{b.work}`"
        f" ({b.args.fs_info}); no auth; plain HTTP on 127.0.0.1.",
        "- Physical limits (same run): "
        + ", ".join(f"{k} {fmt(v)} MB/s" for k, v in
                    (("SHA-256, one core (openssl speed -evp sha256 -bytes 16384)", L.get("sha256")),
                     ("loopback TCP (iperf3)", L.get("loopback")),
                     ("disk write with fdatasync (dd bs=16M)", L.get("disk")))),
        "",
        "Values are medians over rounds; the two servers run side by side and alternate who goes first "
        "in each round. MB = 10^6 bytes. Ratio = Berth / Distribution (↑ higher is better, ↓ lower is better). "
        "Limit % = Berth as a percentage of min(SHA-256, disk) for pushes and of loopback TCP for pulls.",
        "",
        "| figure | Berth | Distribution | ratio B/D | Berth % of limit |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        *[f"[{i + 1}] {n}" for i, n in enumerate(notes)],
        *([""] if notes else []),
        "Clients: blob pushes over one keep-alive http.client connection per push, each body sent "
        "from a file in the page cache with sendfile(2), digest precomputed (monolithic: POST then one "
        "PUT with the body; chunked: PATCH per 16 MiB chunk with Content-Range, then PUT); curl for "
        "pulls; wrk -t2 with `bench/wrk-report.lua` (GETs, OCI+Docker `Accept`), `ab -i -k` (HEAD), "
        "skopeo (image round trip, a fresh 5-layer OCI layout per round), Python threads with keep-alive "
        "http.client (tag/repo creation and the concurrent pushes used only for peak RSS). RSS is VmRSS/VmHWM "
        "from /proc/PID/status; each peak figure uses a freshly started server.",
        "",
    ]
    if b.failures:
        lines += ["## Failures", ""] + [f"- {f.splitlines()[0]}" for f in b.failures] + [""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--berth-bin", required=True)
    ap.add_argument("--distribution-bin", required=True)
    ap.add_argument("--fs-info", default="")
    args = ap.parse_args()
    global PROCS
    PROCS = Procs(os.path.join(args.work, "pids"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    b = Bench(args, SMOKE if args.smoke else FULL, args.work)
    try:
        b.main()
    finally:
        PROCS.stop_all()
    text = report(b, args.command, args.smoke, time.monotonic() - t0)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    log(f"report written to {args.out}")
    if b.failures:
        log(f"{len(b.failures)} step(s) FAILED:")
        for f_ in b.failures:
            print("  - " + f_, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
