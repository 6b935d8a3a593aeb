-- falgate: one caller's open slots of one kind (status streams or buffered relays), shared by
-- every replica. A sorted set of slot ids scored by expiry (ms, Redis TIME): a live slot
-- refreshes its score (re-adding it if it lapsed during an outage), so the slots of a replica
-- that died lapse by themselves.
-- KEYS: 1 the caller's slot zset.
-- ARGV: 1 'open' | 'refresh' | 'close', 2 slot id, 3 max open (open), 4 ttl_ms,
--       5 now in ms ('' = Redis TIME; tests pass a time to expire slots without waiting).
-- Returns {0, open slots} when opened (or refreshed / closed), {1, open slots} when full.
local now
if ARGV[5] ~= '' then
  now = tonumber(ARGV[5])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl = tonumber(ARGV[4])
local function fmt(n) return string.format('%.0f', n) end

if ARGV[1] == 'close' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  return {0, redis.call('ZCARD', KEYS[1])}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
if ARGV[1] == 'refresh' then
  redis.call('ZADD', KEYS[1], fmt(now + ttl), ARGV[2])
else
  local open = redis.call('ZCARD', KEYS[1])
  if open >= tonumber(ARGV[3]) then return {1, open} end
  redis.call('ZADD', KEYS[1], fmt(now + ttl), ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return {0, redis.call('ZCARD', KEYS[1])}
