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
-- XTEND = _AVAILABLE + """
-- cal acct, call, month = KEYS[1], KEYS[2], KEYS[3]
-- cal amount = tonumber(ARGV[1])
--  redis.call('EXISTS', acct) == 0 then return -1 end
--  redis.call('HGET', call, 'settled') == '1' then return -3 end
--  redis.call('HGET', call, 'paid_minutes') ~= ARGV[2] then return -2 end
--  available(acct, month) < amount then return 0 end
-- dis.call('HINCRBY', acct, 'held_cents', amount)
-- dis.call('HINCRBY', call, 'held_cents', amount)
-- dis.call('HINCRBY', call, 'paid_minutes', 1)
-- turn 1
-- "
-- 
-- Settle a call exactly once: release the hold, charge at most the hold, ledger it.
-- A direct_bill charge also adds to the month's billed total (KEYS[4]), in the same
-- once-only step; its balance goes negative: what is owed, paid by deposits.
-- ETTLE = """
-- cal call, acct, ledger, month = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
--  redis.call('HGET', call, 'settled') == '1' then
-- return {0, tonumber(redis.call('HGET', call, 'billed_cents') or '0'),
--            tonumber(redis.call('HGET', call, 'billed_minutes') or '0')}
-- d
-- cal charge, minutes, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
-- cal held = tonumber(redis.call('HGET', call, 'held_cents') or '0')
-- cal clamped = charge > held
--  clamped then
-- -- the bridge ran past the limit the hold paid for: bill the hold (its tax split is unknown)
-- charge = held
-- if rate > 0 then minutes = math.floor(held / rate) else minutes = 0 end
-- d
--  held > 0 then redis.call('HINCRBY', acct, 'held_cents', -held) end
--  charge > 0 then
-- local bal = redis.call('HINCRBY', acct, 'balance_cents', -charge)
-- if redis.call('HGET', acct, 'type') == 'direct_bill' then
--   local m = redis.call('INCRBY', month, charge)
--   redis.call('XADD', ledger, '*', 'kind', 'charge', 'amount_cents', charge,
--              'balance_cents', bal, 'call', ARGV[4], 'minutes', minutes, 'ts', ARGV[5],
--              'month_billed_cents', m)
-- else
--   redis.call('XADD', ledger, '*', 'kind', 'charge', 'amount_cents', charge,
--              'balance_cents', bal, 'call', ARGV[4], 'minutes', minutes, 'ts', ARGV[5])
-- end
-- d
-- dis.call('HSET', call, 'settled', '1', 'billed_cents', charge, 'billed_minutes', minutes)
--  not clamped then redis.call('HSET', call, 'tax_cents', tonumber(ARGV[6] or '0')) end
--  KEYS[5] then
-- -- an accepted call counts towards the inmate's weekly quota in the same once-only step
-- redis.call('HINCRBY', KEYS[5], 'calls', 1)
-- redis.call('HINCRBY', KEYS[5], 'minutes', minutes)
-- redis.call('EXPIRE', KEYS[5], 5184000)
-- d
-- turn {1, charge, minutes}
-- "
-- 
-- Deposits, refunds and credits: move the balance and write the ledger together.
-- DJUST = """
-- cal acct, ledger = KEYS[1], KEYS[2]
-- cal kind, amount = ARGV[1], tonumber(ARGV[2])
--  redis.call('EXISTS', acct) == 0 then return {-1, 0} end
-- cal sign = 1
--  kind == 'refund' then sign = -1 end
--  sign < 0 then
-- local bal = tonumber(redis.call('HGET', acct, 'balance_cents') or '0')
-- local held = tonumber(redis.call('HGET', acct, 'held_cents') or '0')
-- if bal - held < amount then return {0, bal - held} end
-- d
-- cal bal = redis.call('HINCRBY', acct, 'balance_cents', sign * amount)
--  kind == 'deposit' then redis.call('HDEL', acct, 'expired_ms') end  -- a deposit reactivates
-- dis.call('XADD', ledger, '*', 'kind', kind, 'amount_cents', amount,
--          'balance_cents', bal, 'call', '', 'note', ARGV[3], 'ts', ARGV[4])
-- turn {1, bal}
-- "
-- 
-- Refund everything available (balance - held), decided inside the script so no call's hold is touched.
-- EFUND_ALL = """
-- cal acct, ledger = KEYS[1], KEYS[2]
--  redis.call('EXISTS', acct) == 0 then return {-1, 0} end
-- cal bal = tonumber(redis.call('HGET', acct, 'balance_cents') or '0')
-- cal held = tonumber(redis.call('HGET', acct, 'held_cents') or '0')
-- cal amount = bal - held
--  amount <= 0 then return {0, bal} end
-- l = redis.call('HINCRBY', acct, 'balance_cents', -amount)
-- dis.call('XADD', ledger, '*', 'kind', 'refund', 'amount_cents', amount,
--          'balance_cents', bal, 'call', '', 'note', ARGV[1], 'ts', ARGV[2])
-- turn {amount, bal}
-- "
-- 
-- Flag an idle account expired (FCC 64.6130): no money moves. Last activity is the newest of
-- creation, the newest deposit and the newest charge (a paid call). Returns {code, last_activity_ms}:
-- 1 flagged now, 2 already expired, 0 still active, 3 a call holds funds, -1 no account, -2 other type.
local acct, ledger = KEYS[1], KEYS[2]
local now, idle = tonumber(ARGV[1]), tonumber(ARGV[2])
local a = redis.call('HMGET', acct, 'type', 'created_ms', 'held_cents', 'expired_ms')
if not a[1] then return {-1, 0} end
if a[1] ~= ARGV[3] then return {-2, 0} end
local last = tonumber(a[2] or '0') or 0
local hi = '+'
local done = false
while not done do
  local page = redis.call('XREVRANGE', ledger, hi, '-', 'COUNT', 100)
  if #page == 0 then break end
  for _, e in ipairs(page) do
    local kind, ts
    for i = 1, #e[2], 2 do
      if e[2][i] == 'kind' then kind = e[2][i + 1] elseif e[2][i] == 'ts' then ts = e[2][i + 1] end
    end
    if kind == 'charge' or kind == 'deposit' then
      local t = tonumber(ts or '') or tonumber(string.match(e[1], '^(%d+)'))
      if t > last then last = t end
      done = true
      break
    end
    hi = '(' .. e[1]
  end
end
if a[4] then return {2, last} end
if tonumber(a[3] or '0') > 0 then return {3, last} end
if now - last < idle then return {0, last} end
redis.call('HSET', acct, 'expired_ms', now, 'last_activity_ms', last)
return {1, last}
