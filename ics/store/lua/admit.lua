-- Admission control (ics.capacity): all keys carry the {listener} tag (one slot).
-- KEYS[1] the live count (listener), KEYS[2] the calls setting up (zset member -> admitted ms)
-- ARGV[1] now ms, ARGV[2] max_calls, ARGV[3] member to admit ('' = only look), ARGV[4] oldest kept
-- Returns {decision, live, setting_up}: decision -1 no count (the listener is away), 0 full, 1 room
-- (and the member admitted).
local live = redis.call('GET', KEYS[1])
if not live then return {-1, 0, 0} end
live = tonumber(live)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
local member = ARGV[3]
local pending = redis.call('ZCARD', KEYS[2])
if member ~= '' and redis.call('ZSCORE', KEYS[2], member) then pending = pending - 1 end
if live + pending >= tonumber(ARGV[2]) then return {0, live, pending} end
if member ~= '' then redis.call('ZADD', KEYS[2], ARGV[1], member) end
return {1, live, pending}
