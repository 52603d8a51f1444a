"""The local OpenID Connect issuer the OIDC tests rely on (tests/oidc, oidc-provider) is real:
discovery and JWKS as a relying party reads them, ID tokens signed by those keys with the
fixture's claims, passwords checked, PKCE enforced. Needs node, not a Berth binary."""
from __future__ import annotations

import base64
import json
import os
import subprocess
from urllib.parse import urlencode

import jwt
import pytest
import requests

from oidc_issuer import (DEFAULT_REDIRECT_URI, SCRIPT, OidcFlowError, OidcIssuer, discovery,
                         pkce_pair, redeem_code, sign_in, verify_id_token)

CI_MAIN = "repo:org/app:ref:refs/heads/main"
CI_OTHER_REPO = "repo:other/tool:ref:refs/heads/main"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child waits for its adopter to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_discovery_document_and_jwks(oidc_issuer):
    d = discovery(oidc_issuer.url)
    assert d["issuer"] == oidc_issuer.url
    assert not d["issuer"].endswith("/")
    for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
        assert d[endpoint].startswith(oidc_issuer.url + "/"), endpoint
    assert "S256" in d["code_challenge_methods_supported"]
    assert "code" in d["response_types_supported"]
    assert {"RS256", "ES256"} <= set(d["id_token_signing_alg_values_supported"])
    assert {"repository", "ref", "repository_owner", "groups"} <= set(d["claims_supported"])

    keys = requests.get(d["jwks_uri"], timeout=10).json()["keys"]
    assert {(k["kty"], k["alg"]) for k in keys} == {("RSA", "RS256"), ("EC", "ES256")}
    assert all(k["kid"] and k["use"] == "sig" for k in keys)
    # Only public halves are published.
    assert not any(private in k for k in keys for private in ("d", "p", "q"))


def test_ci_identity_token_verifies_with_its_claims(oidc_issuer):
    tokens = oidc_issuer.id_token("berth-registry", CI_MAIN)
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "RS256"
    claims = verify_id_token(oidc_issuer.url, tokens["id_token"], audience="berth-registry")
    assert claims["iss"] == oidc_issuer.url
    assert claims["aud"] == "berth-registry"
    assert claims["sub"] == CI_MAIN
    assert claims["repository"] == "org/app"
    assert claims["ref"] == "refs/heads/main"
    assert claims["repository_owner"] == "org"
    assert claims["exp"] > claims["iat"]


def test_other_ci_identity_carries_other_claims(oidc_issuer):
    claims = verify_id_token(oidc_issuer.url, oidc_issuer.id_token("berth-registry", CI_OTHER_REPO)["id_token"],
                             audience="berth-registry")
    assert (claims["sub"], claims["repository"], claims["repository_owner"]) == \
        (CI_OTHER_REPO, "other/tool", "other")
    feature = verify_id_token(
        oidc_issuer.url,
        oidc_issuer.id_token("berth-registry", "repo:org/app:ref:refs/heads/feature")["id_token"],
        audience="berth-registry")
    assert (feature["repository"], feature["ref"]) == ("org/app", "refs/heads/feature")


def test_token_for_another_audience_fails_verification(oidc_issuer):
    token = oidc_issuer.id_token("other-registry", CI_MAIN)["id_token"]
    assert verify_id_token(oidc_issuer.url, token, audience="other-registry")["aud"] == "other-registry"
    with pytest.raises(jwt.InvalidAudienceError):
        verify_id_token(oidc_issuer.url, token, audience="berth-registry")


