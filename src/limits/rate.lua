-- falgate: one GCRA rate on its own key (an endpoint's global rate, a client IP's rate), a step
-- of its own beside the caller's admission (admit.lua) so each script stays in one hash tag
-- (one Redis Cluster slot). Timed by Redis itself. Mirrors limits/plan.rs `gcra`.
-- KEYS: 1 the rate's TAT.
-- ARGV: 1 emission_us, 2 burst, 3 '1' = check only (nothing written).
-- Returns {0, left, reset_us} when the call fits (and took its place unless check only), else
-- {1, retry_us}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
if tat < now then tat = now end
local new = tat + emission
local limit = emission * burst
local used = new - now
if used > limit then return {1, used - limit} end
if ARGV[3] ~= '1' then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
end
return {0, math.floor((limit - used) / emission), used}
