#!/usr/bin/env bash
# A throwaway single-node OpenStack Swift on loopback for the tests: Debian's swift-proxy,
# -account, -container and -object servers (not yet installed by scripts/install-test-deps.sh,
# as no test uses Swift yet: `apt-get install swift swift-proxy swift-account swift-container
# swift-object memcached`) with
# one replica, tempauth, and the slo, dlo, copy, bulk and tempurl middlewares. State lives
# in DIR and survives a stop.
#   scripts/swift.sh start DIR PORT   starts the proxy on 127.0.0.1:PORT, the account,
#                                     container and object servers on PORT+1..PORT+3 and
#                                     memcached on PORT+4 (configs, rings, data, logs and pid
#                                     files in DIR), creates the container berth-test, prints
#                                     the tempauth v1 URL
#   scripts/swift.sh stop DIR         stops them (SIGTERM to the PIDs in DIR/*.pid)
# User test:tester, key testing (an admin of account AUTH_test).
set -euo pipefail
. "$(dirname "$0")/test-server-lib.sh"

servers=(proxy account container object)

case "${1:-}" in
  start)
    dir=$(realpath -m "$2") port=$3
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
    # tempauth keeps its tokens in memcache, hence the memcached. The pipeline is the sample
    # proxy-server.conf's (/etc/swift) less what the tests do not use; bulk is for OpenDAL's
    # batch deletes (POST ?bulk-delete).
    { common "$port"; cat <<EOF; } >"$dir/proxy-server.conf"
[pipeline:main]
pipeline = catch_errors gatekeeper proxy-logging cache listing_formats bulk tempurl tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
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
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
