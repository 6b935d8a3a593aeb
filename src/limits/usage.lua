-- falgate usage: what one caller has spent, read in one atomic step timed by Redis itself, for
-- `GET /api/fal/usage`. Writes nothing. The arithmetic (GCRA, quota day) is done by the caller
-- with the same Rust functions the in-process store uses (limits/plan.rs).
-- KEYS: 1-5 caller rates (GCRA TAT) of submit, poll, cancel, upload, token; 6 quota hash;
--       7 inflight zset (scored by start, us); 8 streams, 9 relays (slot zsets scored by expiry, ms).
-- ARGV: 1 inflight ttl_us.
-- Returns {now_us, tat x5, day (-1 = none), requests, credits, inflight, streams, relays}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function fmt(n) return string.format('%.0f', n) end

local reply = {now}
for i = 1, 5 do
  reply[#reply + 1] = tonumber(redis.call('GET', KEYS[i])) or 0
end
local q = redis.call('HMGET', KEYS[6], 'day', 'requests', 'credits')
reply[#reply + 1] = tonumber(q[1]) or -1
reply[#reply + 1] = tonumber(q[2]) or 0
reply[#reply + 1] = tonumber(q[3]) or 0
local oldest = now - tonumber(ARGV[1])
reply[#reply + 1] = redis.call('ZCOUNT', KEYS[7], '(' .. fmt(oldest), '+inf')
reply[#reply + 1] = redis.call('ZCOUNT', KEYS[8], '(' .. fmt(now_ms), '+inf')
reply[#reply + 1] = redis.call('ZCOUNT', KEYS[9], '(' .. fmt(now_ms), '+inf')
return reply
