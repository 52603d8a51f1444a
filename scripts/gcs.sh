#!/usr/bin/env bash
# A throwaway Google Cloud Storage emulator on loopback for the tests: PyPI's
# gcp-storage-emulator (installed by scripts/install-test-deps.sh), in memory, serving the
# JSON API without credentials, with the bucket berth-test. It has no XML API, so no
# multipart uploads: tests keep their blobs to one part.
#   scripts/gcs.sh start DIR PORT   starts it (log and pid file in DIR), prints its endpoint
#   scripts/gcs.sh stop DIR         stops it (SIGTERM to the PID in DIR/gcs.pid)
set -euo pipefail
. "$(dirname "$0")/test-server-lib.sh"

case "${1:-}" in
  start)
    dir=$(realpath -m "$2") port=$3
    mkdir -p "$dir"
    command -v gcp-storage-emulator >/dev/null \
      || { echo "gcs.sh: gcp-storage-emulator is not installed (pip install gcp-storage-emulator)" >&2; exit 1; }
    url="http://127.0.0.1:$port"
    gcp-storage-emulator start -H 127.0.0.1 --port "$port" --default-bucket berth-test --in-memory \
      >"$dir/gcs.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/gcs.pid"
    await_ready "$pid" "$dir/gcs.log" "gcs.sh: the GCS emulator at $url" curl -sf -o /dev/null "$url/storage/v1/b/berth-test"
    echo "$url"
    ;;
  stop)
    stop_pid_file "$2/gcs.pid"
    ;;
  *)
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac
