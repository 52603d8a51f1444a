"""Real clients with credentials over TLS: docker login / podman login / skopeo --creds /
oras, against htpasswd (Basic) and the built-in token service (Bearer); HTTP/2 by ALPN;
the certificate reloaded without dropping connections; no secret in the logs."""
import base64
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess

import pytest
import requests

import imagetools as it
from e2eutil import berth_only, docker_cli, docker_load, run, wait_for

pytestmark = berth_only

USER, PASSWORD = "ci-bot", "s3cret-Pa55word"


def _openssl(*args):
    run(["openssl", *args], timeout=60)


def make_ca(d: str) -> tuple[str, str]:
    ca_key, ca_crt = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", ca_key, "-out", ca_crt, "-days", "2", "-subj", "/CN=berth-e2e-ca")
    return ca_key, ca_crt


def make_cert(d: str, ca: tuple[str, str], name: str, client_cn: str | None = None) -> tuple[str, str]:
    """A certificate signed by the test CA: for a server on 127.0.0.1 and localhost, or
    with `client_cn`, a client certificate (`name.cert`) whose subject's common name is that."""
    suffix = "cert" if client_cn else "crt"
    key, csr, crt = (os.path.join(d, f"{name}.{ext}") for ext in ("key", "csr", suffix))
    ext = os.path.join(d, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("extendedKeyUsage=clientAuth\n" if client_cn else
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    subject = f"/O=berth-e2e/CN={client_cn}" if client_cn else f"/CN={name}"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", subject)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
             "-out", crt, "-days", "2", "-extfile", ext)
    return crt, key


@pytest.fixture
def tls(workdir):
    d = os.path.join(workdir, "pki")
    os.makedirs(d)
    ca = make_ca(d)
    crt, key = make_cert(d, ca, "server")
    return {"dir": d, "ca_key": ca[0], "ca": ca[1], "crt": crt, "key": key}


def start_secured(make_server, workdir, tls, mode: str, **extra):
    """A Berth on TLS with `mode` ('htpasswd' or 'token') authentication."""
    env = {
        "REGISTRY_HTTP_TLS_CERTIFICATE": tls["crt"],
        "REGISTRY_HTTP_TLS_KEY": tls["key"],
    }
    if mode == "htpasswd":
        path = os.path.join(workdir, "htpasswd")
        # Written by Apache's own tool, as operators do.
        with open(path, "wb") as f:
            f.write(run(["htpasswd", "-Bbn", USER, PASSWORD]).stdout)
        env.update({"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "e2e",
                    "REGISTRY_AUTH_HTPASSWD_PATH": path})
    else:
        env.update({"REGISTRY_BERTH_AUTH_TOKEN_ENABLED": "true",
                    "REGISTRY_BERTH_AUTH_ADMIN_USERNAME": USER,
                    "REGISTRY_BERTH_AUTH_ADMIN_PASSWORD": PASSWORD})
    env.update(extra)
    return make_server(env=env, scheme="https", ca=tls["ca"])


def assert_no_secrets(srv, *secrets):
    """Neither a password, nor the Basic header that carries it, nor a token is logged."""
    log = open(srv.log_path, "rb").read().decode(errors="replace")
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for secret in (basic, *secrets):
        assert secret not in log, f"a secret ({secret[:6]}…) appears in the server log"


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_skopeo_and_podman_with_credentials_over_tls(mode, make_server, workdir, tls, skopeo, podman):
    srv = start_secured(make_server, workdir, tls, mode)
    certs = os.path.join(workdir, "certs")
    os.makedirs(certs)
    shutil.copy(tls["ca"], os.path.join(certs, "ca.crt"))
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt=f"auth-{mode}")
    target = f"docker://{srv.host}/team/app:v1"

    # Without credentials: refused, and nothing is stored.
    refused = skopeo("copy", "--insecure-policy", "--dest-cert-dir", certs, src.ref, target, check=False)
    assert refused.returncode != 0
    said = refused.stderr.lower()
    assert any(w in said for w in (b"unauthorized", b"authentication required", b"denied")), refused.stderr
    skopeo("copy", "--insecure-policy", "--dest-cert-dir", certs, "--dest-creds", f"{USER}:{PASSWORD}",
           src.ref, target)
    raw = skopeo("inspect", "--raw", "--cert-dir", certs, "--creds", f"{USER}:{PASSWORD}", target).stdout
    digest = it.sha256_digest(raw)

    authfile = os.path.join(workdir, "auth.json")
    podman("login", "--cert-dir", certs, "--authfile", authfile, "-u", USER, "--password-stdin", srv.host,
           input=PASSWORD.encode())
    podman("pull", "--cert-dir", certs, "--authfile", authfile, f"{srv.host}/team/app:v1")
    podman("tag", f"{srv.host}/team/app:v1", f"{srv.host}/team/copy:v1")
    podman("push", "--cert-dir", certs, "--authfile", authfile, f"{srv.host}/team/copy:v1")
    out = skopeo("inspect", "--cert-dir", certs, "--creds", f"{USER}:{PASSWORD}",
                 f"docker://{srv.host}/team/copy:v1").stdout
    assert json.loads(out)["Name"] == f"{srv.host}/team/copy"
    wrong = skopeo("inspect", "--raw", "--cert-dir", certs, "--creds", f"{USER}:wrong", target, check=False)
    assert wrong.returncode != 0
    assert digest.startswith("sha256:")
    assert_no_secrets(srv, PASSWORD)


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_docker_login_push_pull_over_tls(mode, make_server, workdir, tls, skopeo, docker):
    srv = start_secured(make_server, workdir, tls, mode)
    # dockerd trusts a registry's CA from certs.d, read at each connection.
    certs_d = f"/etc/docker/certs.d/{srv.host}"
    os.makedirs(certs_d, exist_ok=True)
    shutil.copy(tls["ca"], os.path.join(certs_d, "ca.crt"))
    dk = docker_cli(docker.sock, workdir)

    try:
        src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt=f"docker-auth-{mode}")
        local = f"berth-e2e/auth-{mode}-{srv.port}:v1"
        target = f"{srv.host}/team/docker-app:v1"
        docker_load(skopeo, dk, src, workdir, local, target)
        denied = dk("push", target, check=False, timeout=120)
        assert denied.returncode != 0
        bad = dk("login", "-u", USER, "--password-stdin", srv.host, input=b"wrong", check=False)
        assert bad.returncode != 0
        dk("login", "-u", USER, "--password-stdin", srv.host, input=PASSWORD.encode())
        out = dk("push", target, timeout=300).stdout.decode()
        pushed = re.search(r"digest: (sha256:[0-9a-f]{64})", out).group(1)
        dk("rmi", target, local)
        dk("pull", target, timeout=300)
        info = json.loads(dk("image", "inspect", target).stdout)[0]
        assert f"{srv.host}/team/docker-app@{pushed}" in info["RepoDigests"]
        assert info["RootFS"]["Layers"] == src.images[0].diff_ids
        dk("rmi", target)
        stored = json.load(open(os.path.join(dk.config, "config.json")))
        assert srv.host in stored["auths"]
        assert_no_secrets(srv, PASSWORD)
    finally:
        shutil.rmtree(certs_d, ignore_errors=True)


