-- Moves a dead letter of one partition back to its ready stream, atomically: the entries are
-- deleted and the job added in one step, so a job is never lost nor queued twice (two operators
-- redelivering at once: only the first deletes anything, only it adds the job).
-- KEYS: dead, ready (one partition). ARGV: the job to queue ('' to only delete copies), then
-- the dead-letter entry ids. Answers how many entries were deleted (0: taken already).
local n = redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
if n > 0 and ARGV[1] ~= '' then redis.call('XADD', KEYS[2], '*', 'job', ARGV[1]) end
return n
