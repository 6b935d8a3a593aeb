-- A caller's index of recent requests (`ownership/redis.rs`): one caller's keys, one hash tag.
-- KEYS[1] sorted set: request id scored by its submit time (ms)
-- KEYS[2] hash: request id -> summary JSON, "<request id>:end" -> its end JSON
-- ARGV[1] request id, ARGV[2] submit time ms, ARGV[3] summary JSON, ARGV[4] bound per caller,
-- ARGV[5] ttl ms (the ownership record's), ARGV[6] now ms
local ids, info = KEYS[1], KEYS[2]
local id, at, bound, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZADD', ids, at, id)
redis.call('HSET', info, id, ARGV[3])
redis.call('HDEL', info, id .. ':end')
local function drop(list)
  for _, old in ipairs(list) do
    redis.call('ZREM', ids, old)
    redis.call('HDEL', info, old, old .. ':end')
  end
end
drop(redis.call('ZRANGEBYSCORE', ids, '-inf', now - ttl))
local over = redis.call('ZCARD', ids) - bound
if over > 0 then
  drop(redis.call('ZRANGE', ids, 0, over - 1))
end
redis.call('PEXPIRE', ids, ttl)
redis.call('PEXPIRE', info, ttl)
return 1
