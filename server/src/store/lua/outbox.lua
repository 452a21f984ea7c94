-- Takes one subject's outbox entries that waited their grace (`store::rules::take_stale`):
-- each taken is marked taken now, so a second recovery pass within the grace leaves it.
-- KEYS: out (push id -> entry JSON), outat (push id -> since, wall ms).
-- ARGV: cutoff (now - grace), now. Answers the entries' JSON.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local out = {}
for _, id in ipairs(ids) do
  local entry = redis.call('HGET', KEYS[1], id)
  if entry then
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    table.insert(out, entry)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
