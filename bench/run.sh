#!/usr/bin/env bash
# Berth vs Distribution benchmark. See bench/README.md.
#   bench/run.sh            full run, writes docs/BENCHMARKS.md (~15-20 min)
#   bench/run.sh --smoke    tiny sizes, < 2 min, writes the table to a temp file; exits non-zero on any failed step
#   bench/run.sh --out F    write the table to F instead
#   bench/run.sh --only S   run only the comma-separated steps S of: limits,throughput,rss,tags,repos,abuse,auth
# Env: BERTH_BIN (default target/release/berth), DISTRIBUTION_BIN (default /usr/bin/docker-registry),
#      BENCH_TMPDIR (parent of the work/storage dir, default $TMPDIR or /tmp), BENCH_KEEP=1 keeps the work dir.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
command="bench/run.sh${*:+ $*}"
[ -n "${BERTH_BIN:-}" ] && command="BERTH_BIN=$BERTH_BIN $command"

smoke=0
out=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out="${2:?--out needs a path}"; shift ;;
    --only) only="${2:?--only needs a list of steps}"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

berth_bin="${BERTH_BIN:-$repo/target/release/berth}"
dist_bin="${DISTRIBUTION_BIN:-/usr/bin/docker-registry}"
if [ ! -x "$berth_bin" ]; then
  echo "berth binary not found at $berth_bin (build it, or set BERTH_BIN=/usr/bin/docker-registry to test the harness)" >&2
  exit 2
fi
for tool in "$dist_bin" curl wrk ab skopeo iperf3 openssl fio python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool (see scripts/install-test-deps.sh)" >&2; exit 2; }
done

work="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/berth-bench.XXXXXX")"
: > "$work/pids"
if [ -z "$out" ]; then
  if [ "$smoke" = 1 ]; then out="$(mktemp "${TMPDIR:-/tmp}/berth-bench-smoke.XXXXXX.md")"; else out="$repo/docs/BENCHMARKS.md"; fi
fi
mkdir -p "$(dirname "$out")"

py_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$py_pid" ] && kill -0 "$py_pid" 2>/dev/null; then
    kill -TERM "$py_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$py_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$py_pid" 2>/dev/null || true
  fi
  # Anything the driver started and did not reap (servers, iperf3, curl, ...), by PID.
  if [ -s "$work/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done < "$work/pids"
    sleep 0.5
    while read -r pid; do
      [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    done < "$work/pids"
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fs_info="$(df -h --output=source,fstype "$work" | tail -1 | awk '{print $1" "$2}')"
args=(--work "$work" --out "$out" --command "$command" --berth-bin "$berth_bin"
      --distribution-bin "$dist_bin" --fs-info "$fs_info")
[ "$smoke" = 1 ] && args+=(--smoke)
[ -n "$only" ] && args+=(--only "$only")

echo "work dir: $work ($fs_info); report: $out" >&2
python3 "$here/bench.py" "${args[@]}" &
py_pid=$!
rc=0
wait "$py_pid" || rc=$?
py_pid=""
exit "$rc"
