-- Moves due jobs of one partition from the delayed set to the ready stream, atomically.
-- KEYS: delayed, ready. ARGV: now (Unix ms), at most this many. Answers how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, j in ipairs(due) do redis.call('XADD', KEYS[2], '*', 'job', j) end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
