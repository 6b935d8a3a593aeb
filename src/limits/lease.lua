-- falgate: the reconciler's lease, so one replica at a time asks fal about jobs in flight.
-- KEYS: 1 the lease key.
-- ARGV: 1 'take' (take it when free, renew it when held by this replica) | 'give' (free it
--       when held by this replica), 2 this replica's id, 3 ttl_ms (take).
-- Returns 1 when this replica holds the lease (take) or gave it up (give), else 0.
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == 'give' then
  if holder == ARGV[2] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if holder == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 1
end
return 0
