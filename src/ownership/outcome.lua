-- The end of one request in its caller's index (`ownership/redis.rs`): the first end learned
-- is kept. KEYS[1] the caller's info hash; ARGV[1] request id, ARGV[2] end JSON.
-- Returns the request's summary JSON when this end is the first, else false.
local summary = redis.call('HGET', KEYS[1], ARGV[1])
if not summary then
  return false
end
if redis.call('HSETNX', KEYS[1], ARGV[1] .. ':end', ARGV[2]) == 0 then
  return false
end
return summary
