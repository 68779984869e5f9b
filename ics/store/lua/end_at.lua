-- The call record (ics.records mark_ended), one key: the first end wins; a cut never after it.
if redis.call('HSETNX', KEYS[1], 'ended_ms', ARGV[1]) == 1 then
  local cut = tonumber(redis.call('HGET', KEYS[1], 'cut_ms') or '')
  if cut and cut > tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'cut_ms', ARGV[1]) end
end
