-- A courtesy call never bridged does not use the number's free call up: only call_id's own
-- claim (ARGV[1]) is removed.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
