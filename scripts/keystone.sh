#!/usr/bin/env bash
# A throwaway OpenStack Keystone (Identity API v3) on loopback for the tests, in front of the
# Swift of scripts/swift.sh: Debian's python3-keystone (keystone-manage and the WSGI app; not
# the `keystone` package, whose post-install wants dbconfig and Apache) served by uWSGI (which
# Debian's swift packages depend on already), with its SQLite database, fernet keys and
# keystone.conf in DIR.
#   scripts/keystone.sh start DIR PORT SWIFTPORT   creates the database and the fixture below
#                         (unless DIR holds them, made for the same ports: a restart), starts
#                         Keystone on 127.0.0.1:PORT, prints the auth URL
#                         http://127.0.0.1:PORT/v3
#   scripts/keystone.sh stop DIR                   stops it (SIGTERM to the PID in DIR/keystone.pid)
# Fixture, all in domain Default and region RegionOne:
#   user admin (admin-secret): admin of project admin and of the system (keystone-manage bootstrap)
#   user berth (berth-secret): role member on project berth (its id in DIR/berth-project-id,
#     its Swift account AUTH_<that id>)
#   user swift (swift-secret): role service on project service, which lets it validate tokens:
#     the service user of the authtoken middleware of `scripts/swift.sh start DIR PORT URL`
#   catalog: identity (http://127.0.0.1:PORT/v3) and object-store, service swift
#     (http://127.0.0.1:SWIFTPORT/v1/AUTH_%(project_id)s), both public
set -euo pipefail
. "$(dirname "$0")/test-server-lib.sh"

case "${1:-}" in
  start)
    dir=$(realpath -m "$2") port=$3 swift_port=$4
    command -v keystone-manage >/dev/null && command -v uwsgi >/dev/null && [ -f /usr/lib/uwsgi/plugins/python3_plugin.so ] \
      || { echo "keystone.sh: python3-keystone or uwsgi is not installed (scripts/install-test-deps.sh)" >&2; exit 1; }
    mkdir -p "$dir"
    url="http://127.0.0.1:$port/v3"

    # Logs go to stderr, which the redirections below put in DIR. bcrypt at its fewest rounds
    # (4, not 12): each password login costs milliseconds rather than a quarter of a second
    # of CPU on a busy test machine.
    cat >"$dir/keystone.conf" <<EOF
