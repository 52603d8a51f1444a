# Sourced by the scripts that start throwaway servers for the tests (s3.sh, azurite.sh,
# oidc-issuer.sh).
#
# await_ready PID LOG WHAT CHECK...: runs the command CHECK... every 0.1 s until it succeeds
# (bounded: 30 s). Gives up early when PID has exited (a taken port, a bad option); on
# failure stops PID, prints LOG and fails.
await_ready() {
  local pid=$1 log=$2 what=$3
  shift 3
  for _ in $(seq 300); do
    "$@" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  echo "$what did not answer" >&2
  cat "$log" >&2
  return 1
}

# stop_pid_file FILE: SIGTERM to the PID in FILE (if any), waits up to 10 s for it to end,
# removes FILE.
stop_pid_file() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$file"
}
