-- A lease: taken when free, renewed by its holder, refused to anyone else until it expires.
-- KEYS[1] the lease; ARGV[1] the caller; ARGV[2] its time to live in milliseconds.
-- Returns 1 when the caller holds the lease after the call, 0 when another does.
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