[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///$dir/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = $dir/fernet-keys
[fernet_receipts]
key_repository = $dir/fernet-keys
[credential]
key_repository = $dir/credential-keys
[identity]
password_hash_rounds = 4
EOF
    km() { keystone-manage --config-file "$dir/keystone.conf" "$@"; }

    # The catalog names both ports, so a start with other ports (or after a start that failed
    # half-way: no fixture.ports yet) begins again from an empty database.
    fresh=
    if [ "$(cat "$dir/fixture.ports" 2>/dev/null)" != "$port $swift_port" ]; then
      fresh=1
      rm -rf "$dir"/keystone.db* "$dir/fernet-keys" "$dir/credential-keys" "$dir/fixture.ports" "$dir/berth-project-id"
      # Each keystone-manage is 1.5-2.5 s of Python start-up; the key repositories do not
      # need the database, so the three run at once. Keys owned by the user Keystone runs as
      # (keystone-manage insists on being told when run as root).
      owner=(--keystone-user "$(id -un)" --keystone-group "$(id -gn)")
      km db_sync >"$dir/db_sync.log" 2>&1 &
      km fernet_setup "${owner[@]}" >"$dir/fernet_setup.log" 2>&1 &
      km credential_setup "${owner[@]}" >"$dir/credential_setup.log" 2>&1 &
      for _ in 1 2 3; do
        wait -n || { cat "$dir"/{db_sync,fernet_setup,credential_setup}.log >&2; exit 1; }
      done
      # In SQLite's default rollback journal a write waits for every open read, and Keystone
      # on uWSGI's threads then fails writes that follow reads ("database is locked" after
      # 5 s, seen on the fixture's first POST, right after a GET). In WAL mode (a property
      # of the file, set once) reads do not block the writer.
      python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode = WAL")' "$dir/keystone.db"
      km bootstrap --bootstrap-username admin --bootstrap-password admin-secret --bootstrap-project-name admin \
        --bootstrap-role-name admin --bootstrap-service-name keystone --bootstrap-region-id RegionOne \
        --bootstrap-public-url "$url" >"$dir/bootstrap.log" 2>&1 \
        || { cat "$dir/bootstrap.log" >&2; exit 1; }
    fi

    # One uWSGI worker with threads, speaking HTTP itself (--http-socket, no router process);
    # --master and --die-on-term so SIGTERM stops it (a bare uWSGI master reloads on it);
    # --need-app so a broken config exits at once rather than answering 500; large headers
    # for the tokens. --http-socket closes the connection after each answer without saying
    # so, and a client that reuses it gets a reset: hence `Connection: close`.
    OS_KEYSTONE_CONFIG_DIR=$dir uwsgi --plugin python3 --http-socket "127.0.0.1:$port" \
      --wsgi-file /usr/bin/keystone-wsgi-public --master --die-on-term --need-app \
      --processes 1 --threads 4 --buffer-size 65535 --add-header "Connection: close" \
      >"$dir/keystone.log" 2>&1 </dev/null &
    echo $! >"$dir/keystone.pid"
    # Ready when this uWSGI has bound the port (else what answers may be someone else's: a
    # taken port makes it exit, but not at once) and the application answers. The socket is
    # bound before the application is loaded (about 2 s), so a connection can wait in the
    # backlog meanwhile: hence the time limit on each try.
    ready() { grep -q "bound to TCP address 127.0.0.1:$port " "$dir/keystone.log" && curl -sf -m 10 -o /dev/null "$url"; }
    await_ready "$(cat "$dir/keystone.pid")" "$dir/keystone.log" "keystone.sh: Keystone at $url" ready \
      || { "$0" stop "$dir"; exit 1; }

    # The rest of the fixture through the API as the bootstrap admin (system scope).
    if [ -n "$fresh" ]; then
      fixture_failed() { cat "$dir/fixture.log" >&2; "$0" stop "$dir"; exit 1; }
      python3 - "$url" "$swift_port" "$dir/berth-project-id" >"$dir/fixture.log" 2>&1 <<'EOF' || fixture_failed
import json, sys, urllib.error, urllib.request

url, swift_port, project_id_file = sys.argv[1:]
token = None

def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req) as resp:
            data = resp.read()
            return resp.headers, json.loads(data) if data else None
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {path}: {e.code} {e.read().decode(errors='replace')}")

headers, _ = call("POST", "/auth/tokens", {"auth": {
    "identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": "admin-secret"}}},
    "scope": {"system": {"all": True}}}})
token = headers["X-Subject-Token"]

# bootstrap makes admin, member and reader (newer Keystones: service too); service,
# which Keystone's policy lets validate tokens, is for the services' own users.
roles = {r["name"]: r["id"] for r in call("GET", "/roles")[1]["roles"]}
if "service" not in roles:
    roles["service"] = call("POST", "/roles", {"role": {"name": "service"}})[1]["role"]["id"]

def project(name):
    return call("POST", "/projects", {"project": {"name": name, "domain_id": "default"}})[1]["project"]["id"]

def user(name, password, project, role):
    user = call("POST", "/users", {"user": {"name": name, "domain_id": "default", "password": password,
                                            "default_project_id": project}})[1]["user"]["id"]
    call("PUT", f"/projects/{project}/users/{user}/roles/{roles[role]}")

berth = project("berth")
user("berth", "berth-secret", berth, "member")
user("swift", "swift-secret", project("service"), "service")

service = call("POST", "/services", {"service": {"name": "swift", "type": "object-store"}})[1]["service"]["id"]
call("POST", "/endpoints", {"endpoint": {"service_id": service, "interface": "public", "region_id": "RegionOne",
                                         "url": f"http://127.0.0.1:{swift_port}/v1/AUTH_%(project_id)s"}})
with open(project_id_file, "w") as f:
    print(berth, file=f)
EOF
      echo "$port $swift_port" >"$dir/fixture.ports"
    fi
    echo "$url"
    ;;
  stop)
    stop_pid_file "$2/keystone.pid"
    ;;
  *)
    echo "usage: $0 start DIR PORT SWIFTPORT | stop DIR" >&2
    exit 2
    ;;
esac
