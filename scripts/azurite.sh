#!/usr/bin/env bash
# A throwaway Azure Blob Storage emulator on loopback for the tests: Microsoft's Azurite
# (tests/azurite, npm), with the container berth-test made in its well-known development
# account. State lives in DIR.
#   scripts/azurite.sh start DIR PORT   starts it (log and pid file in DIR), prints the
#                                       account's blob endpoint URL
#   scripts/azurite.sh stop DIR         stops it (SIGTERM to the PID in DIR/azurite.pid)
# Account devstoreaccount1 with Azurite's published development key (AZURITE_KEY below).
set -euo pipefail
. "$(dirname "$0")/test-server-lib.sh"

azurite=$(cd "$(dirname "$0")/../tests/azurite" && pwd)
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

case "${1:-}" in
  start)
    dir=$(realpath -m "$2") port=$3
    mkdir -p "$dir/data"
    if [ ! -x "$azurite/node_modules/.bin/azurite-blob" ]; then
      npm ci --prefix "$azurite" --silent --no-audit --no-fund >"$dir/npm.log" 2>&1 || { cat "$dir/npm.log" >&2; exit 1; }
    fi
    url="http://127.0.0.1:$port/devstoreaccount1"
    "$azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" --location "$dir/data" \
      --skipApiVersionCheck --loose >"$dir/azurite.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/azurite.pid"
    # Ready when the container can be made.
    await_ready "$pid" "$dir/azurite.log" "azurite.sh: Azurite at $url" \
      node "$azurite/create-container.mjs" "$url" devstoreaccount1 "$AZURITE_KEY" berth-test
    echo "$url"
    ;;
  stop)
    stop_pid_file "$2/azurite.pid"
    ;;
  *)
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
