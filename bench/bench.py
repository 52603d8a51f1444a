#!/usr/bin/env python3
"""Berth vs Distribution benchmark driver. Started by bench/run.sh, which owns the
work directory and kills every PID listed in WORK/pids at exit.

Clients: http.client + sendfile (blob pushes), curl (pulls), wrk (GET rates), ab (HEAD rate), skopeo (image
round trip), Python threads with keep-alive http.client (bulk tag/repo creation,
100 concurrent pushes whose throughput is not reported), bench/abuse.py (asyncio child process:
stalled downloads and slow uploads for the abuse rows). Disk limit: fio.
"""
import argparse
import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import re
import resource
import select
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
            page_samples=15, restarts=5, conns=64, sha_s=3, iperf_s=5, fio_repeat=2,
            bulk_threads=16,
            abuse_down=2000, abuse_up=500, abuse_blob=32 * MiB, abuse_piece=4096, abuse_pieces=8,
            abuse_patches=2, abuse_pause=1.0, abuse_first_s=20, abuse_hold_s=45, abuse_dl_cap=30,
            abuse_gets=20, abuse_get_gap=0.5, abuse_connect_par=128, abuse_rounds=1)
SMOKE = dict(big=8 * MiB, chunk=1 * MiB, conc_blob=8 * MiB, conc_pulls=4,
             many_pushes=8, many_size=1 * MiB, tags=200, repos=50,
             wrk_s=2, wrk_rounds=1, rounds=1, skopeo_rounds=1, layer=256 * 1024,
             page_samples=5, restarts=2, conns=64, sha_s=1, iperf_s=1, fio_repeat=1,
             bulk_threads=8,
             abuse_down=40, abuse_up=10, abuse_blob=4 * MiB, abuse_piece=1024, abuse_pieces=3,
             abuse_patches=2, abuse_pause=0.2, abuse_first_s=5, abuse_hold_s=15, abuse_dl_cap=10,
             abuse_gets=5, abuse_get_gap=0.1, abuse_connect_par=32, abuse_rounds=1)


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


