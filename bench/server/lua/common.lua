-- Shared by the per-protocol wrk scripts (v1.lua, v2.lua).
--
-- Every request is the same POST with a JSON body read once from a file, so wrk
-- keeps its fast static-request path (no Lua runs per request or per response).
-- Script arguments (after `--` on the wrk command line): <model-name> <body-file>.

function bench_protocol(path_for)
  function init(args)
    local name, body_file = args[1], args[2]
    if name == nil or body_file == nil then
      error("usage: wrk ... -s SCRIPT URL -- <model-name> <body-file>")
    end
    local f = assert(io.open(body_file, "rb"))
    wrk.body = f:read("*a")
    f:close()
    wrk.method = "POST"
    wrk.path = path_for(name)
    wrk.headers["Content-Type"] = "application/json"
  end
end

-- One machine-readable line for the harness; latencies in microseconds.
-- errors.status is wrk's count of responses with an HTTP status >= 400.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, '
      .. '"p50": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
