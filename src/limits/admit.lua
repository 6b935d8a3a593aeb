-- falgate admission: every limit of one caller's call checked, then consumed only if all pass,
-- in one atomic step timed by Redis itself (replica clocks do not matter). Mirrors
-- limits/plan.rs. Every key is the caller's (one hash tag, one Redis Cluster slot); an
-- endpoint's global rate is a second step (rate.lua), compensated by release.lua when it refuses.
-- KEYS: 1 caller rate (GCRA TAT), 2 quota hash, 3 inflight zset.
-- ARGV: 1 rate emission_us, 2 rate burst (0 = none), 3, 4 unused (0),
--       5 quota ('1' = counted), 6 max requests (-1 = none), 7 max credits (-1),
--       8 cost, 9 day offset_us, 10 max inflight (-1 = none), 11 inflight ttl_us, 12 reservation,
--       13 '1' = check only (the precheck before a body is read): same answer, nothing written.
-- Returns {0, rate_left, rate_reset_us, -1, -1, day, requests, credits, day_reset_us, inflight}
--          or {code, detail}: 1 rate (retry_us), 3 requests, 4 credits (reset_us),
--          5 inflight (count).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local DAY = 86400000000
local check_only = ARGV[13] == '1'

local function fmt(n) return string.format('%.0f', n) end

local function gcra(key, emission, burst)
  local tat = tonumber(redis.call('GET', key)) or 0
  if tat < now then tat = now end
  local new = tat + emission
  local limit = emission * burst
  local used = new - now
  if used > limit then return nil, used - limit end
  return new, math.floor((limit - used) / emission), used
end

local day, requests, credits, day_reset = -1, -1, -1, -1
if ARGV[5] == '1' then
  local shifted = now - tonumber(ARGV[9])
  day = math.floor(shifted / DAY)
  day_reset = (day + 1) * DAY - shifted
  local q = redis.call('HMGET', KEYS[2], 'day', 'requests', 'credits')
  requests, credits = 1, tonumber(ARGV[8])
  if tonumber(q[1]) == day then
    requests = (tonumber(q[2]) or 0) + 1
    credits = (tonumber(q[3]) or 0) + credits
  end
  local max_requests, max_credits = tonumber(ARGV[6]), tonumber(ARGV[7])
  if max_requests >= 0 and requests > max_requests then return {3, day_reset} end
  if max_credits >= 0 and credits > max_credits then return {4, day_reset} end
end

local inflight = -1
local max_inflight = tonumber(ARGV[10])
if max_inflight >= 0 then
  local oldest = now - tonumber(ARGV[11])
  if check_only then
    inflight = redis.call('ZCOUNT', KEYS[3], '(' .. fmt(oldest), '+inf')
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', fmt(oldest))
    inflight = redis.call('ZCARD', KEYS[3])
  end
  if inflight >= max_inflight then return {5, inflight} end
  inflight = inflight + 1
end

local rate_tat, rate_left, rate_reset = nil, -1, -1
local burst = tonumber(ARGV[2])
if burst > 0 then
  rate_tat, rate_left, rate_reset = gcra(KEYS[1], tonumber(ARGV[1]), burst)
  if not rate_tat then return {1, rate_left} end
end

if check_only then
  return {0, rate_left, rate_reset, -1, -1, day, requests, credits, day_reset, inflight}
end

-- Every check passed: consume. Each key expires once it no longer matters.
if rate_tat then
  redis.call('SET', KEYS[1], fmt(rate_tat), 'PX', math.ceil((rate_tat - now) / 1000) + 1000)
end
if day >= 0 then
  redis.call('HSET', KEYS[2], 'day', fmt(day), 'requests', fmt(requests), 'credits', fmt(credits))
  redis.call('PEXPIRE', KEYS[2], math.ceil(day_reset / 1000) + 60000)
end
if inflight >= 0 then
  redis.call('ZADD', KEYS[3], fmt(now), ARGV[12])
  redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[11]) / 1000))
end
return {0, rate_left, rate_reset, -1, -1, day, requests, credits, day_reset, inflight}
