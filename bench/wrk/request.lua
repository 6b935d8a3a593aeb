-- One wrk request shape per scenario, read from the environment so every target runs the
-- same script: BENCH_METHOD (GET|POST), BENCH_PATH, BENCH_TOKEN (bearer, optional),
-- BENCH_TARGET_URL (x-fal-target-url, optional), BENCH_BODY_FILE (POST body, optional).
-- `done` prints one machine-readable line that bench/run parses.

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local token = os.getenv("BENCH_TOKEN") or ""
local target = os.getenv("BENCH_TARGET_URL") or ""
local body_file = os.getenv("BENCH_BODY_FILE") or ""

local headers = { ["accept"] = "application/json" }
if token ~= "" then headers["authorization"] = "Bearer " .. token end
if target ~= "" then headers["x-fal-target-url"] = target end

local body = nil
if body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  body = f:read("*a")
  f:close()
  headers["content-type"] = "application/json"
end

local req = nil
function init(args)
  req = wrk.format(method, path, headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
