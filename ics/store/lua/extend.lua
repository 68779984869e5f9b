-- Hold one more minute for a live call, before that minute starts. ARGV[2] is the
-- number of paid minutes the caller saw: a second listener (or a retry after a
-- restart) that saw the same number finds it changed (-2) and holds nothing twice.
local acct, money, month, unsynced = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local amount, cid = tonumber(ARGV[1]), ARGV[3]
if redis.call('EXISTS', acct) == 0 then return -1 end
if redis.call('HGET', money, 'settled') == '1' then return -3 end
if redis.call('HGET', money, 'paid_minutes') ~= ARGV[2] then return -2 end
if available(acct, month) < amount then return 0 end
redis.call('HINCRBY', acct, 'held_cents', amount)
redis.call('HINCRBY', money, 'held_cents', amount)
redis.call('HINCRBY', money, 'paid_minutes', 1)
redis.call('HSET', unsynced, cid, redis.call('HINCRBY', money, 'v', 1))
return 1
