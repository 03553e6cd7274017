-- KServe V1 protocol: POST /v1/models/<name>:predict, body {"instances": [[...], ...]}.
-- wrk -s v1.lua http://127.0.0.1:PORT -- <model-name> <bodies-file>
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

bench_protocol(function(name)
  return "/v1/models/" .. name .. ":predict"
end)
