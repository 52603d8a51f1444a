"""Process management and client helpers shared by the e2e tests."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time

import pytest
import requests

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER_KIND = os.environ.get("E2E_SERVER", "berth")
BERTH_BIN = os.environ.get("BERTH_BIN", os.path.join(REPO_ROOT, "target", "release", "berth"))
DISTRIBUTION_BIN = os.environ.get("DISTRIBUTION_BIN", "/usr/bin/docker-registry")

berth_only = pytest.mark.skipif(
    SERVER_KIND == "distribution" and os.environ.get("E2E_FORCE_BERTH_TESTS") != "1",
    reason="tests Berth-specific behaviour (crash safety / memory / referrers API) that "
           "Distribution 2.8 does not provide; runs only against berth")

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_postgres_database(admin_url: str) -> str:
    """A new, empty database on the PostgreSQL server of `admin_url`; its URL."""
    name = "e2e_" + os.urandom(6).hex()
    subprocess.run(["psql", admin_url, "-qXc", f"CREATE DATABASE {name}"], check=True, timeout=60)
    return admin_url.rsplit("/", 1)[0] + "/" + name


def run(cmd, timeout=300, check=True, env=None, input=None) -> subprocess.CompletedProcess:
    """Run a command with a timeout, capturing output; on failure raise with the output."""
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, input=input)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"timed out after {timeout}s: {cmd}\nstdout: {e.stdout!r}\nstderr: {e.stderr!r}")
    if check and p.returncode != 0:
        raise AssertionError(
            f"command failed (rc={p.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{p.stdout.decode(errors='replace')}\n"
            f"--- stderr ---\n{p.stderr.decode(errors='replace')}")
    return p


def wait_for(cond, timeout: float, what: str, interval: float = 0.05):
    """Poll cond() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last_exc = e
        time.sleep(interval)  # poll interval, not synchronisation
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})")


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


