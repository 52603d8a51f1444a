"""The berth process as an operator sees it: --help, configuration errors, the loopback
guard, JSON access logs with request ids, and graceful shutdown on SIGTERM."""

import hashlib
import json
import os
import signal
import socket

import pytest
import requests

from e2eutil import BERTH_BIN, SERVER_KIND, RegistryServer, free_port, run, wait_for

pytestmark = pytest.mark.skipif(SERVER_KIND == "distribution", reason="berth's own CLI and lifecycle")


def berth(*args, env=None, timeout=30):
    return run([BERTH_BIN, *args], check=False, env=env, timeout=timeout)


def test_help_documents_subcommands_and_flags():
    top = berth("--help")
    assert top.returncode == 0
    out = top.stdout.decode()
    for word in ("serve", "check-config", "--version"):
        assert word in out, out
    serve = berth("serve", "--help").stdout.decode()
    for word in ("REGISTRY_", "--allow-unauthenticated", "[CONFIG]"):
        assert word in serve, serve


def test_invalid_settings_name_the_key(tmp_path):
    env = dict(os.environ, REGISTRY_STORAGE_FILESYSTEM_ROOTDIR=str(tmp_path))
    p = berth("serve", env=env)
    assert p.returncode != 0
    assert "storage.filesystem" in p.stderr.decode() and "rootdir" in p.stderr.decode(), p.stderr
    cfg = tmp_path / "config.yml"
    cfg.write_text("version: 0.1\nhttp:\n  addr: 127.0.0.1:0\nstorage:\n  delete:\n    enabled: maybe\n")
    p = berth("serve", str(cfg), env=dict(os.environ))
    assert p.returncode != 0
    assert "storage.delete.enabled" in p.stderr.decode(), p.stderr
    p = berth("check-config", env=dict(os.environ, REGISTRY_LOG_LEVEL="loud"))
    assert p.returncode != 0 and "log.level" in p.stderr.decode(), p.stderr


def test_refuses_non_loopback_without_authentication(tmp_path):
    env = dict(os.environ, REGISTRY_HTTP_ADDR=f":{free_port()}",
               REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path))
    p = berth("serve", env=env)
    assert p.returncode != 0
    assert "--allow-unauthenticated" in p.stderr.decode(), p.stderr
    assert not (tmp_path / "berth").exists(), "nothing is created before the refusal"


def test_json_access_log_carries_request_id(workdir):
    srv = RegistryServer("berth", workdir)
    srv.extra_env = {"REGISTRY_LOG_FORMATTER": "json"}
    srv.start()
    try:
        r = requests.get(srv.url + "/v2/nothing/here/manifests/latest", headers={"X-Request-Id": "e2e-req-42"})
        assert r.status_code == 404
        assert r.headers["X-Request-Id"] == "e2e-req-42"
        r2 = requests.get(srv.url + "/v2/")
        generated = r2.headers["X-Request-Id"]
        assert generated
    finally:
        srv.stop()
    lines = [json.loads(l) for l in srv.log_text().splitlines() if l.startswith("{")]
    access = [l for l in lines if l.get("target") == "berth::access"]
    by_id = {l["request_id"]: l for l in access}
    assert by_id["e2e-req-42"]["status"] == 404
    assert by_id["e2e-req-42"]["path"] == "/v2/nothing/here/manifests/latest"
    assert by_id[generated]["status"] == 200


def test_sigterm_lets_in_flight_upload_finish(registry):
    """SIGTERM while a PATCH body is half sent: the server stops accepting, the upload
    completes with 202, and the process exits 0."""
    r = requests.post(registry.url + "/v2/drain/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    path = location[location.index("/v2/"):]
    # Large enough that the first half fills more than one of the spool's write buffers
    # (1 MiB), so some of it must reach the file while the rest is still to come.
    data = os.urandom(4 << 20)
    sock = socket.create_connection(("127.0.0.1", registry.port), timeout=30)
    head = (f"PATCH {path} HTTP/1.1\r\nHost: {registry.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    sock.sendall(head + data[: len(data) // 2])
    # The request is in flight once its first bytes reach the session's spool file.
    spool = os.path.join(registry.root, "berth", "uploads", path.rsplit("/", 1)[1])
    wait_for(lambda: os.path.getsize(spool) > 0, 30, "the first half to reach the spool")
    os.kill(registry.pid, signal.SIGTERM)
    sock.sendall(data[len(data) // 2:])
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    assert response.startswith(b"HTTP/1.1 202"), response[:200]
    assert registry.proc.wait(timeout=30) == 0, registry.log_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", registry.port), timeout=2).close()
    # The chunk is durable: after a restart the session holds it and can be finished.
    registry.start()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status = requests.get(registry.url + path)
    assert status.status_code == 204 and status.headers["Range"] == f"0-{len(data) - 1}"
    done = requests.put(registry.url + path + f"?digest={digest}")
    assert done.status_code == 201, done.text
    assert requests.get(registry.url + f"/v2/drain/blobs/{digest}").content == data
