-- Second step done: forget the pending copy, unless the call's money changed again meanwhile
-- (its version ARGV[2] moved on): then the next copy clears it.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
