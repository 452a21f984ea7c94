-- Compare-and-set of one subject's profile.
-- KEYS: profile, version, seen. ARGV: expected version, new profile, ttl of the seen ids, ids...
-- Writes only if the version did not move since it was read; answers 1, or 0 on a conflict.
local v = redis.call('GET', KEYS[2]) or '0'
if v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('INCR', KEYS[2])
if #ARGV > 3 then
  redis.call('SADD', KEYS[3], unpack(ARGV, 4))
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return 1
