"""The admin API, exercised from its own served OpenAPI document by schemathesis, a
property-based API fuzzer: no 5xx, and every response matches the document (status
codes, content types, schemas)."""
import os
import subprocess

import requests

from e2eutil import berth_only

pytestmark = berth_only

ADMIN, PASSWORD = "root", "root-password-e2e"


def test_admin_api_matches_its_openapi_document_under_fuzzing(make_server, tmp_path):
    srv = make_server(env={
        "REGISTRY_BERTH_AUTH_TOKEN_ENABLED": "true",
        "REGISTRY_BERTH_AUTH_ADMIN_USERNAME": ADMIN,
        "REGISTRY_BERTH_AUTH_ADMIN_PASSWORD": PASSWORD,
        # The fuzzer signs in thousands of times: the sign-in limit would turn it away.
        "REGISTRY_BERTH_AUTH_LOGINLIMIT_FAILURES": "0",
    })
    auth = (ADMIN, PASSWORD)
    # Something to find: a namespace with a member, a team, a user.
    for path, body in [("namespaces", {"name": "team"}), ("teams", {"name": "ops"}),
                       ("users", {"name": "dev", "password": "dev-password"})]:
        r = requests.post(f"{srv.url}/api/v1/{path}", json=body, auth=auth, timeout=30)
        assert r.status_code == 201, r.text
    r = requests.put(f"{srv.url}/api/v1/namespaces/team/members/user/dev", json={"role": "developer"},
                     auth=auth, timeout=30)
    assert r.status_code == 204, r.text

    schema = f"{srv.url}/api/v1/openapi.json"
    report = tmp_path / "junit.xml"
    cmd = ["schemathesis", "run", schema, "--url", srv.url, "--auth", f"{ADMIN}:{PASSWORD}",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
           "response_headers_conformance,response_schema_conformance",
           "--max-examples", os.environ.get("SCHEMATHESIS_EXAMPLES", "40"), "--seed", "7",
           "--phases", "examples,coverage,fuzzing,stateful", "--no-color",
           "--report", "junit", "--report-junit-path", str(report)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"schemathesis found problems:\n{p.stdout[-20000:]}\n{p.stderr[-4000:]}"
    # The run did exercise the API: every operation of the document was tested.
    assert "No operations" not in p.stdout
    print(p.stdout[-3000:])
    log = srv.log_text()
    assert PASSWORD not in log and "dev-password" not in log, "a password reached the log"
