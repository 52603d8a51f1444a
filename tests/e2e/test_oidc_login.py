"""People sign in through a real OpenID Connect provider (tests/oidc, oidc-provider): the
browser flow (`/auth/oidc/login` → provider → `/auth/oidc/callback`) and `berth login` (a
loopback redirect, RFC 8252) both end with a registry password that docker, skopeo and the
token endpoint accept; the person's groups become their mirrored teams; a replayed code, a
foreign state, a missing sign-in cookie and a provider that would take over a local account
are refused; deleting the user ends the password; nothing secret is logged."""
import os
import re
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import imagetools as it
from e2eutil import BERTH_BIN, berth_only, docker_cli, docker_load, docker_round_trip, free_port, stop_process
from oidc_issuer import OidcIssuer, sign_in

pytestmark = berth_only

ADMIN, ADMIN_PASSWORD = "root", "root-Pa55word"


def oidc_config(issuer_url: str) -> str:
    return f"""
berth:
  auth:
    token:
      enabled: true
    admin:
      username: {ADMIN}
      password: {ADMIN_PASSWORD}
    defaultaccess:
      authenticated: none
    oidc:
      issuer: {issuer_url}
      clientid: berth-web
      clientsecret: berth-web-secret
      cliclientid: berth-cli
      scopes: [openid, profile, email, groups]
"""


@pytest.fixture
def oidc_registry(make_server):
    """Berth first (it asks the provider only at the first sign-in), then the provider, which
    must know Berth's callback URL."""
    issuer_port = free_port()
    srv = make_server(config=oidc_config(f"http://127.0.0.1:{issuer_port}"))
    with OidcIssuer(port=issuer_port, redirect_uris=[f"{srv.url}/auth/oidc/callback"]) as issuer:
        admin = (ADMIN, ADMIN_PASSWORD)
        # Members of the provider's group `developers` push to namespace `team`.
        for path, body in [("teams", {"name": "devs"}), ("namespaces", {"name": "team"})]:
            r = requests.post(f"{srv.url}/api/v1/{path}", json=body, auth=admin, timeout=10)
            assert r.status_code == 201, r.text
        r = requests.patch(f"{srv.url}/api/v1/teams/devs", json={"directory_group": "developers"}, auth=admin,
                           timeout=10)
        assert r.status_code in (200, 204), r.text
        r = requests.put(f"{srv.url}/api/v1/namespaces/team/members/team/devs", json={"role": "developer"},
                         auth=admin, timeout=10)
        assert r.status_code == 204, r.text
        yield srv, issuer


def browser_sign_in(srv, account: str, session: requests.Session | None = None) -> requests.Response:
    """The browser flow: Berth sends the browser to the provider, the person signs in, the
    provider sends the browser back to Berth's callback. Returns the callback's answer."""
    s = session or requests.Session()
    r = s.get(f"{srv.url}/auth/oidc/login", allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    assert "berth_oidc" in s.cookies
    back = sign_in(r.headers["Location"], account)
    return s.get(f"{srv.url}/auth/oidc/callback", params={"code": back["code"], "state": back["state"]},
                 headers={"Accept": "application/json"}, timeout=30)


def token_scope(srv, user: str, password: str, scope: str) -> requests.Response:
    return requests.get(f"{srv.url}/auth/token", auth=(user, password), timeout=10,
                        params={"service": "berth", "scope": scope})


def test_people_sign_in_in_a_browser(oidc_registry, workdir, skopeo):
    srv, issuer = oidc_registry
    r = browser_sign_in(srv, "alice")
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    credential = r.json()
    assert credential["username"] == "alice"
    assert credential["expires_in"] == 7 * 86400
    password = credential["password"]

    # The password works with real clients: alice is in `developers`, so she pushes to `team`.
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="oidc-browser")
    skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds", f"alice:{password}",
           src.ref, f"docker://{srv.host}/team/app:1")
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"alice:{password}",
                 f"docker://{srv.host}/team/app:1").stdout
    assert it.sha256_digest(raw) == src.digest
    granted = token_scope(srv, "alice", password, "repository:team/app:pull,push repository:other/app:pull,push")
    assert granted.status_code == 200, granted.text
    assert granted.json()["scope"] == "repository:team/app:pull,push"
    # It is alice's: under another name it is no password at all.
    assert token_scope(srv, "root", password, "repository:team/app:pull").status_code == 401

    # Signing in again (another machine) keeps the first password working.
    again = browser_sign_in(srv, "alice")
    assert again.status_code == 200, again.text
    assert token_scope(srv, "alice", password, "repository:team/app:pull").status_code == 200

    # The sign-in is audited: the user created, the team joined, both by `oidc`.
    events = requests.get(f"{srv.url}/api/v1/audit", auth=(ADMIN, ADMIN_PASSWORD), timeout=10).json()["events"]
    assert any(e["action"] == "user.oidc" and e["target"] == "alice" and e["actor"] == "oidc" for e in events)
    assert any(e["action"] == "team.member.add" and e["target"] == "devs" and e["actor"] == "oidc"
               for e in events)

    # Deleting the user ends every password she was given; signing in again gives a new one.
    r = requests.delete(f"{srv.url}/api/v1/users/alice", auth=(ADMIN, ADMIN_PASSWORD), timeout=10)
    assert r.status_code == 204, r.text
    assert token_scope(srv, "alice", password, "repository:team/app:pull").status_code == 401
    fresh = browser_sign_in(srv, "alice").json()["password"]
    assert token_scope(srv, "alice", fresh, "repository:team/app:pull").status_code == 200
    assert token_scope(srv, "alice", password, "repository:team/app:pull").status_code == 401

    log = open(srv.log_path, "rb").read().decode(errors="replace")
    for secret in (password, fresh):
        assert secret not in log and secret.split(".")[2] not in log


