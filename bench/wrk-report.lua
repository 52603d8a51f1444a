-- wrk script for bench/run.sh: prints one machine-readable line with the
-- request count, duration and latency percentiles (microseconds).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f," ..
    "\"mean_us\":%.1f,\"max_us\":%d,\"status_err\":%d,\"connect_err\":%d,\"read_err\":%d," ..
    "\"write_err\":%d,\"timeout_err\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
