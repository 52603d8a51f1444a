"""A real OpenID Connect issuer for the tests (tests/oidc: npm's oidc-provider, started by
scripts/oidc-issuer.sh) and a client that gets real ID tokens from it by driving the
authorization code flow with PKCE S256, the way a browser and an app would.

    with OidcIssuer() as issuer:
        tokens = id_token(issuer.url, "berth-registry", "repo:org/app:ref:refs/heads/main")
        claims = verify_id_token(issuer.url, tokens["id_token"], audience="berth-registry")

Clients and accounts: tests/oidc/README.md. Passwords default to the fixture's
(tests/oidc/accounts.json), so a test names only the account.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import pytest
import requests

from e2eutil import REPO_ROOT, free_port

SCRIPT = os.path.join(REPO_ROOT, "scripts", "oidc-issuer.sh")
ACCOUNTS_FILE = os.path.join(REPO_ROOT, "tests", "oidc", "accounts.json")
# Nothing listens here: the flow stops at the redirect and reads the code from Location. It suits
# every client: the native ones take /callback on any loopback port, berth-web lists this one.
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8080/callback"
HTTP_TIMEOUT = 10


class OidcFlowError(AssertionError):
    """The flow did not end with a code (or tokens): sign-in refused, an error redirect, or an
    unexpected answer. Carries the last HTTP response, for the test's message."""

    def __init__(self, message: str, response: requests.Response | None = None):
        if response is not None:
            message += f"\n{response.status_code} {response.request.method} {response.url}\n{response.text[:2000]}"
        super().__init__(message)
        self.response = response


def fixture_accounts() -> dict:
    with open(ACCOUNTS_FILE) as f:
        return json.load(f)


