-- Bulk import of a profile built offline, only where the subject has none yet and was never
-- erased (an erasure is final for imports; live events may start a new profile).
-- KEYS: profile, version, erased. ARGV: profile. Answers 1 when stored.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCR', KEYS[2])
return 1
