-- Compare-and-set of one subject's profile.
-- KEYS: profile, version, seen (a sorted set: event id -> first seen).
-- ARGV: expected version, new profile, ttl of the seen ids, now, cap of the seen ids, ids...
-- Writes only if the version did not move since it was read; answers 1, or 0 on a conflict.
-- The seen ids are forgotten as in the embedded stores (`store::rules`): expired ones, then the
-- oldest beyond the cap; the whole set expires `ttl` after the last write.
local v = redis.call('GET', KEYS[2]) or '0'
if v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
if #ARGV > 5 then
  local now, ttl, cap = tonumber(ARGV[4]), tonumber(ARGV[3]), tonumber(ARGV[5])
  for i = 6, #ARGV do
    redis.call('ZADD', KEYS[3], now, ARGV[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ttl)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -cap - 1)
  redis.call('EXPIRE', KEYS[3], ttl)
end
return 1