def test_forged_and_replayed_sign_ins_are_refused(oidc_registry):
    srv, issuer = oidc_registry
    # A code redeemed once cannot be redeemed again, even with the sign-in cookie kept.
    s = requests.Session()
    r = s.get(f"{srv.url}/auth/oidc/login", allow_redirects=False, timeout=10)
    login_cookie = s.cookies["berth_oidc"]
    back = sign_in(r.headers["Location"], "alice")
    callback = f"{srv.url}/auth/oidc/callback"
    params = {"code": back["code"], "state": back["state"]}
    first = s.get(callback, params=params, headers={"Accept": "application/json"}, timeout=30)
    assert first.status_code == 200, first.text
    replay = requests.get(callback, params=params, cookies={"berth_oidc": login_cookie}, timeout=30)
    assert replay.status_code == 401, replay.text

    # A state that is not the one the browser's sign-in began with (CSRF): refused before the
    # code is even redeemed.
    s = requests.Session()
    r = s.get(f"{srv.url}/auth/oidc/login", allow_redirects=False, timeout=10)
    back = sign_in(r.headers["Location"], "alice")
    forged = s.get(callback, params={"code": back["code"], "state": "attacker-state"}, timeout=30)
    assert forged.status_code == 401
    assert "state" in forged.json()["errors"][0]["message"]
    # No sign-in cookie at all, or one not signed by this registry.
    assert requests.get(callback, params=params, timeout=30).status_code == 401
    tampered = login_cookie[:-4] + ("AAAA" if not login_cookie.endswith("AAAA") else "BBBB")
    assert requests.get(callback, params=params, cookies={"berth_oidc": tampered}, timeout=30).status_code == 401
    # The provider's error comes back as a refusal.
    denied = requests.get(callback, params={"error": "access_denied", "error_description": "no"}, timeout=30)
    assert denied.status_code == 401 and "access_denied" in denied.json()["errors"][0]["message"]

    # The provider may not take over a local account: bob has a password here.
    r = requests.post(f"{srv.url}/api/v1/users", json={"name": "bob", "password": "bob-local-pw"},
                      auth=(ADMIN, ADMIN_PASSWORD), timeout=10)
    assert r.status_code == 201, r.text
    taken = browser_sign_in(srv, "bob")
    assert taken.status_code == 401
    assert "password here" in taken.json()["errors"][0]["message"]
    # The CLI may only ask for loopback redirects.
    r = requests.post(f"{srv.url}/auth/oidc/authorize", json={"redirect_uri": "https://evil.example/cb"}, timeout=10)
    assert r.status_code == 400


def test_berth_login_gets_a_password_for_docker(oidc_registry, workdir, skopeo, docker):
    srv, issuer = oidc_registry
    proc = subprocess.Popen([BERTH_BIN, "login", srv.url, "--no-browser"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if re.match(r"\s+http://127\.0\.0\.1:\d+/", line):
                url = line.strip()
                break
        assert url, "".join(lines)
        # The person signs in in the browser, which the provider sends to the CLI's loopback.
        back = sign_in(url, "alice")
        redirect_uri = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        landing = requests.get(redirect_uri, params=back, timeout=10)
        assert landing.status_code == 200 and "Signed in" in landing.text
        out, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err
    assert "Signed in as alice" in err
    password = out.strip()

    dk = docker_cli(docker.sock, workdir)
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="oidc-cli")
    local, target = f"berth-e2e/oidc-{srv.port}:v1", f"{srv.host}/team/cli:v1"
    docker_load(skopeo, dk, src, workdir, local, target)
    dk("login", "-u", "alice", "--password-stdin", srv.host, input=password.encode())
    docker_round_trip(dk, src, local, target)
    assert password not in open(srv.log_path, "rb").read().decode(errors="replace")
