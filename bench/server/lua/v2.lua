-- Open Inference Protocol (V2): POST /v2/models/<name>/infer,
-- body {"inputs": [{"name": ..., "shape": [rows, cols], "datatype": "FP64", "data": [...]}]}.
-- wrk -s v2.lua http://127.0.0.1:PORT -- <model-name> <bodies-file>
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

bench_protocol(function(name)
  return "/v2/models/" .. name .. "/infer"
end)
