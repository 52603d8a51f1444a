#!/usr/bin/env bash
# A throwaway single-node OpenStack Swift on loopback for the tests: Debian's swift-proxy,
# -account, -container and -object servers (scripts/install-test-deps.sh installs them) with
# one replica, tempauth, and the slo, dlo, copy, bulk and tempurl middlewares. State lives
# in DIR and survives a stop.
#   scripts/swift.sh start DIR PORT [KEYSTONE_URL]
#                                     starts the proxy on 127.0.0.1:PORT, the account,
#                                     container and object servers on PORT+1..PORT+3 and
#                                     memcached on PORT+4 (configs, rings, data, logs and pid
#                                     files in DIR), creates the container berth-test, prints
#                                     the tempauth v1 URL
#   scripts/swift.sh stop DIR         stops them (SIGTERM to the PIDs in DIR/*.pid)
# User test:tester, key testing (an admin of account AUTH_test).
# With KEYSTONE_URL (scripts/keystone.sh's http://127.0.0.1:KPORT/v3, started with SWIFTPORT
# = PORT) the proxy takes Keystone tokens too (keystonemiddleware's authtoken and Swift's
# keystoneauth, as keystone.sh's user swift): a user with role member or admin on a project
# owns account AUTH_<project id>. tempauth and its AUTH_test stay as they are.
set -euo pipefail
. "$(dirname "$0")/test-server-lib.sh"

servers=(proxy account container object)

case "${1:-}" in
  start)
    dir=$(realpath -m "$2") port=$3 keystone=${4:-}
    command -v swift-proxy-server >/dev/null && command -v memcached >/dev/null \
      || { echo "swift.sh: swift or memcached is not installed (scripts/install-test-deps.sh)" >&2; exit 1; }
    # The servers read the hash path prefix/suffix and the storage policies from this fixed
    # path whatever swift_dir says; Debian's package ships one.
    [ -f /etc/swift/swift.conf ] || { echo "swift.sh: /etc/swift/swift.conf is missing" >&2; exit 1; }
    mkdir -p "$dir/devices/d1"
    # The object server keeps each object's metadata in user xattrs (tmpfs before Linux 6.6
    # has none).
    python3 -c 'import os, sys; os.setxattr(sys.argv[1], "user.swift.check", b"1")' "$dir/devices/d1" 2>/dev/null \
      || { echo "swift.sh: the filesystem of $dir has no user xattrs; pick another DIR" >&2; exit 1; }
    user=$(id -un)
    # Debian's Python, the proxy's, whatever python3 comes first on PATH (pyenv's, say).
    [ -z "$keystone" ] || /usr/bin/python3 -c 'import keystonemiddleware' 2>/dev/null \
      || { echo "swift.sh: python3-keystonemiddleware is not installed (scripts/install-test-deps.sh)" >&2; exit 1; }

    # The rings name the backends' ports, so they are rebuilt when PORT changes; the three at
    # once, each swift-ring-builder run being seconds of Python start-up on a busy machine.
    if [ "$(cat "$dir/rings.port" 2>/dev/null)" != "$port" ]; then
      for i in 1 2 3; do
        ring=$dir/${servers[$i]}
        rm -f "$ring.builder" "$ring.ring.gz"
        { swift-ring-builder "$ring.builder" create 4 1 1 \
            && swift-ring-builder "$ring.builder" add "r1z1-127.0.0.1:$((port + i))/d1" 1 \
            && swift-ring-builder "$ring.builder" rebalance; } >"$ring.ring.log" 2>&1 &
      done
      wait
      for i in 1 2 3; do
        ring=$dir/${servers[$i]}
        [ -f "$ring.ring.gz" ] || { cat "$ring.ring.log" >&2; exit 1; }
      done
      echo "$port" >"$dir/rings.port"
    fi

    # Shared settings: one process each (workers = 0, so the PID is the server), a taken port
    # fails at once rather than after 30 s of retries, logs to the console (-v below) rather
    # than to syslog, no mount point required for DIR.
    common() {
      printf '[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = %s\nworkers = 0\nbind_timeout = 1\nuser = %s\nswift_dir = %s\n' "$1" "$user" "$dir"
      printf 'devices = %s/devices\nmount_check = false\nlog_level = INFO\n\n' "$dir"
    }
    for i in 1 2 3; do
      s=${servers[$i]}
      { common $((port + i)); printf '[pipeline:main]\npipeline = %s-server\n\n[app:%s-server]\nuse = egg:swift#%s\n' "$s" "$s" "$s"; } \
        >"$dir/$s-server.conf"
    done
    # With Keystone, authtoken validates the token (a Keystone one, else it only marks the
    # request unauthenticated: delay_auth_decision) and keystoneauth authorizes Keystone users
    # on AUTH_<project id>. Both auth middlewares claiming AUTH_ would not do: keystoneauth
    # sets its verdict on every request, and tempauth, definitive for AUTH_ accounts,
    # overrides it. So tempauth, last, has the empty reseller prefix: it then decides only
    # for its own tokens (and leaves the others to keystoneauth), and its user keeps account
    # AUTH_test through an explicit storage URL. Its tokens become tk... (not AUTH_tk...), and
    # each request with one costs authtoken a Keystone look-up (a 404; it caches no misses).
    auth_filters=tempauth tempauth_user='user_test_tester = testing .admin'
    if [ -n "$keystone" ]; then
      auth_filters='authtoken keystoneauth tempauth'
      tempauth_user="reseller_prefix = ''
