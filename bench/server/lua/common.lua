-- Shared by the per-protocol wrk scripts (v1.lua, v2.lua).
--
-- Script arguments (after `--` on the wrk command line): <model-name> <bodies-file>.
-- The bodies file holds one JSON request body per line. The requests are built
-- once in init(); request() hands them out in turn, so consecutive requests carry
-- different rows (no server can win by answering one repeated row from a cache)
-- while wrk does no more per request than pick the next prepared string.

function bench_protocol(path_for)
  local requests = {}
  local n, i = 0, 0

  function init(args)
    local name, bodies_file = args[1], args[2]
    if name == nil or bodies_file == nil then
      error("usage: wrk ... -s SCRIPT URL -- <model-name> <bodies-file>")
    end
    wrk.method = "POST"
    wrk.path = path_for(name)
    wrk.headers["Content-Type"] = "application/json"
    for line in io.lines(bodies_file) do
      if #line > 0 then
        n = n + 1
        requests[n] = wrk.format(nil, nil, nil, line)
      end
    end
    if n == 0 then
      error("no request bodies in " .. bodies_file)
    end
    -- Threads start at different places in the list.
    i = (id or 0) % n
  end

  function setup(thread)
    thread:set("id", thread_count or 0)
    thread_count = (thread_count or 0) + 1
  end

  function request()
    i = i % n + 1
    return requests[i]
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
