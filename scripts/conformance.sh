#!/usr/bin/env bash
# Runs the official OCI distribution-spec conformance suite (v1.1.1, all four workflows,
# automatic cross-mount on: Berth mounts a known blob when `from` is omitted) against a
# fresh Berth on the filesystem and, with BERTH_TEST_S3 set (an S3 endpoint with the bucket
# berth-test, as scripts/s3.sh starts it), again with blobs in S3 and downloads redirected
# to presigned URLs, and metadata in a new database of BERTH_TEST_POSTGRES's server if that
# is set (the cluster's engines). Fails on any failed spec. The suite lives in
# ../shared/tools/oci-conformance (not part of this repository); where it is absent this
# step says so and is skipped.
#   BERTH_BIN=target/release/berth [BERTH_TEST_S3=http://127.0.0.1:55490]
#     [BERTH_TEST_POSTGRES=postgres://berth@127.0.0.1:55439/postgres] bash scripts/conformance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
suite="$(cd .. && pwd)/shared/tools/oci-conformance/run.sh"
if [ ! -x "$suite" ]; then
  echo "conformance suite not found at $suite: skipping the conformance step"
  exit 0
fi
bin="${BERTH_BIN:-target/release/berth}"
work=$(mktemp -d /tmp/berth-conformance.XXXXXX)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

# run NAME [VAR=VALUE...]: one fresh Berth with the extra settings, the whole suite against it.
run() {
  local name=$1
  shift
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/$name"
  env REGISTRY_HTTP_ADDR="127.0.0.1:$port" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$work/$name/root" \
    REGISTRY_STORAGE_DELETE_ENABLED=true "$@" "$bin" serve >"$work/$name/berth.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/$name/berth.log"; exit 1; }
    sleep 0.1
  done
  echo "conformance: Berth on $name"
  if ! OCI_AUTOMATIC_CROSSMOUNT=1 OCI_REPORT_DIR="$work/$name/report" "$suite" "http://127.0.0.1:$port"; then
    tail -n 200 "$work/$name/report/output.txt"
    exit 1
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
}

run filesystem
if [ -n "${BERTH_TEST_S3:-}" ]; then
  database=()
  if [ -n "${BERTH_TEST_POSTGRES:-}" ]; then
    db="conformance_$$"
    psql "$BERTH_TEST_POSTGRES" -qXc "CREATE DATABASE $db"
    database=(REGISTRY_BERTH_DATABASE_URL="${BERTH_TEST_POSTGRES%/*}/$db")
  fi
  run s3 "${database[@]}" REGISTRY_STORAGE=s3 REGISTRY_STORAGE_S3_BUCKET=berth-test REGISTRY_STORAGE_S3_REGION=us-east-1 \
    REGISTRY_STORAGE_S3_REGIONENDPOINT="$BERTH_TEST_S3" REGISTRY_STORAGE_S3_ACCESSKEY=conformance \
    REGISTRY_STORAGE_S3_SECRETKEY=conformance REGISTRY_STORAGE_S3_ROOTDIRECTORY="/conformance-$$"
fi
