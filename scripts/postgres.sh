#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests.
#   scripts/postgres.sh start DIR PORT   initialises DIR (unless it holds a cluster already: a
#                                        restart), starts the server, prints its URL
#   scripts/postgres.sh stop DIR         stops it (pg_ctl, by the PID in its pid file)
# The server offers TLS with a certificate of its own (DIR/server.crt, which is also its CA),
# so clients that ask for it (`sslmode=require`, or `prefer`, the default) get it.
# The server runs as the `postgres` user the Debian package creates (initdb refuses root),
# so DIR's parent directories must be searchable by that user.
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bin/initdb" ] || { echo "postgres.sh: PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-}" in
  start)
    dir=$2 port=$3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    [ -f "$dir/data/PG_VERSION" ] || as_pg "$bin/initdb" -D "$dir/data" -U berth --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    if [ ! -f "$dir/server.key" ]; then
      openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null
      chmod 600 "$dir/server.key"
      [ "$(id -u)" = 0 ] && chown postgres: "$dir/server.key" "$dir/server.crt"
    fi
    # fsync stays on: the tests exercise the durability settings the registry relies on.
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=500 -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgres://berth@127.0.0.1:$port/postgres"
    ;;
  stop)
    dir=$2
    [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
