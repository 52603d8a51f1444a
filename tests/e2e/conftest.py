"""Shared fixtures: a fresh registry per test (berth by default, or Distribution with
E2E_SERVER=distribution), skopeo/podman wrappers, and a private dockerd per session."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from e2eutil import (SERVER_KIND, RegistryServer, Skopeo, run, stop_process,  # noqa: E402
                     wait_for)
from oidc_issuer import oidc_issuer  # noqa: E402,F401 - the session's OpenID Connect issuer

_LOGS = pytest.StashKey[list]()

def pytest_report_header(config):
    from e2eutil import BERTH_BIN, DISTRIBUTION_BIN
    return f"e2e server: {SERVER_KIND} ({DISTRIBUTION_BIN if SERVER_KIND == 'distribution' else BERTH_BIN})"


def _attach_log(node, name: str, path_or_fn):
    node.stash.setdefault(_LOGS, []).append((name, path_or_fn))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("setup", "call"):
        for name, src in item.stash.get(_LOGS, []):
            try:
                text = src() if callable(src) else open(src, "rb").read()[-20000:].decode(errors="replace")
            except Exception as e:  # noqa: BLE001
                text = f"<could not read log: {e}>"
            rep.sections.append((f"log: {name}", text))


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="berth-e2e-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_server(request, workdir):
    """Factory: start a fresh registry server (own temp root dir, own free port)."""
    servers = []

    def make(env: dict | None = None, scheme: str = "http", ca: str | None = None,
             config: str | None = None, client_cert: tuple[str, str] | None = None) -> RegistryServer:
        """`config`: the text of a YAML configuration file (for what the environment cannot
        say, such as lists); `client_cert`: (certificate, key) the readiness check presents
        to a server that requires client certificates."""
        d = os.path.join(workdir, f"server{len(servers)}")
        os.makedirs(d)
        srv = RegistryServer(SERVER_KIND, d)
        srv.extra_env.update(env or {})
        if config is not None:
            srv.config_path = os.path.join(d, "config.yml")
            with open(srv.config_path, "w") as f:
                f.write(config)
        srv.scheme, srv.ca, srv.client_cert = scheme, ca, client_cert
        servers.append(srv)
        _attach_log(request.node, f"{SERVER_KIND} server {len(servers)}", srv.log_text)
        srv.start()
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def registry(make_server) -> RegistryServer:
    return make_server()


@pytest.fixture
def skopeo(workdir) -> Skopeo:
    return Skopeo(os.path.join(workdir, "skopeo"))


class Podman:
    def __init__(self, d: str):
        self.root = os.path.join(d, "root")
        self.runroot = os.path.join(d, "runroot")
        self.tmp = os.path.join(d, "tmp")
        for p in (self.root, self.runroot, self.tmp):
            os.makedirs(p, exist_ok=True)
        self.env = dict(os.environ, TMPDIR=self.tmp)

    def __call__(self, *args, timeout=300, check=True, input=None):
        return run(["podman", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                    "--events-backend", "none", "--root", self.root, "--runroot", self.runroot,
                    *args], timeout=timeout, check=check, env=self.env, input=input)


@pytest.fixture
def podman(workdir):
    # vfs storage is plain directories (nothing mounted): removing workdir cleans it up.
    return Podman(os.path.join(workdir, "podman"))


class Docker:
    def __init__(self, sock: str, log_path: str):
        self.sock = sock
        self.log_path = log_path

    def __call__(self, *args, timeout=300, check=True):
        return run(["docker", "-H", f"unix://{self.sock}", *args], timeout=timeout, check=check)


@pytest.fixture(scope="session")
def dockerd_session():
    """A private dockerd (vfs, no networking setup) for the whole session."""
    d = tempfile.mkdtemp(prefix="dk-", dir="/tmp")
    sock = os.path.join(d, "d.sock")
    log_path = os.path.join(d, "dockerd.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
         "--storage-driver=vfs", "--data-root", os.path.join(d, "data"),
         "--exec-root", os.path.join(d, "exec"), "--pidfile", os.path.join(d, "docker.pid"),
         "-H", f"unix://{sock}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    docker = Docker(sock, log_path)

    def up():
        if proc.poll() is not None:
            raise AssertionError("dockerd exited")
        return docker("info", timeout=20, check=False).returncode == 0

    try:
        try:
            wait_for(up, 90, "dockerd to answer `docker info`", interval=0.2)
        except AssertionError as e:
            with open(log_path, "rb") as f:
                raise AssertionError(f"dockerd failed to start ({e}):\n"
                                     f"{f.read()[-20000:].decode(errors='replace')}") from None
        yield docker
    finally:
        stop_process(proc, timeout=30)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def docker(request, dockerd_session):
    _attach_log(request.node, "dockerd", dockerd_session.log_path)
    return dockerd_session