def test_tampered_token_fails_signature_check(oidc_issuer):
    token = oidc_issuer.id_token("berth-registry", CI_OTHER_REPO)["id_token"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["repository"] = "org/app"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify_id_token(oidc_issuer.url, f"{header}.{forged}.{signature}", audience="berth-registry")


def test_person_signs_in_through_confidential_client(oidc_issuer):
    tokens = oidc_issuer.id_token("berth-web", "alice", client_secret="berth-web-secret",
                                  scope="openid email groups")
    claims = verify_id_token(oidc_issuer.url, tokens["id_token"], audience="berth-web")
    assert claims["sub"] == "alice"
    assert claims["groups"] == ["developers"]
    assert claims["email"] == "alice@example.test"
    assert "repository" not in claims


def test_person_claims_follow_the_scope(oidc_issuer):
    claims = verify_id_token(oidc_issuer.url, oidc_issuer.id_token("berth-cli", "bob")["id_token"],
                             audience="berth-cli")
    assert claims["sub"] == "bob"
    assert "groups" not in claims and "email" not in claims


def test_confidential_client_needs_its_secret(oidc_issuer):
    code = oidc_issuer.authorization_code("berth-web", "alice")
    r = redeem_code(oidc_issuer.url, "berth-web", code.code, code.code_verifier,
                    client_secret="not-the-secret")
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"


@pytest.mark.parametrize("account,password", [("alice", "bob-password"), ("carol", "anything")])
def test_wrong_password_or_unknown_account_yields_no_code(oidc_issuer, account, password):
    with pytest.raises(OidcFlowError, match="refused") as e:
        oidc_issuer.authorization_code("berth-cli", account, password=password)
    assert e.value.response.status_code == 401
    assert "code=" not in e.value.response.headers.get("Location", "")


def test_pkce_verifier_is_checked(oidc_issuer):
    code = oidc_issuer.authorization_code("berth-registry", CI_MAIN)
    wrong_verifier, _ = pkce_pair()
    r = redeem_code(oidc_issuer.url, "berth-registry", code.code, wrong_verifier)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    assert "id_token" not in r.json()


def test_code_redeems_once_with_its_verifier(oidc_issuer):
    code = oidc_issuer.authorization_code("berth-registry", CI_MAIN)
    assert code.iss == oidc_issuer.url  # RFC 9207: the issuer names itself next to the code
    first = redeem_code(oidc_issuer.url, "berth-registry", code.code, code.code_verifier)
    assert first.status_code == 200, first.text
    again = redeem_code(oidc_issuer.url, "berth-registry", code.code, code.code_verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("client_id", ["berth-cli", "berth-web"])
def test_authorization_request_without_pkce_is_refused(oidc_issuer, client_id):
    url = discovery(oidc_issuer.url)["authorization_endpoint"] + "?" + urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": DEFAULT_REDIRECT_URI,
        "scope": "openid", "state": "s1"})
    with pytest.raises(OidcFlowError, match="invalid_request"):
        sign_in(url, "alice")


def test_native_client_takes_any_loopback_port_but_only_its_path(oidc_issuer):
    code = oidc_issuer.authorization_code("berth-cli", "alice",
                                          redirect_uri="http://127.0.0.1:54321/callback")
    r = redeem_code(oidc_issuer.url, "berth-cli", code.code, code.code_verifier,
                    redirect_uri="http://127.0.0.1:54321/callback")
    assert r.status_code == 200, r.text
    with pytest.raises(OidcFlowError) as e:
        oidc_issuer.authorization_code("berth-cli", "alice", redirect_uri="http://127.0.0.1:54321/elsewhere")
    assert e.value.response.status_code == 400
    assert "redirect_uri" in e.value.response.text


def test_es256_issuer_and_stop():
    with OidcIssuer(id_token_alg="ES256", audiences=["ci.example"]) as issuer:
        token = issuer.id_token("ci.example", CI_MAIN)["id_token"]
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        assert verify_id_token(issuer.url, token, audience="ci.example")["repository"] == "org/app"
        pid_file = os.path.join(issuer.dir, "issuer.pid")
        pid = int(open(pid_file).read())
        subprocess.run([SCRIPT, "stop", issuer.dir], check=True, timeout=30)
        # The stop script returns once the issuer has closed its socket and removed its pid file.
        assert not os.path.exists(pid_file)
        assert not _running(pid)
        with pytest.raises(requests.ConnectionError):
            discovery(issuer.url)
