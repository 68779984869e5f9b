-- The call record (ics.records mark_ended), one key: the first end wins; a cut never after it.
-- No record, no end: a hang-up never creates one (a record holding only ended_ms would then be
-- settled as a call nobody placed, e.g. by the listener's sweep of a record gone meanwhile).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], 'ended_ms', ARGV[1]) == 1 then
  local cut = tonumber(redis.call('HGET', KEYS[1], 'cut_ms') or '')
  if cut and cut > tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'cut_ms', ARGV[1]) end
end
