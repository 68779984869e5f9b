-- Settle a call's money exactly once: release the hold, charge at most the hold, ledger it.
-- A direct_bill charge also adds to the month's billed total, in the same once-only step;
-- its balance goes negative: what is owed, paid by deposits. ARGV[7] ("<iid> <week>", or
-- empty) is the weekly quota an accepted call counts towards: counted by the second step
-- (count_week.lua, in the inmate's slot), which also copies the result to the call record.
local money, acct, ledger, month, holds, unsynced = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local cid = ARGV[4]
if redis.call('HGET', money, 'settled') == '1' then
  return {0, tonumber(redis.call('HGET', money, 'billed_cents') or '0'),
             tonumber(redis.call('HGET', money, 'billed_minutes') or '0')}
end
local charge, minutes, rate = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local held = tonumber(redis.call('HGET', money, 'held_cents') or '0')
local clamped = charge > held
if clamped then
  -- the bridge ran past the limit the hold paid for: bill the hold (its tax split is unknown)
  charge = held
  if rate > 0 then minutes = math.floor(held / rate) else minutes = 0 end
end
if held > 0 then redis.call('HINCRBY', acct, 'held_cents', -held) end
if charge > 0 then
  local bal = redis.call('HINCRBY', acct, 'balance_cents', -charge)
  if redis.call('HGET', acct, 'type') == 'direct_bill' then
    local m = redis.call('INCRBY', month, charge)
    redis.call('XADD', ledger, '*', 'kind', 'charge', 'amount_cents', charge,
               'balance_cents', bal, 'call', cid, 'minutes', minutes, 'ts', ARGV[5],
               'month_billed_cents', m)
  else
    redis.call('XADD', ledger, '*', 'kind', 'charge', 'amount_cents', charge,
               'balance_cents', bal, 'call', cid, 'minutes', minutes, 'ts', ARGV[5])
  end
end
redis.call('HSET', money, 'settled', '1', 'billed_cents', charge, 'billed_minutes', minutes)
if not clamped then redis.call('HSET', money, 'tax_cents', tonumber(ARGV[6] or '0')) end
if ARGV[7] ~= '' then redis.call('HSET', money, 'week', ARGV[7]) end
redis.call('SREM', holds, cid)
redis.call('HSET', unsynced, cid, redis.call('HINCRBY', money, 'v', 1))
return {1, charge, minutes}