def x5c_token(key_path, crt_path, scope_name="bench/small"):
    """An ES256 JWT as Docker's token servers write it, with the signing certificate in
    `x5c`, for Distribution's `auth.token.rootcertbundle`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    cert = x509.load_pem_x509_certificate(open(crt_path, "rb").read())
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), password=None)
    header = {"alg": "ES256", "typ": "JWT",
              "x5c": [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]}
    now = int(time.time())
    claims = {"iss": "bench-issuer", "sub": "bench", "aud": "bench", "exp": now + 3600, "nbf": now - 10,
              "iat": now, "jti": hashlib.sha256(os.urandom(16)).hexdigest(),
              "access": [{"type": "repository", "name": scope_name, "actions": ["pull"]}]}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


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

    def start(self, datadir, auth=None):
        """Start on a fresh port with storage in datadir; return seconds from spawn to ready.
        `auth`: {"env": REGISTRY_* settings for Berth, "yaml": an `auth:` section for Distribution}."""
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
                        f"http:\n  addr: 127.0.0.1:{self.port}\n" + (auth["yaml"] if auth else ""))
            argv = [self.bin, "serve", cfg]
        else:
            argv = [self.bin, "serve"]
            env.update(auth["env"] if auth else {})
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
                if st == 200 or (auth and st == 401):
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
        self.disk_limit()
        log("limits (MB/s):", json.dumps({k: round(v) for k, v in self.limits.items()}))

    def disk_limit(self):
        """Disk write limit as a registry writes a blob: one new file written sequentially, the
        size of the big push, then fsync before the response. fio, several block sizes, buffered and
        O_DIRECT, best MB/s wins (fio's bandwidth includes the final fsync). Run in a directory
        beside the servers' storage directories (same file system)."""
        c = self.cfg
        d = os.path.join(self.work, "store-fio")
        os.makedirs(d, exist_ok=True)
        f = os.path.join(d, "fio.tmp")
        # Buffered writes at three block sizes; O_DIRECT; and writeback started every 2 MiB with
        # sync_file_range(SYNC_FILE_RANGE_WRITE), which is how Berth's upload spool writes.
        variants = [["--bs=256k"], ["--bs=1m"], ["--bs=4m"], ["--bs=1m", "--direct=1"],
                    ["--bs=256k", "--sync_file_range=write:8"]]
        self.fio_runs = {}   # variant label -> [MB/s]
        self.fio_argv = None
        for _ in range(c["fio_repeat"]):
            for extra in variants:
                argv = ["fio", "--name=disk", f"--filename={f}", "--rw=write", f"--size={c['big']}",
                        "--ioengine=psync", "--fallocate=none", "--end_fsync=1", "--output-format=json", *extra]
                out = run(argv, timeout=600)
                try:
                    job = json.loads(out[out.index("{"):])["jobs"][0]
                except (ValueError, KeyError, IndexError):
                    raise StepFailed(f"fio output unparsable: {out[-1000:]}")
                w = job["write"]
                if job.get("error") or w["io_bytes"] != c["big"] or not w["bw_bytes"]:
                    raise StepFailed(f"fio {' '.join(argv)}: error {job.get('error')}, {w['io_bytes']} bytes written")
                label = " ".join(extra)
                self.fio_runs.setdefault(label, []).append(w["bw_bytes"] / 1e6)
                if os.path.exists(f):
                    os.unlink(f)
                self.fio_argv = argv
        os.rmdir(d)
        self.limits["disk"] = max(max(v) for v in self.fio_runs.values())
        log("fio MB/s:", json.dumps({k: [round(x) for x in v] for k, v in self.fio_runs.items()}))

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

    def wrk_get(self, s, fig, path, headers):
        """wrk GETs of `path` on `s` for the configured time; records req/s, p50 and p99."""
        c = self.cfg
        url = s.url(path)
        hargs = [a for k, v in {"Accept": ACCEPT, **headers}.items() for a in ("-H", f"{k}: {v}")]
        out = run(["wrk", "-t2", f"-c{c['conns']}", f"-d{c['wrk_s']}s", "--latency",
                   "-s", os.path.join(HERE, "wrk-report.lua"), *hargs, url], timeout=c["wrk_s"] + 60)
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
                self.wrk_get(s, fig, pathf(s), {})
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

    # -- abuse: many slow transfers
    def abuse(self):
        """Stalled downloads + slow uploads (bench/abuse.py, a child process) while a normal client
        pulls the same blob and GETs a manifest; a freshly started server per slot and round."""
        c = self.cfg
        n_d, n_u, size = c["abuse_down"], c["abuse_up"], c["abuse_blob"]
        blob = os.path.join(self.data, "abuse.bin")
        digest, _ = gen_blob(blob, size)
        img = tiny_image("abuse")
        md = sha(img[2])
        mb = f"{size // MiB} MiB"
        F = {
            "first": f"abuse: stalled downloads of a {mb} blob that got their first bytes within "
                     f"{c['abuse_first_s']} s (of {n_d}) ↑",
            "ttfb50": "abuse: stalled downloads, time to first bytes, median (ms ↓)",
            "ttfbmax": "abuse: stalled downloads, time to first bytes, slowest (ms ↓)",
            "acked": f"abuse: slow uploads with every PATCH acknowledged (of {n_u}) ↑",
            "ackmax": "abuse: slow uploads, slowest PATCH 202 after its last byte (ms ↓)",
            "dl0": f"abuse: normal client's full download of the {mb} blob, idle server, before the abuse (ms ↓)",
            "dl": "abuse: the same download during the abuse (ms ↓)",
            "get50": "abuse: manifest GET during the abuse, median (ms ↓)",
            "getmax": "abuse: manifest GET during the abuse, slowest (ms ↓)",
            "rss": "abuse: peak RSS (VmHWM) (MiB ↓)",
        }
        self.abuse_desc = (
            f"Abuse rows: a freshly started server holds one {mb} blob and a tagged manifest; a child process "
            f"(`bench/abuse.py`, asyncio) opens {n_d} connections that each `GET` the blob, read the response head "
            f"and the first body bytes (one 16 KiB recv, checked against the blob) and then stop reading with the "
            f"socket left open, plus {n_u} uploads that each send {c['abuse_patches']} `PATCH`es with "
            f"`Transfer-Encoding: chunked` in {c['abuse_pieces']} pieces of {c['abuse_piece']} bytes "
            f"{c['abuse_pause']:g} s apart (each 202 must carry the right `Range`) and finish with "
            f"`PUT ?digest=` (201). Once every request is out, a normal client (curl, capped at "
            f"{c['abuse_dl_cap']} s) downloads the whole blob and checks its sha256 (the reference row is the same "
            f"curl download on the idle server just before), while {c['abuse_gets']} "
            f"manifest GETs (new connection each, {c['abuse_get_gap']:g} s apart) are timed. The stalled sockets "
            f"are released when the normal client and the uploads are done, at most {c['abuse_hold_s']} s after "
            f"the start — under Berth's 60 s `sendtimeout`/`bodytimeout` defaults, so those never fire. Time to "
            f"first bytes counts from the request being sent.")

        def read_line(p, buf, deadline, errpath):
            while b"\n" not in buf[0]:
                left = deadline - time.monotonic()
                r = select.select([p.stdout], [], [], max(0.0, left))[0] if left > 0 else []
                if not r:
                    raise StepFailed("abuse client: no output in time")
                d = os.read(p.stdout.fileno(), 1 << 16)
                if not d:
                    with open(errpath, errors="replace") as f:
                        raise StepFailed(f"abuse client exited early: {f.read()[-2000:]}")
                buf[0] += d
            line, _, buf[0] = buf[0].partition(b"\n")
            return line.decode()

        def one(s, r):
            dirs = self.fresh_dirs()
            child = None
            done = threading.Event()
            # Safety valve for a shared machine: a server whose RSS passes this is not left to
            # run the machine out of memory; the abusive clients are killed and the row notes it.
            with open("/proc/meminfo") as f:
                mi = {ln.split(":")[0]: int(ln.split()[1]) for ln in f}
            cap_kib = max(2 << 20, min(int(mi["MemTotal"] * 0.6), mi["MemAvailable"] - (4 << 20)))
            if os.environ.get("BENCH_RSS_CAP_MIB"):
                cap_kib = int(os.environ["BENCH_RSS_CAP_MIB"]) * 1024
            capped = []
            try:
                s.start(dirs[s.slot])
                self.push_mono(s, "bench/abuse", blob, digest, size)
                push_tiny_image(Conn(s.port), "bench/abuse", "latest", img)
                t = time.monotonic()
                self.curl_pull(s, "bench/abuse", digest, size)
                dl0 = time.monotonic() - t
                ccfg = dict(port=s.port, repo="bench/abuse", digest=digest, size=size, blob=blob,
                            downloads=n_d, uploads=n_u, piece=c["abuse_piece"], pieces=c["abuse_pieces"],
                            patches=c["abuse_patches"], pause=c["abuse_pause"], first_s=c["abuse_first_s"],
                            hold_s=c["abuse_hold_s"], connect_par=c["abuse_connect_par"],
                            response_s=c["abuse_first_s"])
                errpath = os.path.join(self.work, f"abuse-{s.slot}-{r}.err")
                with open(errpath, "w") as errf:
                    child = PROCS.spawn([sys.executable, os.path.join(HERE, "abuse.py"), json.dumps(ccfg)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf)
                t0 = time.monotonic()
                buf = [b""]
                ready = read_line(child, buf, t0 + c["abuse_first_s"] + 30, errpath)
                log(f"abuse [{s.slot}]: {ready}")
                peak = [0]

                def sample():
                    while not done.wait(0.1):
                        try:
                            peak[0] = max(peak[0], s.status_kib("VmRSS"))
                        except Exception:  # noqa: BLE001 - the server is gone; the step reports it
                            return
                        if peak[0] > cap_kib and not capped:
                            capped.append(peak[0])
                            child.kill()
                            return
                lat, get_err, wrong = [], [], []
                mpath = "/v2/bench/abuse/manifests/latest"

                def gets():
                    for _ in range(c["abuse_gets"]):
                        t = time.monotonic()
                        try:
                            st, h, b = req(s.port, "GET", mpath, headers={"Accept": ACCEPT}, timeout=10)
                        except OSError as e:
                            get_err.append(f"{type(e).__name__}: {e}")
                            continue
                        dt = time.monotonic() - t
                        if st != 200 or b != img[2] or h.get("docker-content-digest") != md:
                            wrong.append("manifest GET: " + desc("GET", mpath, st, h, b))
                        else:
                            lat.append(dt)
                        time.sleep(max(0.0, c["abuse_get_gap"] - dt))
                ts = [threading.Thread(target=sample, daemon=True), threading.Thread(target=gets, daemon=True)]
                for t in ts:
                    t.start()
                # The normal client: a full download, capped.
                dl = os.path.join(self.work, f"abuse-dl-{s.slot}.bin")
                url = s.url(f"/v2/bench/abuse/blobs/{digest}")
                cap = c["abuse_dl_cap"]
                p = PROCS.spawn(["curl", "-sS", "--max-time", str(cap), "-o", dl, "-w",
                                 "%{http_code} %{size_download} %{time_starttransfer} %{time_total}", url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                try:
                    o, e = p.communicate(timeout=cap + 30)
                finally:
                    PROCS.reap(p)
                code, got, ttfb, total = o.split() if len(o.split()) == 4 else ("?", "0", "0", str(cap))
                dl_s, dl_note = float(total), None
                if p.returncode == 28:
                    dl_s, dl_note = float(cap), f"{s.slot}: the normal download had not finished after {cap} s ({int(got):,} of {size:,} bytes); the figure is the cap"
                elif p.returncode != 0 or code != "200" or int(got) != size:
                    wrong.append(f"normal GET {url} -> curl rc={p.returncode} '{o}' {e.strip()} (expected 200, {size} bytes)")
                else:
                    h = hashlib.sha256()
                    with open(dl, "rb") as f:
                        for piece in iter(lambda: f.read(MiB), b""):
                            h.update(piece)
                    if "sha256:" + h.hexdigest() != digest:
                        wrong.append(f"normal GET {url}: body sha256 differs from the blob")
                if os.path.exists(dl):
                    os.unlink(dl)
                ts[1].join(c["abuse_gets"] * (c["abuse_get_gap"] + 25))
                # Done measuring: let the child finish its uploads and release the stalled sockets.
                child.stdin.close()
                res = read_line(child, buf, t0 + c["abuse_hold_s"] + 60, errpath)
                if not res.startswith("RESULT "):
                    raise StepFailed(f"abuse client: unexpected output {res[:500]}")
                a = json.loads(res[7:])
                PROCS.wait(child, 30)
                done.set()
                ts[0].join(5)
                hwm = s.status_kib("VmHWM") / 1024
                time.sleep(0.5)
                st, h, b = req(s.port, "GET", "/v2/", timeout=30)
                if st != 200:
                    wrong.append("GET /v2/ after the abuse: " + desc("GET", "/v2/", st, h, b))
                rss_after = s.status_kib("VmRSS") / 1024
                log(f"abuse [{s.slot}]: {json.dumps(a)[:1500]}; normal download {dl_s:.2f} s "
                    f"(first byte {float(ttfb):.2f} s); manifest GETs {len(lat)} ok, {len(get_err)} errors; "
                    f"peak RSS sampled {peak[0] / 1024:.0f} MiB, VmHWM {hwm:.0f} MiB, RSS after release {rss_after:.0f} MiB")
                self.record(F["first"], s.slot, a["first_bytes"])
                if a["ttfb_p50"] is not None:
                    self.record(F["ttfb50"], s.slot, a["ttfb_p50"] * 1000)
                    self.record(F["ttfbmax"], s.slot, a["ttfb_max"] * 1000)
                self.record(F["acked"], s.slot, a["uploads_acked"])
                if a["patch_ack_max"] is not None:
                    self.record(F["ackmax"], s.slot, a["patch_ack_max"] * 1000)
                self.record(F["dl0"], s.slot, dl0 * 1000)
                self.record(F["dl"], s.slot, dl_s * 1000)
                if lat:
                    self.record(F["get50"], s.slot, statistics.median(lat) * 1000)
                    self.record(F["getmax"], s.slot, max(lat) * 1000)
                self.record(F["rss"], s.slot, hwm)
                notes = []
                if a["conn_errors"]:
                    notes.append(f"{s.slot}: abusive clients' connection errors {json.dumps(a['conn_errors'])}")
                closed = {k: v for k, v in a["held_states_at_release"].items() if k != "ESTABLISHED"}
                if closed:
                    notes.append(f"{s.slot}: stalled sockets closed by the server before release (TCP state at "
                                 f"release {json.dumps(closed)}, released at {a['released_at']:.1f} s)")
                if a["uploads_completed"] != n_u:
                    notes.append(f"{s.slot}: {a['uploads_completed']} of {n_u} slow uploads completed "
                                 f"({a['uploads_some_progress']} got at least one PATCH acknowledged)")
                if get_err:
                    notes.append(f"{s.slot}: {len(get_err)} of {c['abuse_gets']} manifest GETs failed "
                                 f"(first: {get_err[0]})")
                if dl_note:
                    notes.append(dl_note)
                if notes:
                    key = F["first"]
                    self.notes[key] = self.notes.get(key, "") + "; ".join(notes) + ". "
                wrong += a["wrong"]
                if wrong:
                    raise StepFailed(f"{len(wrong)} wrong response(s); first: {wrong[0]}")
            except Exception:
                if s.proc is not None and s.proc.poll() is not None:
                    raise StepFailed(s.died())
                if not capped:
                    raise
                hwm = s.status_kib("VmHWM") / 1024
                log(f"abuse [{s.slot}]: stopped at the safety cap, VmHWM {hwm:.0f} MiB")
                self.record(F["rss"], s.slot, hwm)
                self.notes[F["first"]] = self.notes.get(F["first"], "") + (
                    f"{s.slot}: the abuse was stopped when the server's RSS passed {cap_kib / 1024:,.0f} MiB "
                    f"(safety cap: 60% of RAM or available memory minus 4 GiB, or `BENCH_RSS_CAP_MIB`), so only its "
                    f"peak RSS is reported. ")
            finally:
                done.set()
                if child is not None:
                    PROCS.reap(child)
                s.stop()
                for d in dirs.values():
                    if os.path.exists(d):
                        run(["rm", "-rf", d], timeout=600, check=False)

        one.__name__ = "abuse"
        self.alternate(c["abuse_rounds"], one)

    # -- authenticated request rates
    def auth_modes(self):
        """Both servers' basic auth (htpasswd, bcrypt) and bearer tokens: Berth's own token
        service; for Distribution, a token signed by a test key whose certificate is its
        `rootcertbundle` (x5c header), as an external token server would sign it."""
        d = os.path.join(self.work, "auth")
        os.makedirs(d, exist_ok=True)
        htpasswd = os.path.join(d, "htpasswd")
        with open(htpasswd, "w") as f:
            f.write(run(["htpasswd", "-Bbn", "bench", "bench-pw"], timeout=30))
        key, crt = os.path.join(d, "token.key"), os.path.join(d, "token.crt")
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=bench-token-signer"], timeout=60)
        basic = "Basic " + base64.b64encode(b"bench:bench-pw").decode()
        berth_basic = {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "bench",
                       "REGISTRY_AUTH_HTPASSWD_PATH": htpasswd}
        dist_basic = f"auth:\n  htpasswd:\n    realm: bench\n    path: {htpasswd}\n"
        berth_token = {"REGISTRY_BERTH_AUTH_TOKEN_ENABLED": "true", "REGISTRY_BERTH_AUTH_ADMIN_USERNAME": "bench",
                       "REGISTRY_BERTH_AUTH_ADMIN_PASSWORD": "bench-pw"}
        dist_token = ("auth:\n  token:\n    realm: http://127.0.0.1:9/token\n    service: bench\n"
                      f"    issuer: bench-issuer\n    rootcertbundle: {crt}\n")

        def berth_bearer(s):
            st, _, b = req(s.port, "GET", "/auth/token?service=berth&scope=repository:bench/small:pull",
                           headers={"Authorization": basic})
            expect(st, 200, "token request")
            return "Bearer " + json.loads(b)["token"]

        return [("basic auth", {"berth": berth_basic, "distribution": dist_basic}, lambda s: basic),
                ("bearer token", {"berth": berth_token, "distribution": dist_token},
                 lambda s: berth_bearer(s) if not s.is_distribution else "Bearer " + x5c_token(key, crt))]

    def auth_rates(self):
        img = tiny_image("wrk-auth")
        for mode, config, header in self.auth_modes():
            dirs = self.fresh_dirs()
            ready = {}
            for s in self.servers:
                try:
                    # The image goes in before authentication is switched on.
                    s.start(dirs[s.slot])
                    push_tiny_image(Conn(s.port), "bench/small", "latest", img)
                    s.stop()
                    auth = {"env": config["berth"]} if not s.is_distribution else {"yaml": config["distribution"]}
                    s.start(dirs[s.slot], auth=auth)
                    h = {"Authorization": header(s)}
                    st, _, b = req(s.port, "GET", "/v2/bench/small/manifests/latest", headers={"Accept": ACCEPT, **h})
                    if st != 200 or b != img[2]:
                        raise StepFailed(f"authenticated manifest GET answered {st}")
                    expect(req(s.port, "GET", "/v2/bench/small/manifests/latest")[0], 401, "unauthenticated GET")
                    ready[s.slot] = h
                except Exception as e:  # noqa: BLE001
                    self.fail(f"prepare {mode} [{s.slot}]", e)
            fig = f"manifest GET by tag, {mode} ({self.cfg['conns']} conns)"

            def wrk(s, r, fig=fig):
                if s.slot not in ready:
                    raise StepFailed("not prepared")
                self.wrk_get(s, fig, "/v2/bench/small/manifests/latest", ready[s.slot])
            wrk.__name__ = "wrk " + fig
            try:
                self.alternate(self.cfg["wrk_rounds"], wrk)
            finally:
                self.stop_all(dirs)

    # -- main
    STEPS = ("limits", "throughput", "rss", "tags", "repos", "abuse", "auth")

    def main(self):
        only = set(self.args.only.split(",")) if self.args.only else set(self.STEPS)
        if "limits" in only:
            self.step("machine limits", self.machine_limits)
        if "throughput" in only or "rss" in only:
            self.main_throughput(only)
        if "tags" in only:
            self.step("many tags", self.many_tags)
        if "repos" in only:
            self.step("many repos", self.many_repos)
        if "abuse" in only:
            self.step("abuse", self.abuse)
        if "auth" in only:
            self.step("authenticated rates", self.auth_rates)

    def main_throughput(self, only):
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
                # The peak-RSS phases reuse the big blob generated (and pushed) here.
                self.step("blob throughput", self.blob_throughput)
                if "throughput" in only:
                    self.step("request rates", self.request_rates)
                    self.step("skopeo", self.skopeo_round_trip)
        finally:
            self.stop_all(dirs)
        if "rss" not in only:
            return
        if not hasattr(self, "big_digest"):
            self.failures.append("skipping the peak-RSS phases: no blob data")
            return
        self.step("peak RSS mono", self.peak_rss_push, False)
        self.step("peak RSS chunked", self.peak_rss_push, True)
        self.step("peak RSS many", self.peak_rss_many)


# ---------------------------------------------------------------- report
def fmt(v):
    if v is None:
        return "FAIL"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 10):
        return f"{v:,.0f}"
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


def limits_lines(b):
    L = b.limits
    if not L:
        return ["- Physical limits: not measured in this run."]

    def v(k):
        return f"{fmt(L[k])} MB/s" if k in L else "not measured"
    lines = ["- Physical limits (same run):",
             f"  - SHA-256, one core (`openssl speed -evp sha256 -bytes 16384`): {v('sha256')}",
             f"  - loopback TCP (`iperf3` on 127.0.0.1): {v('loopback')}"]
    runs = getattr(b, "fio_runs", None)
    if runs and "disk" in L:
        best = max(runs, key=lambda k: max(runs[k]))
        n = len(next(iter(runs.values())))
        argv = [a for a in b.fio_argv if not a.startswith(("--bs=", "--direct=", "--sync_file_range="))]
        lines += [f"  - disk, sequential write of a new {b.cfg['big'] // MiB} MiB file then fsync, in the work dir "
                  f"beside the servers' storage (same file system): {v('disk')} — the best of "
                  f"{len(runs)} fio variants × {n} run(s); fio's bandwidth includes the final fsync. Command: "
                  f"`{' '.join(argv)} VARIANT`; MB/s per VARIANT (best run): "
                  + ", ".join(f"`{k}` {fmt(max(x))}" + (" (best)" if k == best else "") for k, x in runs.items())]
    else:
        lines.append(f"  - disk (fio): {v('disk')}")
    return lines


def report(b, command, smoke, elapsed):
    L = b.limits
    push_lim = min(L["sha256"], L["disk"]) if "sha256" in L and "disk" in L else None
    lim = {"push": push_lim, "pull": L.get("loopback")}
    rows, notes, over = [], [], []
    for fig, per in b.results.items():
        bv = per.get("berth")
        dv = per.get("distribution")
        bm = statistics.median(bv) if bv else None
        dm = statistics.median(dv) if dv else None
        ratio = f"{bm / dm:.2f}" if bm is not None and dm else "–"
        kind = getattr(b, "limited", {}).get(fig)
        pct = ""
        if kind and bm is not None and lim.get(kind):
            p = 100 * bm / lim[kind]
            pct = f"{p:.0f}%"
            if p > 100:
                # Never hidden: a figure above its physical limit means the limit (or the figure) is wrong.
                pct = f"**{pct} ⚠**"
                over.append((kind, f"{fig}: {p:.0f}% of {'min(SHA-256, disk)' if kind == 'push' else 'loopback TCP'}"))
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
        f" ({b.args.fs_info}); no auth except in the rows that name it (htpasswd with bcrypt on both; bearer tokens from Berth's own token service, and for Distribution an x5c-signed token checked against its `rootcertbundle`); plain HTTP on 127.0.0.1.",
        *limits_lines(b),
        "",
        "Values are medians over rounds; the two servers run side by side and alternate who goes first "
        "in each round. MB = 10^6 bytes. Ratio = Berth / Distribution (↑ higher is better, ↓ lower is better). "
        "Limit % = Berth as a percentage of min(SHA-256, disk) for pushes and of loopback TCP for pulls; "
        "a value above 100% is printed in bold with ⚠ and listed under the table.",
        "",
        "| figure | Berth | Distribution | ratio B/D | Berth % of limit |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        *([f"⚠ Above the physical limit: {'; '.join(t for k, t in over if k == 'push')}. A push is "
           "acknowledged only after its data is durable, so it cannot be faster than the disk or than one "
           "core hashing: the limit was measured too low on this run (shared VM disks vary from minute to "
           "minute) or the push is not what it claims. Treat both numbers as suspect.", ""]
          if any(k == "push" for k, _ in over) else []),
        *([f"⚠ Above the physical limit: {'; '.join(t for k, t in over if k == 'pull')}. The loopback "
           "figure is one iperf3 stream (one core sending, one receiving); concurrent pulls can spread over "
           "more cores, and a single pull above it means the limit was measured low on this run.", ""]
          if any(k == "pull" for k, _ in over) else []),
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
        *([b.abuse_desc, ""] if getattr(b, "abuse_desc", None) else []),
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
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(Bench.STEPS))
    args = ap.parse_args()
    bad = set(filter(None, args.only.split(","))) - set(Bench.STEPS)
    if bad:
        ap.error(f"--only: unknown step(s) {','.join(sorted(bad))}; steps: {','.join(Bench.STEPS)}")
    # The servers inherit this: 2,500 abusive connections need more than the usual 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
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
