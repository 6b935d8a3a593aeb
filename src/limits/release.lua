-- falgate: free or rename a concurrency slot, and refund a paid call that fal never took.
-- KEYS: 1 inflight zset, 2 quota hash.
-- ARGV: 1 slot to take out, 2 slot to put in its place with the same start ('' = free it),
--       3 quota day to refund ('-1' = none), 4 credits to refund.
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
  redis.call('HSET', KEYS[2], 'credits', string.format('%.0f', math.max(0, credits - tonumber(ARGV[4]))))
end
return 1
