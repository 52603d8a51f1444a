#!/usr/bin/env bash
# A throwaway S3-compatible server on loopback for the tests: moto's server (PyPI's
# moto[server], installed by scripts/install-test-deps.sh), which speaks the S3 API over
# HTTP, signatures, multipart uploads and presigned URLs included. State is in memory.
#   scripts/s3.sh start DIR PORT   starts it (log and pid file in DIR), creates the bucket
#                                  berth-test, prints the endpoint URL
#   scripts/s3.sh stop DIR         stops it (SIGTERM to the PID in DIR/s3.pid)
# Any access key and secret are accepted.
set -euo pipefail
. "$(dirname "$0")/test-server-lib.sh"

case "${1:-}" in
  start)
    dir=$(realpath -m "$2") port=$3
    mkdir -p "$dir"
    python3 -c "import moto.server" 2>/dev/null \
      || { echo "s3.sh: moto's server is not installed (pip install 'moto[server]')" >&2; exit 1; }
    url="http://127.0.0.1:$port"
    python3 -m moto.server -H 127.0.0.1 -p "$port" >"$dir/s3.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/s3.pid"
    # Ready when it answers; the bucket is made then.
    await_ready "$pid" "$dir/s3.log" "s3.sh: the S3 server at $url" curl -sf -o /dev/null "$url/"
    curl -sf -o /dev/null -X PUT "$url/berth-test"
    echo "$url"
    ;;
  stop)
    stop_pid_file "$2/s3.pid"
    ;;
  *)
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
