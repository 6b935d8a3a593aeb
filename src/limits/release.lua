-- falgate: free or rename a concurrency slot, refund a paid call that fal never took, and give
-- back a call's place in its rate (the compensation of an admission whose second step, the
-- endpoint's rate, refused it). Every key is the caller's: one hash tag.
-- KEYS: 1 inflight zset, 2 quota hash, 3 (optional) the caller's rate of the call's class.
-- ARGV: 1 slot to take out, 2 slot to put in its place with the same start ('' = free it),
--       3 quota day to refund ('-1' = none), 4 credits to refund,
--       5 (with KEYS[3]) the rate's emission_us to give back.
local function fmt(n) return string.format('%.0f', n) end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  redis.call('ZREM', KEYS[1], ARGV[1])
  if ARGV[2] ~= '' then redis.call('ZADD', KEYS[1], score, ARGV[2]) end
end
if ARGV[3] ~= '-1' and redis.call('HGET', KEYS[2], 'day') == ARGV[3] then
  if tonumber(redis.call('HGET', KEYS[2], 'requests') or '0') > 0 then
    redis.call('HINCRBY', KEYS[2], 'requests', -1)
  end
  local credits = tonumber(redis.call('HGET', KEYS[2], 'credits') or '0')
  redis.call('HSET', KEYS[2], 'credits', fmt(math.max(0, credits - tonumber(ARGV[4]))))
end
if KEYS[3] then
  -- GCRA is additive: the TAT moved by one emission per call, so moving it back is exact.
  local tat = tonumber(redis.call('GET', KEYS[3]))
  if tat then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local back = tat - tonumber(ARGV[5])
    if back <= now then
      redis.call('DEL', KEYS[3])
    else
      redis.call('SET', KEYS[3], fmt(back), 'PX', math.ceil((back - now) / 1000) + 1000)
    end
  end
end
return 1