def test_oras_with_a_token(make_server, workdir, tls):
    import oras.provider
    srv = start_secured(make_server, workdir, tls, "token")
    os.environ["REQUESTS_CA_BUNDLE"] = tls["ca"]
    try:
        # oras-py keeps its first token and asks for a new one only after a 403, so a
        # token for `pull` never becomes one for `push` (Distribution answers 401 with
        # `insufficient_scope` there too). Its basic backend sends the password with
        # every request, which Berth accepts beside tokens.
        client = oras.provider.Registry(hostname=srv.host, tls_verify=True, auth_backend="basic")
        client.login(username=USER, password=PASSWORD)
        d = os.path.join(workdir, "artifact")
        os.makedirs(d)
        with open(os.path.join(d, "sbom.json"), "wb") as f:
            f.write(b'{"sbom": true}')
        cwd = os.getcwd()
        os.chdir(d)
        try:
            client.push(target=f"{srv.host}/team/sbom:v1", files=["sbom.json:application/json"], quiet=True)
            out = os.path.join(workdir, "pulled")
            files = client.pull(target=f"{srv.host}/team/sbom:v1", outdir=out)
        finally:
            os.chdir(cwd)
        assert open(files[0], "rb").read() == b'{"sbom": true}'
        anonymous = requests.get(f"{srv.url}/v2/team/sbom/tags/list", verify=tls["ca"], timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"].startswith(f'Bearer realm="https://{srv.host}/auth/token"')
    finally:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)