user_test_tester = testing .admin http://127.0.0.1:$port/v1/AUTH_test"
    fi
    # tempauth keeps its tokens in memcache, hence the memcached. The pipeline is the sample
    # proxy-server.conf's (/etc/swift) less what the tests do not use; bulk is for OpenDAL's
    # batch deletes (POST ?bulk-delete).
    { common "$port"; cat <<EOF; } >"$dir/proxy-server.conf"
[pipeline:main]
pipeline = catch_errors gatekeeper proxy-logging cache listing_formats bulk tempurl $auth_filters copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
$tempauth_user
storage_url_scheme = http

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$((port + 4))

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF
    # authtoken logs in as keystone.sh's service user (its role service is what may validate
    # tokens), finds Keystone in the catalog under its public endpoint (the only one
    # keystone.sh makes; the default is internal) and caches validations in Swift's memcache.
    # operator_roles: who owns the project's account; Keystone's own member role rather than
    # a Swift-specific one. (The proxy's log lists the [DEFAULT] and password-plugin options
    # as "not known to keystonemiddleware": harmless, as with any authtoken in Swift.)
    [ -z "$keystone" ] || cat >>"$dir/proxy-server.conf" <<EOF

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = $keystone
auth_url = $keystone
auth_type = password
interface = public
user_domain_id = default
project_domain_id = default
project_name = service
username = swift
password = swift-secret
delay_auth_decision = true
cache = swift.cache
include_service_catalog = false

[filter:keystoneauth]
use = egg:swift#keystoneauth
reseller_prefix = AUTH_
operator_roles = admin, member
EOF

    # memcached refuses to run as root without -u.
    memcached -l 127.0.0.1 -p $((port + 4)) -U 0 -u "$user" >"$dir/memcached.log" 2>&1 </dev/null &
    echo $! >"$dir/memcached.pid"
    for s in account container object proxy; do
      "swift-$s-server" "$dir/$s-server.conf" -v >"$dir/$s.log" 2>&1 </dev/null &
      echo $! >"$dir/$s.pid"
    done

    url="http://127.0.0.1:$port/auth/v1.0"
    auth=(-H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing')
    await_ready "$(cat "$dir/proxy.pid")" "$dir/proxy.log" "swift.sh: the Swift proxy at $url" \
      curl -sf -o /dev/null "${auth[@]}" "$url" || { "$0" stop "$dir"; exit 1; }
    headers=$(curl -sf -D - -o /dev/null "${auth[@]}" "$url" | tr -d '\r')
    token=$(sed -n 's/^x-auth-token: //Ip' <<<"$headers")
    storage=$(sed -n 's/^x-storage-url: //Ip' <<<"$headers")
    # The proxy answers before the backends may. They answer any request (400 to this one),
    # once their process is up (else the port is someone else's); the first container PUT
    # also creates the account.
    backends_up() {
      for i in 1 2 3; do
        kill -0 "$(cat "$dir/${servers[$i]}.pid")" && curl -s -m 5 -o /dev/null "http://127.0.0.1:$((port + i))/" || return 1
      done
      curl -sf -o /dev/null -X PUT -H "X-Auth-Token: $token" "$storage/berth-test"
    }
    await_ready "$(cat "$dir/proxy.pid")" "$dir/proxy.log" "swift.sh: the Swift backends" backends_up \
      || { tail -n 5 "$dir"/{account,container,object,memcached}.log >&2; "$0" stop "$dir"; exit 1; }
    echo "$url"
    ;;
  stop)
    for s in "${servers[@]}" memcached; do stop_pid_file "$2/$s.pid"; done
    ;;
  *)
    echo "usage: $0 start DIR PORT [KEYSTONE_URL] | stop DIR" >&2
    exit 2
    ;;
esac
