"""`berth admin`: the first administrator made on the host (`bootstrap`, straight into the
database), then users, namespaces, roles, robots and the audit log managed through the admin
API from the command line; what it sets up is what real clients (skopeo) then may do."""
import json
import os
import subprocess

import imagetools as it
from e2eutil import BERTH_BIN, berth_only

pytestmark = berth_only


def berth_admin(srv, *args, user=None, password=None, input=None, check=True):
    env = {**os.environ, "BERTH_REGISTRY": srv.url}
    if user:
        env.update(BERTH_USER=user, BERTH_PASSWORD=password)
    p = subprocess.run([BERTH_BIN, "admin", *args], env=env, input=input, capture_output=True, text=True,
                       timeout=60)
    if check:
        assert p.returncode == 0, f"berth admin {' '.join(args)}: {p.stderr}"
    return p


def test_admin_cli_manages_access_end_to_end(make_server, workdir, skopeo):
    srv = make_server(env={"REGISTRY_BERTH_AUTH_TOKEN_ENABLED": "true",
                           "REGISTRY_BERTH_AUTH_DEFAULTACCESS_AUTHENTICATED": "none"})
    # On the host: the first administrator, straight into the database (SQLite has one owner
    # process, so the server is stopped meanwhile).
    srv.stop()
    boot = subprocess.run([BERTH_BIN, "admin", "bootstrap", "root", "--password-stdin"], input="root-Pa55word\n",
                          env={**os.environ, **srv.env()}, capture_output=True, text=True, timeout=60)
    assert boot.returncode == 0, boot.stderr
    srv.start()
    root = {"user": "root", "password": "root-Pa55word"}
    assert json.loads(berth_admin(srv, "me", **root).stdout)["name"] == "root"
    # Without the right password nothing happens, and the API's reason is shown.
    denied = berth_admin(srv, "users", "list", user="root", password="wrong-password", check=False)
    assert denied.returncode != 0 and "401" in denied.stderr

    made = berth_admin(srv, "users", "create", "dev", **root)
    dev_password = made.stderr.split("password of dev: ", 1)[1].split()[0]
    berth_admin(srv, "namespaces", "create", "team", **root)
    berth_admin(srv, "namespaces", "grant", "team", "user", "dev", "developer", **root)
    members = json.loads(berth_admin(srv, "namespaces", "members", "team", **root).stdout)
    assert {"kind": "user", "name": "dev", "role": "developer"} in members
    bad = berth_admin(srv, "namespaces", "grant", "team", "user", "dev", "emperor", **root, check=False)
    assert bad.returncode != 0 and "role" in bad.stderr

    src = it.write_image_layout(os.path.join(workdir, "src"), "v1", salt="admin-cli")
    skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds", f"dev:{dev_password}",
           src.ref, f"docker://{srv.host}/team/app:1")
    # dev may not push outside `team`.
    refused = skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds",
                     f"dev:{dev_password}", src.ref, f"docker://{srv.host}/other/app:1", check=False)
    assert refused.returncode != 0

    # `team`'s tag 1 made immutable: skopeo's retry of the same image goes through, another
    # image under the tag is refused, and once the rule is gone it moves.
    rule = json.loads(berth_admin(srv, "namespaces", "protect", "team", "1", "--except", "*-dev", **root).stdout)
    assert [r["id"] for r in json.loads(berth_admin(srv, "namespaces", "immutability", "team", **root).stdout)] \
        == [rule["id"]]
    dev_push = ["copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds", f"dev:{dev_password}"]
    skopeo(*dev_push, src.ref, f"docker://{srv.host}/team/app:1")
    other = it.write_image_layout(os.path.join(workdir, "other"), "v1", salt="admin-cli-other")
    moved = skopeo(*dev_push, other.ref, f"docker://{srv.host}/team/app:1", check=False)
    assert moved.returncode != 0 and b"immutable" in moved.stderr, moved.stderr
    berth_admin(srv, "namespaces", "unprotect", "team", str(rule["id"]), **root)
    skopeo(*dev_push, other.ref, f"docker://{srv.host}/team/app:1")
    skopeo(*dev_push, src.ref, f"docker://{srv.host}/team/app:1")

    # A robot for CI: its secret is printed once and pulls from `team`.
    robot = json.loads(berth_admin(srv, "robots", "create", "ci", "--expires", "1d", "--grant", "team=reader",
                                   **root).stdout)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"{robot['name']}:{robot['secret']}",
                 f"docker://{srv.host}/team/app:1").stdout
    assert it.sha256_digest(raw) == src.digest
    berth_admin(srv, "robots", "delete", "ci", **root)
    gone = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", f"{robot['name']}:{robot['secret']}",
                  f"docker://{srv.host}/team/app:1", check=False)
    assert gone.returncode != 0

    # Everything above is in the audit log, with who did it.
    events = json.loads(berth_admin(srv, "audit", "--actor", "root", **root).stdout)["events"]
    actions = {e["action"] for e in events}
    assert {"user.create", "namespace.create", "member.set", "immutability.create", "immutability.delete",
            "robot.create"} <= actions, actions
    pushes = json.loads(berth_admin(srv, "audit", "--action", "manifest.push", **root).stdout)["events"]
    assert {e["actor"] for e in pushes} == {"dev"}

    # Bootstrap again on the host resets the administrator's password.
    srv.stop()
    again = subprocess.run([BERTH_BIN, "admin", "bootstrap", "root"], env={**os.environ, **srv.env()},
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    srv.start()
    new_password = again.stdout.strip()
    assert json.loads(berth_admin(srv, "me", user="root", password=new_password).stdout)["name"] == "root"
    assert berth_admin(srv, "me", **root, check=False).returncode != 0