def _served_serial(host: str, port: int, ca: str) -> int:
    ctx = ssl.create_default_context(cafile=ca)
    import socket
    with socket.create_connection((host, port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as tls_sock:
            der = tls_sock.getpeercert(binary_form=True)
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                         capture_output=True, check=True).stdout.decode()
    return int(out.strip().split("=")[1], 16)


def test_http2_tls_versions_and_certificate_reload(make_server, workdir, tls):
    srv = start_secured(make_server, workdir, tls, "token", REGISTRY_BERTH_HTTP_TLSRELOAD="200ms")
    # HTTP/2 through ALPN.
    out = run(["curl", "-sS", "--http2", "--cacert", tls["ca"], "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
               f"{srv.url}/v2/"]).stdout.decode()
    assert out == "2 401", out
    # TLS 1.1 is never offered; 1.2 and 1.3 are.
    assert run(["curl", "-sS", "--tls-max", "1.1", "--cacert", tls["ca"], f"{srv.url}/v2/"], check=False).returncode != 0
    for version in ("1.2", "1.3"):
        code = run(["curl", "-sS", f"--tlsv{version}", "--tls-max", version, "--cacert", tls["ca"], "-o", "/dev/null",
                    "-w", "%{http_code}", f"{srv.url}/v2/"]).stdout
        assert code == b"401", (version, code)

    ctx = ssl.create_default_context(cafile=tls["ca"])
    kept = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx, timeout=10)
    kept.request("GET", "/v2/")
    r = kept.getresponse()
    r.read()
    assert r.status == 401
    before = _served_serial("127.0.0.1", srv.port, tls["ca"])

    # A new certificate written over the old files (key first, as a deploy tool might).
    new_crt, new_key = make_cert(tls["dir"], (tls["ca_key"], tls["ca"]), "renewed")
    shutil.copy(new_key, tls["key"])
    shutil.copy(new_crt, tls["crt"])
    after = wait_for(lambda: (s := _served_serial("127.0.0.1", srv.port, tls["ca"])) != before and s, 20,
                     "the renewed certificate to be served")
    assert after != before
    # The connection opened before the reload still serves requests.
    kept.request("GET", "/v2/")
    r = kept.getresponse()
    r.read()
    assert r.status == 401
    kept.close()
    token = requests.get(f"{srv.url}/auth/token?service=berth&scope=repository:a:pull", verify=tls["ca"],
                         auth=(USER, PASSWORD), timeout=10).json()["token"]
    assert requests.get(f"{srv.url}/v2/", verify=tls["ca"], timeout=10,
                        headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert_no_secrets(srv, PASSWORD, token)


def mtls_config(tls, mode: str) -> str:
    return (f"http:\n  tls:\n    certificate: {tls['crt']}\n    key: {tls['key']}\n"
            f"    clientcas:\n      - {tls['ca']}\n"
            f"berth:\n  http:\n    clientcertificates: {mode}\n"
            f"  auth:\n    defaultaccess:\n      authenticated: push\n"
            f"    admin:\n      username: root\n      password: {PASSWORD}\n")


def test_client_certificates_required(make_server, workdir, tls, skopeo):
    """registry:2's `http.tls.clientcas`: no certificate of a configured CA, no connection;
    the certificate's common name is the caller."""
    alice = make_cert(tls["dir"], (tls["ca_key"], tls["ca"]), "alice", client_cn="alice")
    srv = make_server(config=mtls_config(tls, "required"), scheme="https", ca=tls["ca"], client_cert=alice)
    root = make_cert(tls["dir"], (tls["ca_key"], tls["ca"]), "root", client_cn="root")
    elsewhere = os.path.join(workdir, "stranger")
    os.makedirs(elsewhere)
    stranger = make_cert(elsewhere, make_ca(elsewhere), "alice", client_cn="alice")

    for cert in (None, stranger):
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(f"{srv.url}/v2/", cert=cert, verify=tls["ca"], timeout=10)
    assert requests.get(f"{srv.url}/v2/", cert=alice, verify=tls["ca"], timeout=10).status_code == 200

    # skopeo with the certificate in its cert dir (client.cert + client.key + CA), no password.
    certs = os.path.join(workdir, "certs")
    os.makedirs(certs)
    shutil.copy(tls["ca"], os.path.join(certs, "ca.crt"))
    shutil.copy(alice[0], os.path.join(certs, "client.cert"))
    shutil.copy(alice[1], os.path.join(certs, "client.key"))
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="mtls")
    skopeo("copy", "--insecure-policy", "--dest-cert-dir", certs, src.ref, f"docker://{srv.host}/team/app:v1")
    raw = skopeo("inspect", "--raw", "--cert-dir", certs, f"docker://{srv.host}/team/app:v1").stdout
    assert it.sha256_digest(raw) == src.digest
    # alice may push (defaultaccess.authenticated: push) but not delete.
    gone = requests.delete(f"{srv.url}/v2/team/app/manifests/{src.digest}", cert=alice, verify=tls["ca"], timeout=10)
    assert gone.status_code == 403 and "alice may not" in gone.text, gone.text

    # The audit log names alice; root's certificate makes root the administrator.
    events = requests.get(f"{srv.url}/api/v1/audit", cert=root, verify=tls["ca"], timeout=10)
    assert events.status_code == 200, events.text
    pushes = [e for e in events.json()["events"] if e["action"] == "manifest.push"]
    assert [e["actor"] for e in pushes] == ["alice"]
    me = requests.get(f"{srv.url}/api/v1/me", cert=alice, verify=tls["ca"], timeout=10).json()
    assert me["name"] == "alice" and not me["admin"]


def test_client_certificates_optional(make_server, workdir, tls):
    """`berth.http.clientcertificates: optional`: clients without a certificate connect and
    sign in as usual; credentials in a header win over the certificate; a certificate
    cannot name a robot."""
    srv = make_server(config=mtls_config(tls, "optional"), scheme="https", ca=tls["ca"])
    alice = make_cert(tls["dir"], (tls["ca_key"], tls["ca"]), "alice", client_cn="alice")
    robot = make_cert(tls["dir"], (tls["ca_key"], tls["ca"]), "robot", client_cn="robot$ci")

    def get(**kw):
        return requests.get(f"{srv.url}/v2/", verify=tls["ca"], timeout=10, **kw)

    assert get().status_code == 401
    assert get(auth=("root", PASSWORD)).status_code == 200
    assert get(cert=alice).status_code == 200
    assert get(cert=alice, auth=("root", "wrong")).status_code == 401
    assert get(cert=robot).status_code == 401
