"""CI workload identity against a real OIDC issuer (tests/oidc, oidc-provider): a pipeline
signs in with its CI system's ID token as the password of the provider's user name, and may
do what the rules that match its claims grant, nothing more; tokens for another audience,
with other claims, tampered or signed by a key the issuer never published are refused; a
key the issuer rotated in is fetched; with the token service the registry token never
outlives the ID token; no ID token is logged."""
import base64
import json
import os

import pytest
import requests

import imagetools as it
from e2eutil import berth_only, docker_cli, docker_load, docker_round_trip
from oidc_issuer import OidcIssuer

pytestmark = berth_only

ADMIN, ADMIN_PASSWORD = "root", "root-Pa55word"
MAIN = "repo:org/app:ref:refs/heads/main"
FEATURE = "repo:org/app:ref:refs/heads/feature"
OTHER = "repo:other/tool:ref:refs/heads/main"
AUDIENCE = "berth-registry"


def federation_config(issuer_url: str, token_service: bool = False) -> str:
    """Main-branch builds of org/app push to namespace `org`; any build of an org/
    repository may pull from `shared`."""
    return f"""
berth:
  auth:
    token:
      enabled: {"true" if token_service else "false"}
    admin:
      username: {ADMIN}
      password: {ADMIN_PASSWORD}
    defaultaccess:
      authenticated: none
    federation:
      - name: ci
        issuer: {issuer_url}
        audience: {AUDIENCE}
        rules:
          - claims:
              repository: org/app
              ref: refs/heads/main
            grants:
              - namespace: org
                role: developer
          - claims:
              repository: "org/*"
            grants:
              - namespace: shared
                role: reader
"""


def id_token(issuer, account: str, audience: str = AUDIENCE) -> str:
    return issuer.id_token(audience, account, password="ci-password")["id_token"]


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def kid(token: str) -> str:
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


