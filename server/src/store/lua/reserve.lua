-- Reserves a push for a subject: not a duplicate, within the caps of its lane, and, when a job
-- comes with it, its outbox entry, all in one step. The rules come from `store::rules` (the
-- embedded stores run the same ones in Rust).
-- KEYS: sent (normal lane), crit (critical lane), dk (de-duplication key -> last reserved at,
--       for keys that are not a push id), out (outbox: push id -> entry JSON),
--       outat (outbox: push id -> since, wall ms).
-- ARGV: id, now, keep seconds, lane (0 normal | 1 critical), de-duplication key, its horizon
--       seconds, outbox entry JSON ('' for none), its since, then per rule:
--       window seconds, limit, the skip reason when reached.
-- A duplicate: the push id reserved in either lane, or the key reserved within the horizon
-- (a key equal to the id is found in the lanes, as every first-version entry is).
-- Answers 'ok' or the skip reason.
local id, now, keep, key, horizon = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5], tonumber(ARGV[6])
if redis.call('ZSCORE', KEYS[1], id) or redis.call('ZSCORE', KEYS[2], id) then return 'duplicate' end
for i = 1, 3 do
  local at = redis.call('ZSCORE', KEYS[i], key)
  if at and tonumber(at) > now - horizon then return 'duplicate' end
end
for i = 1, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - keep)
end
local lane = KEYS[1]
if ARGV[4] == '1' then lane = KEYS[2] end
for i = 9, #ARGV, 3 do
  local window = tonumber(ARGV[i])
  if redis.call('ZCOUNT', lane, now - window + 1, '+inf') >= tonumber(ARGV[i + 1]) then return ARGV[i + 2] end
end
redis.call('ZADD', lane, now, id)
redis.call('EXPIRE', lane, keep)
if key ~= id then
  redis.call('ZADD', KEYS[3], now, key)
  redis.call('EXPIRE', KEYS[3], keep)
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[4], id, ARGV[7])
  redis.call('ZADD', KEYS[5], ARGV[8], id)
end
return 'ok'
