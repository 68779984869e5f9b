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
-- ESERVE = _AVAILABLE + """
-- cal acct, call, month = KEYS[1], KEYS[2], KEYS[3]
-- cal amount = tonumber(ARGV[1])
--  redis.call('EXISTS', acct) == 0 then return -1 end
--  redis.call('HEXISTS', call, 'held_cents') == 1 then return -2 end
--  redis.call('HEXISTS', acct, 'expired_ms') == 1 then return -3 end  -- flagged expired: no calls
--  available(acct, month) < amount then return 0 end
-- dis.call('HINCRBY', acct, 'held_cents', amount)
-- dis.call('HSET', call, 'held_cents', amount, 'account', ARGV[2])
--  ARGV[3] ~= '' then redis.call('HSET', call, 'paid_minutes', ARGV[3]) end
-- turn 1
-- "
-- 
-- Hold one more minute for a live call, before that minute starts. ARGV[2] is the
-- number of paid minutes the caller saw: a second listener (or a retry after a
-- restart) that saw the same number finds it changed (-2) and holds nothing twice.
local acct, call, month = KEYS[1], KEYS[2], KEYS[3]
local amount = tonumber(ARGV[1])
if redis.call('EXISTS', acct) == 0 then return -1 end
if redis.call('HGET', call, 'settled') == '1' then return -3 end
if redis.call('HGET', call, 'paid_minutes') ~= ARGV[2] then return -2 end
if available(acct, month) < amount then return 0 end
redis.call('HINCRBY', acct, 'held_cents', amount)
redis.call('HINCRBY', call, 'held_cents', amount)
redis.call('HINCRBY', call, 'paid_minutes', 1)
return 1
