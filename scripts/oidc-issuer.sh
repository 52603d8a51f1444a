#!/usr/bin/env bash
# A throwaway OpenID Connect issuer on loopback for the tests (tests/oidc: npm's oidc-provider).
#   scripts/oidc-issuer.sh start DIR PORT [issuer.mjs options...]
#                                        starts it (log and pid file in DIR), prints its issuer URL
#   scripts/oidc-issuer.sh stop DIR      stops it (SIGTERM to the PID in DIR/issuer.pid)
# Extra start options go to issuer.mjs, e.g. --redirect-uri URI, --audience ID, --id-token-alg ES256.
set -euo pipefail
. "$(dirname "$0")/test-server-lib.sh"

oidc=$(cd "$(dirname "$0")/../tests/oidc" && pwd)

case "${1:-}" in
  start)
    dir=$2 port=$3
    shift 3
    command -v node >/dev/null || { echo "oidc-issuer.sh: node not found (apt-get install nodejs npm)" >&2; exit 1; }
    if [ ! -d "$oidc/node_modules/oidc-provider" ]; then
      npm ci --prefix "$oidc" --silent --no-audit --no-fund >"${TMPDIR:-/tmp}/oidc-npm-ci.$$.log" 2>&1 \
        || { cat "${TMPDIR:-/tmp}/oidc-npm-ci.$$.log" >&2; exit 1; }
      rm -f "${TMPDIR:-/tmp}/oidc-npm-ci.$$.log"
    fi
    mkdir -p "$dir"
    url="http://127.0.0.1:$port"
    # issuer.mjs writes its pid file once it listens: a stale one must not count as ready.
    rm -f "$dir/issuer.pid"
    node "$oidc/issuer.mjs" --port "$port" --pid-file "$dir/issuer.pid" "$@" >"$dir/issuer.log" 2>&1 </dev/null &
    pid=$!
    # Ready when our process listens (its pid file) and the discovery document answers.
    listening() { [ -f "$dir/issuer.pid" ] && curl -sf -o /dev/null "$url/.well-known/openid-configuration"; }
    await_ready "$pid" "$dir/issuer.log" "oidc-issuer.sh: the issuer at $url" listening
    echo "$url"
    ;;
  stop)
    dir=$2
    [ -f "$dir/issuer.pid" ] || exit 0
    pid=$(cat "$dir/issuer.pid")
    kill "$pid" 2>/dev/null || exit 0
    # The issuer removes its pid file once it has closed its socket and is exiting; wait for
    # that (10 s). Not for the PID to vanish: the exited process stays a zombie until whatever
    # adopted it reaps it, which a container's init may do only every few seconds.
    for _ in $(seq 100); do
      [ -f "$dir/issuer.pid" ] && kill -0 "$pid" 2>/dev/null || exit 0
      sleep 0.1
    done
    echo "oidc-issuer.sh: issuer $pid did not stop on SIGTERM; killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
    ;;
  *) echo "usage: $0 start DIR PORT [issuer options] | stop DIR" >&2; exit 2 ;;
esac
