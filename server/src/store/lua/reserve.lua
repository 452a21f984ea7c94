-- Reserves a push id for a subject: not reserved before in either lane, within the caps of
-- its lane. The caps come as rules from `store::rules` (the memory store runs the same rules).
-- KEYS: sent (normal lane), crit (critical lane).
-- ARGV: id, now, keep seconds, lane (0 normal | 1 critical), then per rule:
--       window seconds, limit, the skip reason when reached.
-- Answers 'ok' or the skip reason.
local now = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 'duplicate' end
local keep = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - keep)
local key = KEYS[1]
if ARGV[4] == '1' then key = KEYS[2] end
for i = 5, #ARGV, 3 do
  local window = tonumber(ARGV[i])
  if redis.call('ZCOUNT', key, now - window + 1, '+inf') >= tonumber(ARGV[i + 1]) then return ARGV[i + 2] end
end
redis.call('ZADD', key, now, ARGV[1])
redis.call('EXPIRE', key, keep)
return 'ok'