class RegistryServer:
    """A berth or Distribution server on 127.0.0.1 with its own root dir."""

    def __init__(self, kind: str, workdir: str, root: str | None = None, port: int | None = None):
        self.kind = kind
        self.workdir = workdir
        self.root = root or os.path.join(workdir, "root")
        os.makedirs(self.root, exist_ok=True)
        self.port = port or free_port()
        self.log_path = os.path.join(workdir, f"{kind}.log")
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.extra_env: dict = {}
        # Set both for a server on TLS: the scheme clients use and the CA they trust.
        self.scheme = "http"
        self.ca: str | None = None
        # A YAML configuration file for berth, beside the environment.
        self.config_path: str | None = None
        self.client_cert: tuple[str, str] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self) -> list[str]:
        if self.kind == "distribution":
            cfg = os.path.join(self.workdir, "config.yml")
            with open(cfg, "w") as f:
                f.write("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
                        "  delete:\n    enabled: true\nhttp:\n  addr: %s\n" % (self.root, self.host))
            return [DISTRIBUTION_BIN, "serve", cfg]
        if not os.path.exists(BERTH_BIN):
            raise AssertionError(f"berth binary not found at {BERTH_BIN} (set BERTH_BIN, or "
                                 f"E2E_SERVER=distribution to run against docker-registry)")
        return [BERTH_BIN, "serve", *([self.config_path] if self.config_path else [])]

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "REGISTRY_HTTP_ADDR": self.host,
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": self.root,
            "REGISTRY_STORAGE_DELETE_ENABLED": "true",
            "REGISTRY_LOG_LEVEL": "info",
        })
        env.update(self.extra_env)
        if self.kind == "distribution":
            # A fixed secret keeps Distribution's upload state tokens valid across restarts.
            env["REGISTRY_HTTP_SECRET"] = "berth-e2e-secret"
        return env

    def start(self, timeout: float = 60) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts} on {self.host} root={self.root} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.command(), env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {self.proc.returncode} during "
                                     f"startup:\n{self.log_text()}")
            try:
                # 401: up, and asking for credentials.
                r = requests.get(self.url + "/v2/", timeout=2, verify=self.ca or True, cert=self.client_cert)
                if r.status_code in (200, 401):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} not ready on {self.url} after {timeout}s:\n"
                                     f"{self.log_text()}")
            time.sleep(0.05)  # poll interval

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log_text(self, limit: int = 20000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return "<no log>"
        return data[-limit:].decode(errors="replace")

    def vm_hwm_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("VmHWM not found")


class Cluster:
    """`count` Berth instances on loopback with the same `env` (a shared database and object
    store) and their own root directories, behind a real haproxy balancing round robin,
    request by request; a dead instance is taken out by its failed health checks, and a
    request whose connection to it is refused is sent to another (`redispatch`)."""

    def __init__(self, workdir: str, env: dict, count: int = 3):
        self.instances = []
        for i in range(count):
            d = os.path.join(workdir, f"instance{i}")
            os.makedirs(d)
            srv = RegistryServer("berth", d)
            srv.extra_env = env
            srv.start()
            self.instances.append(srv)
        self.port = free_port()
        cfg = os.path.join(workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(self.haproxy_config())
        self.log = open(os.path.join(workdir, "haproxy.log"), "wb")
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.up_through_balancer, 30, "haproxy answering")

    def haproxy_config(self) -> str:
        servers = "\n".join(f"    server b{i} 127.0.0.1:{s.port} check inter 300ms fall 1 rise 1"
                            for i, s in enumerate(self.instances))
        return f"""global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 2
    option redispatch
frontend registry
    bind 127.0.0.1:{self.port}
    default_backend berth
backend berth
    balance roundrobin
    option httpchk GET /v2/
    http-check expect status 200
{servers}
"""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up_through_balancer(self) -> bool:
        try:
            return requests.get(self.url + "/v2/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop(self):
        stop_process(self.haproxy)
        self.log.close()
        for srv in self.instances:
            srv.stop()


# ---------------------------------------------------------------- registry HTTP helpers

def abs_location(base_url: str, location: str) -> str:
    if location.startswith("http://") or location.startswith("https://"):
        return location
    return base_url + location


def path_of(location: str) -> str:
    """Strip scheme://host from a Location, so it can be replayed against a restarted server."""
    if "://" in location:
        location = "/" + location.split("://", 1)[1].split("/", 1)[1]
    return location


def with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + "digest=" + digest


def start_upload(base: str, repo: str) -> str:
    r = requests.post(f"{base}/v2/{repo}/blobs/uploads/", timeout=30)
    assert r.status_code == 202, (r.status_code, r.text)
    return abs_location(base, r.headers["Location"])


def push_blob_monolithic(base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = start_upload(base, repo)
    r = requests.put(with_digest(loc, digest), data=data,
                     headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    assert r.headers.get("Docker-Content-Digest") == digest
    return digest


def patch_chunk(base: str, loc: str, chunk: bytes, offset: int) -> str:
    r = requests.patch(loc, data=chunk, timeout=60, headers={
        "Content-Type": "application/octet-stream",
        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
        "Content-Length": str(len(chunk))})
    assert r.status_code == 202, (r.status_code, r.text)
    assert r.headers.get("Range") == f"0-{offset + len(chunk) - 1}", r.headers
    return abs_location(base, r.headers["Location"])


def push_blob_chunked(base: str, repo: str, data: bytes, chunk_size: int) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = start_upload(base, repo)
    for off in range(0, len(data), chunk_size):
        loc = patch_chunk(base, loc, data[off:off + chunk_size], off)
    r = requests.put(with_digest(loc, digest), timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    return digest


def get_blob(base: str, repo: str, digest: str) -> requests.Response:
    return requests.get(f"{base}/v2/{repo}/blobs/{digest}", timeout=60)


def put_manifest(base: str, repo: str, ref: str, body: bytes, media_type: str) -> str:
    r = requests.put(f"{base}/v2/{repo}/manifests/{ref}", data=body,
                     headers={"Content-Type": media_type}, timeout=60)
    assert r.status_code == 201, (r.status_code, r.text)
    return r.headers["Docker-Content-Digest"]


def get_manifest(base: str, repo: str, ref: str) -> requests.Response:
    return requests.get(f"{base}/v2/{repo}/manifests/{ref}",
                        headers={"Accept": MANIFEST_ACCEPT}, timeout=60)


# ---------------------------------------------------------------- skopeo

class Skopeo:
    def __init__(self, tmpdir: str):
        self.regd = os.path.join(tmpdir, "registries.d")
        os.makedirs(self.regd, exist_ok=True)
        self.policy = os.path.join(tmpdir, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        self.tmp = os.path.join(tmpdir, "skopeo-tmp")
        os.makedirs(self.tmp, exist_ok=True)

    def argv(self, *args) -> list[str]:
        return ["skopeo", "--policy", self.policy, "--registries.d", self.regd,
                "--tmpdir", self.tmp, *args]

    def __call__(self, *args, timeout=300, check=True) -> subprocess.CompletedProcess:
        return run(self.argv(*args), timeout=timeout, check=check)

    def copy(self, src: str, dst: str, *extra, timeout=300) -> subprocess.CompletedProcess:
        return self("copy", "--insecure-policy", "--src-tls-verify=false",
                    "--dest-tls-verify=false", *extra, src, dst, timeout=timeout)

    def inspect_raw(self, ref: str) -> bytes:
        return self("inspect", "--tls-verify=false", "--raw", ref, timeout=120).stdout

    def inspect(self, ref: str) -> dict:
        return json.loads(self("inspect", "--tls-verify=false", ref, timeout=120).stdout)


def docker_cli(sock: str, workdir: str):
    """`docker` against the private dockerd at `sock`, with its own client config
    directory (`.config`: where `docker login` stores credentials)."""
    config = os.path.join(workdir, "docker-config")
    os.makedirs(config, exist_ok=True)

    def dk(*args, **kw):
        return run(["docker", "--config", config, "-H", f"unix://{sock}", *args], **kw)

    dk.config = config
    return dk


def docker_round_trip(dk, layout, local: str, target: str) -> str:
    """Pushes `target` (loaded with docker_load, the client signed in), removes it and `local`,
    pulls it back, checks its layers are the layout's, removes it again; the push's output."""
    out = dk("push", target, timeout=300).stdout.decode()
    dk("rmi", target, local)
    dk("pull", target, timeout=300)
    info = json.loads(dk("image", "inspect", target).stdout)[0]
    assert info["RootFS"]["Layers"] == layout.images[0].diff_ids
    dk("rmi", target)
    return out


def docker_load(skopeo, dk, layout, workdir: str, local: str, target: str) -> None:
    """Loads an OCI layout into dockerd as `local` (through a docker-archive) and tags it `target`."""
    archive = os.path.join(workdir, "image.tar")
    skopeo.copy(layout.ref, f"docker-archive:{archive}:{local}")
    dk("load", "-i", archive)
    dk("tag", local, target)