def tampered(token: str) -> str:
    """The same token with the claims of the main branch of org/app, its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["ref"] = "refs/heads/main"
    claims["repository"] = "org/app"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return ".".join([header, forged, signature])


def test_pipelines_sign_in_with_their_id_token(oidc_issuer, make_server, workdir, skopeo):
    srv = make_server(config=federation_config(oidc_issuer.url))
    main, feature, other = (id_token(oidc_issuer, a) for a in (MAIN, FEATURE, OTHER))
    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="federation")

    # The main branch pushes into its namespace with nothing but its ID token...
    skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds", f"ci:{main}",
           src.ref, f"docker://{srv.host}/org/app:1.0")
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"ci:{main}",
                 f"docker://{srv.host}/org/app:1.0").stdout
    assert it.sha256_digest(raw) == src.digest
    # ...and nowhere else.
    denied = requests.put(f"{srv.url}/v2/other/app/manifests/1.0", data=raw, timeout=10,
                          headers={**basic("ci", main), "Content-Type": it.OCI_MANIFEST})
    assert denied.status_code == 403, denied.text
    assert denied.json()["errors"][0]["code"] == "DENIED"

    # The administrator publishes a base image in `shared`.
    skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds",
           f"{ADMIN}:{ADMIN_PASSWORD}", src.ref, f"docker://{srv.host}/shared/base:1")

    # A feature branch matches only the second rule: it pulls from `shared`, and may
    # neither push to nor pull from `org`.
    def status(method, path, token, **kw):
        return requests.request(method, f"{srv.url}{path}", headers=basic("ci", token), timeout=10, **kw).status_code

    assert status("GET", "/v2/shared/base/manifests/1", feature) == 200
    assert status("GET", "/v2/org/app/manifests/1.0", feature) == 403
    assert status("POST", "/v2/org/app/blobs/uploads/", feature) == 403
    assert status("POST", "/v2/shared/base/blobs/uploads/", feature) == 403
    assert status("POST", "/v2/org/app/blobs/uploads/", main) == 202
    # A pipeline has no business browsing the catalog.
    assert status("GET", "/v2/_catalog", main) == 401

    # No rule admits other/tool's pipelines; another audience, a tampered token, garbage
    # and a user name that is no provider are refused too.
    for token in (other, id_token(oidc_issuer, MAIN, audience="other-registry"), tampered(feature), "not.a.jwt"):
        r = requests.get(f"{srv.url}/v2/", headers=basic("ci", token), timeout=10)
        assert r.status_code == 401, (token[:20], r.text)
    assert requests.get(f"{srv.url}/v2/", headers=basic("github", main), timeout=10).status_code == 401
    no_rule = requests.get(f"{srv.url}/v2/", headers=basic("ci", other), timeout=10)
    assert "no rule" in no_rule.json()["errors"][0]["message"]

    # The push is audited under the pipeline's identity, the refusals under the provider.
    events = requests.get(f"{srv.url}/api/v1/audit", auth=(ADMIN, ADMIN_PASSWORD), timeout=10).json()["events"]
    pushes = [e for e in events if e["action"] == "manifest.push" and e["target"].startswith("org/app")]
    assert [e["actor"] for e in pushes] == [f"ci$ci:{MAIN}"]
    assert any(e["action"] == "auth.failure" and e["actor"] == "ci" for e in events)
    # A pipeline may not use the admin API.
    assert requests.get(f"{srv.url}/api/v1/me", headers=basic("ci", main), timeout=10).status_code == 403

    log = open(srv.log_path, "rb").read().decode(errors="replace")
    for token in (main, feature, other):
        assert token not in log and token.split(".")[2] not in log


def test_docker_login_with_an_id_token_and_the_token_service(make_server, workdir, skopeo, docker):
    # An ID token that lives two minutes: the registry's tokens (five by default) must not
    # outlive it.
    with OidcIssuer(id_token_ttl=120) as issuer:
        srv = make_server(config=federation_config(issuer.url, token_service=True))
        main = id_token(issuer, MAIN)
        r = requests.get(f"{srv.url}/auth/token", auth=("ci", main), timeout=10,
                         params={"service": "berth", "scope": ["repository:org/app:pull,push",
                                                              "repository:other/app:pull", "registry:catalog:*"]})
        assert r.status_code == 200, r.text
        issued = r.json()
        assert issued["scope"] == "repository:org/app:pull,push"
        assert 0 < issued["expires_in"] <= 120
        assert "refresh_token" not in issued
        no_rule = requests.get(f"{srv.url}/auth/token", auth=("ci", id_token(issuer, OTHER)), timeout=10,
                               params={"service": "berth", "scope": "repository:other/tool:pull"})
        assert no_rule.status_code == 401

        dk = docker_cli(docker.sock, workdir)
        src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="federation-docker")
        local = f"berth-e2e/federation-{srv.port}:v1"
        target = f"{srv.host}/org/app:docker"
        docker_load(skopeo, dk, src, workdir, local, target)
        # docker login -u <provider> -p "$ID_TOKEN", as a pipeline does it.
        dk("login", "-u", "ci", "--password-stdin", srv.host, input=main.encode())
        docker_round_trip(dk, src, local, target)
        refused = dk("login", "-u", "ci", "--password-stdin", srv.host,
                     input=id_token(issuer, OTHER).encode(), check=False)
        assert refused.returncode != 0

        # The issuer restarts with new keys (a key rotation): Berth fetches them when it
        # first sees a token signed with one.
        port = int(issuer.url.rsplit(":", 1)[1])
        issuer.stop()
        issuer.port = port
        issuer.start()
        rotated = id_token(issuer, MAIN)
        assert kid(rotated) != kid(main), "the restarted issuer signs with a new key"
        r = requests.get(f"{srv.url}/auth/token", auth=("ci", rotated), timeout=10, params={"service": "berth"})
        assert r.status_code == 200, r.text
        assert main not in open(srv.log_path, "rb").read().decode(errors="replace")
