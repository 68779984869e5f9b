-- --- Lua: every money movement is one atomic script -------------------------
-- 
-- What an account can still spend (a Lua function shared by the hold scripts).
-- A direct_bill account has no balance to spend: what it can cover is its monthly
-- limit minus this month's billed total (month key) minus what its calls hold.
-- VAILABLE = """
-- cal function available(acct, month)
-- local a = redis.call('HMGET', acct, 'type', 'balance_cents', 'held_cents', 'monthly_limit_cents')
-- if a[1] == 'direct_bill' then
--   return tonumber(a[4] or '0') - tonumber(redis.call('GET', month) or '0') - tonumber(a[3] or '0')
-- end
-- return tonumber(a[2] or '0') - tonumber(a[3] or '0')
-- d
-- "
-- 
-- Hold funds for a call before it rings. Fails (0) if the account cannot cover it,
-- refuses (-3) an account flagged expired (expired_ms, cleared by a deposit).
-- ARGV[3], when not empty, is how many whole minutes the hold pays for.
local acct, call, month = KEYS[1], KEYS[2], KEYS[3]
local amount = tonumber(ARGV[1])
if redis.call('EXISTS', acct) == 0 then return -1 end
if redis.call('HEXISTS', call, 'held_cents') == 1 then return -2 end
if redis.call('HEXISTS', acct, 'expired_ms') == 1 then return -3 end  -- flagged expired: no calls
if available(acct, month) < amount then return 0 end
redis.call('HINCRBY', acct, 'held_cents', amount)
redis.call('HSET', call, 'held_cents', amount, 'account', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', call, 'paid_minutes', ARGV[3]) end
return 1
