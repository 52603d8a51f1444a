"""Tokens of an external token server configured as registry:2's `auth.token` with
`rootcertbundle`: Berth and Distribution 2.8.2 (the reference) get the same configuration
and the same tokens, and must agree on each one. A token is good if the certificate chain
in its `x5c` header leads to a bundle certificate and the leaf's key signed it, or if its
`kid` is the libtrust key id of a bundle certificate whose key signed it (docker_auth's
way); chains to other CAs, expired leaves, signatures by another key, and wrong audiences
are refused."""
import base64
import datetime
import hashlib
import os

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from e2eutil import DISTRIBUTION_BIN, RegistryServer, berth_only

pytestmark = berth_only

ISSUER, SERVICE = "auth.example.test", "registry.example.test"


def certificate(name, key, issuer_cert=None, issuer_key=None, ca=False, days=(-1, 30)):
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now + datetime.timedelta(days=days[0]))
               .not_valid_after(now + datetime.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256())


def der_b64(cert) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def libtrust_kid(key) -> str:
    """libtrust's key id: base32 of the first 240 bits of the SHA-256 of the SPKI, by fours."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


def token(key, headers, audience=SERVICE, repository="team/app"):
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    claims = {"iss": ISSUER, "sub": "alice", "aud": audience, "exp": now + 300, "nbf": now - 10, "iat": now,
              "jti": os.urandom(8).hex(),
              "access": [{"type": "repository", "name": repository, "actions": ["pull"]}]}
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


@pytest.fixture
def servers(workdir):
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certificate("token CA", root_key, ca=True)
    bundle = os.path.join(workdir, "bundle.pem")
    with open(bundle, "wb") as f:
        f.write(root.public_bytes(serialization.Encoding.PEM))
    env = {"REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_REALM": "https://auth.example.test/token",
           "REGISTRY_AUTH_TOKEN_SERVICE": SERVICE, "REGISTRY_AUTH_TOKEN_ISSUER": ISSUER,
           "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": bundle}
    started = []
    for kind in ("berth", "distribution"):
        if kind == "distribution" and not os.path.exists(DISTRIBUTION_BIN):
            pytest.skip(f"{DISTRIBUTION_BIN} (Debian's docker-registry) is not installed")
        d = os.path.join(workdir, kind)
        os.makedirs(d)
        srv = RegistryServer(kind, d)
        srv.extra_env.update(env)
        srv.start()
        started.append(srv)
    yield started, root, root_key
    for srv in started:
        srv.stop()


def test_rootcertbundle_tokens_are_judged_as_distribution_judges_them(servers):
    (berth, distribution), root, root_key = servers
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate("token signer", leaf_key, root, root_key)
    expired = certificate("old signer", leaf_key, root, root_key, days=(-30, -1))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_ca = certificate("other CA", other_key, ca=True)
    foreign = certificate("foreign signer", leaf_key, other_ca, other_key)
    stranger = ec.generate_private_key(ec.SECP256R1())

    cases = {
        "x5c chain to the bundle": (token(leaf_key, {"x5c": [der_b64(leaf)]}), True),
        "x5c with its root": (token(leaf_key, {"x5c": [der_b64(leaf), der_b64(root)]}), True),
        "kid of a bundle certificate": (token(root_key, {"kid": libtrust_kid(root_key)}), True),
        "x5c to another CA": (token(leaf_key, {"x5c": [der_b64(foreign), der_b64(other_ca)]}), False),
        "expired leaf": (token(leaf_key, {"x5c": [der_b64(expired)]}), False),
        "signed by another key": (token(stranger, {"x5c": [der_b64(leaf)]}), False),
        "kid of no bundle certificate": (token(stranger, {"kid": libtrust_kid(stranger)}), False),
        "kid, signed by another key": (token(stranger, {"kid": libtrust_kid(root_key)}), False),
        "wrong audience": (token(leaf_key, {"x5c": [der_b64(leaf)]}, audience="other"), False),
    }
    for name, (tok, good) in cases.items():
        verdicts = {}
        for srv in (berth, distribution):
            r = requests.get(f"{srv.url}/v2/team/app/tags/list", headers={"Authorization": f"Bearer {tok}"},
                             timeout=10)
            # Admitted: the repository does not exist (404). Refused: 401.
            verdicts[srv.kind] = r.status_code
        assert verdicts == {"berth": 404 if good else 401, "distribution": 404 if good else 401}, (name, verdicts)