class OidcIssuer:
    """The issuer on a free loopback port, in a temporary directory (its log and pid file).
    Options are issuer.mjs's: extra `redirect_uris` (berth-web's callbacks), extra `audiences`
    (CI client ids), `id_token_alg` ("RS256" or "ES256"), `id_token_ttl` in seconds."""

    def __init__(self, redirect_uris=(), audiences=(), id_token_alg: str | None = None,
                 id_token_ttl: int | None = None, port: int | None = None):
        self.port = port
        self.args: list[str] = []
        for uri in redirect_uris:
            self.args += ["--redirect-uri", uri]
        for aud in audiences:
            self.args += ["--audience", aud]
        if id_token_alg:
            self.args += ["--id-token-alg", id_token_alg]
        if id_token_ttl is not None:
            self.args += ["--id-token-ttl", str(id_token_ttl)]
        self.dir: str | None = None
        self.url: str | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "issuer.log")

    def log_text(self, limit: int = 20000) -> str:
        with open(self.log_path, "rb") as f:
            return f.read()[-limit:].decode(errors="replace")

    def start(self) -> "OidcIssuer":
        # A port free_port() found may be taken before node listens on it (it is only free
        # when asked); on a port of our own choosing a failed start is tried on another.
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            self.dir = tempfile.mkdtemp(prefix="berth-oidc-")
            port = self.port or free_port()
            p = subprocess.run([SCRIPT, "start", self.dir, str(port), *self.args],
                               capture_output=True, timeout=180)  # a first start may run npm ci
            if p.returncode == 0:
                break
            shutil.rmtree(self.dir, ignore_errors=True)
            if attempt == attempts - 1:
                raise AssertionError(f"oidc-issuer.sh start failed (rc={p.returncode}), {attempts} tries:\n"
                                     f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")
        self.url = p.stdout.decode().strip().splitlines()[-1]
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        subprocess.run([SCRIPT, "stop", self.dir], capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> "OidcIssuer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def discovery(self) -> dict:
        return discovery(self.url)

    def id_token(self, client_id: str, account: str, **kwargs) -> dict:
        return id_token(self.url, client_id, account, **kwargs)

    def authorization_code(self, client_id: str, account: str, **kwargs) -> "AuthorizationCode":
        return authorization_code(self.url, client_id, account, **kwargs)


@pytest.fixture(scope="session")
def oidc_issuer():
    """One issuer for the session: its state is per sign-in, so tests do not disturb each other."""
    with OidcIssuer() as issuer:
        yield issuer


def discovery(issuer_url: str) -> dict:
    r = requests.get(f"{issuer_url}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT)
    r.raise_for_status()
    return r.json()


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _Forms(HTMLParser):
    """The forms of an interaction page: action and the named inputs with their values."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value") or ""


def _same_endpoint(url: str, redirect_uri: str) -> bool:
    u, r = urlsplit(url), urlsplit(redirect_uri)
    return (u.scheme, u.netloc, u.path) == (r.scheme, r.netloc, r.path)


def sign_in(authorization_url: str, account: str, password: str | None = None,
            redirect_uri: str | None = None, session: requests.Session | None = None) -> dict:
    """Open an authorization request URL (ours, or one a Berth under test redirects to), sign in
    as `account`, allow the consent prompt, and return the parameters of the redirect to the
    redirect URI (`code`, `state`, `iss`) without calling it. Raises OidcFlowError when sign-in is
    refused or the issuer redirects back with an error."""
    if password is None:
        password = fixture_accounts().get(account, {}).get("password", "")
    if redirect_uri is None:
        redirect_uri = dict(parse_qsl(urlsplit(authorization_url).query))["redirect_uri"]
    s = session or requests.Session()
    resp = s.get(authorization_url, allow_redirects=False, timeout=HTTP_TIMEOUT)
    for _ in range(20):  # auth -> login -> resume -> consent -> resume -> redirect_uri
        if resp.is_redirect:
            location = urljoin(resp.url, resp.headers["Location"])
            if _same_endpoint(location, redirect_uri):
                params = dict(parse_qsl(urlsplit(location).query))
                if "error" in params:
                    raise OidcFlowError(f"the issuer answered with an error: {params}", resp)
                return params
            resp = s.get(location, allow_redirects=False, timeout=HTTP_TIMEOUT)
            continue
        if resp.status_code != 200:
            raise OidcFlowError("unexpected answer during sign-in", resp)
        parser = _Forms()
        parser.feed(resp.text)
        if not parser.forms:
            raise OidcFlowError("an interaction page without a form", resp)
        form = parser.forms[0]  # the sign-in form, or "Allow" on the consent page
        fields = dict(form["fields"])
        if "password" in fields:
            fields.update(login=account, password=password)
        resp = s.post(urljoin(resp.url, form["action"]), data=fields, allow_redirects=False,
                      timeout=HTTP_TIMEOUT)
        if "password" in fields and not resp.is_redirect:
            raise OidcFlowError(f"sign-in as {account!r} refused", resp)
    raise OidcFlowError("too many steps without reaching the redirect URI", resp)


@dataclasses.dataclass
class AuthorizationCode:
    code: str
    code_verifier: str
    redirect_uri: str
    state: str
    nonce: str | None
    iss: str | None  # RFC 9207 issuer identification, sent with the code


def authorization_code(issuer_url: str, client_id: str, account: str, password: str | None = None,
                       scope: str = "openid", redirect_uri: str = DEFAULT_REDIRECT_URI,
                       nonce: str | None = None, session: requests.Session | None = None,
                       extra_params: dict | None = None) -> AuthorizationCode:
    """Sign in through the authorization endpoint (code flow, PKCE S256) and return the code with
    the verifier that redeems it, unredeemed: a test can redeem it or hand it to Berth."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "scope": scope, "state": state, "code_challenge": challenge,
              "code_challenge_method": "S256", **({"nonce": nonce} if nonce else {}),
              **(extra_params or {})}
    url = f"{discovery(issuer_url)['authorization_endpoint']}?{urlencode(params)}"
    got = sign_in(url, account, password, redirect_uri, session)
    if got.get("state") != state:
        raise OidcFlowError(f"state came back as {got.get('state')!r}, sent {state!r}")
    if "code" not in got:
        raise OidcFlowError(f"no code in the redirect: {got}")
    return AuthorizationCode(got["code"], verifier, redirect_uri, state, nonce, got.get("iss"))


def redeem_code(issuer_url: str, client_id: str, code: str, code_verifier: str,
                redirect_uri: str = DEFAULT_REDIRECT_URI,
                client_secret: str | None = None) -> requests.Response:
    """POST the code to the token endpoint; the raw response, so a test can assert a refusal."""
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": code_verifier,
            "redirect_uri": redirect_uri}
    auth = None
    if client_secret is None:
        form["client_id"] = client_id  # a public client (token_endpoint_auth_method none)
    else:
        auth = (client_id, client_secret)  # client_secret_basic, berth-web's method
    return requests.post(discovery(issuer_url)["token_endpoint"], data=form, auth=auth,
                         timeout=HTTP_TIMEOUT)


def id_token(issuer_url: str, client_id: str, account: str, password: str | None = None,
             client_secret: str | None = None, scope: str = "openid",
             redirect_uri: str = DEFAULT_REDIRECT_URI) -> dict:
    """The whole flow: sign in, redeem the code; the token response (`id_token`, `access_token`,
    ...). The ID token's `aud` is `client_id`."""
    ac = authorization_code(issuer_url, client_id, account, password, scope, redirect_uri)
    r = redeem_code(issuer_url, client_id, ac.code, ac.code_verifier, redirect_uri, client_secret)
    if r.status_code != 200:
        raise OidcFlowError("the token endpoint refused the code", r)
    return r.json()


def verify_id_token(issuer_url: str, token: str, audience: str) -> dict:
    """Check an ID token the way a relying party must (signature by a key from the issuer's
    JWKS, iss, aud, exp) and return its claims."""
    # Imported here: the e2e conftest imports this module, and only these tests need PyJWT.
    import jwt

    jwks = requests.get(discovery(issuer_url)["jwks_uri"], timeout=HTTP_TIMEOUT).json()
    kid = jwt.get_unverified_header(token).get("kid")
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    return jwt.decode(token, key=key, algorithms=[key.algorithm_name], audience=audience,
                      issuer=issuer_url, options={"require": ["iss", "aud", "sub", "exp", "iat"]})
