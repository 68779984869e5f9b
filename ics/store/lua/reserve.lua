-- Hold funds for a call before it rings. Fails (0) if the account cannot cover it,
-- refuses (-3) an account flagged expired (expired_ms, cleared by a deposit), -2 if the
-- call already holds funds. ARGV[3], when not empty, is how many whole minutes the hold
-- pays for. All keys are the account's slot ({a:<aid>}); the call record gets a copy
-- afterwards (the second step: Money.sync_call).
local acct, money, month, holds, unsynced = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local amount, cid = tonumber(ARGV[1]), ARGV[4]
if redis.call('EXISTS', acct) == 0 then return -1 end
if redis.call('HEXISTS', money, 'held_cents') == 1 then return -2 end
if redis.call('HEXISTS', acct, 'expired_ms') == 1 then return -3 end  -- flagged expired: no calls
if available(acct, month) < amount then return 0 end
redis.call('HINCRBY', acct, 'held_cents', amount)
redis.call('HSET', money, 'held_cents', amount, 'account', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', money, 'paid_minutes', ARGV[3]) end
redis.call('SADD', holds, cid)
redis.call('HSET', unsynced, cid, redis.call('HINCRBY', money, 'v', 1))
return 1
