#!/usr/bin/env bash
# Runs the official OCI distribution-spec conformance suite (v1.1.1, all four workflows,
# automatic cross-mount on: Berth mounts a known blob when `from` is omitted) against a
# fresh Berth. Fails on any failed spec. The suite lives in ../shared/tools/oci-conformance
# (not part of this repository); where it is absent this step says so and is skipped.
#   BERTH_BIN=target/release/berth bash scripts/conformance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
suite="$(cd .. && pwd)/shared/tools/oci-conformance/run.sh"
if [ ! -x "$suite" ]; then
  echo "conformance suite not found at $suite: skipping the conformance step"
  exit 0
fi
bin="${BERTH_BIN:-target/release/berth}"
work=$(mktemp -d /tmp/berth-conformance.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REGISTRY_HTTP_ADDR="127.0.0.1:$port" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$work/root" \
  REGISTRY_STORAGE_DELETE_ENABLED=true "$bin" serve >"$work/berth.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/berth.log"; exit 1; }
  sleep 0.1
done
if ! OCI_AUTOMATIC_CROSSMOUNT=1 OCI_REPORT_DIR="$work/report" "$suite" "http://127.0.0.1:$port"; then
  tail -n 200 "$work/report/output.txt"
  exit 1
fi
