-- What an account can still spend (a Lua function shared by the hold scripts).
-- A direct_bill account has no balance to spend: what it can cover is its monthly
-- limit minus this month's billed total (month key) minus what its calls hold.
local function available(acct, month)
  local a = redis.call('HMGET', acct, 'type', 'balance_cents', 'held_cents', 'monthly_limit_cents')
  if a[1] == 'direct_bill' then
    return tonumber(a[4] or '0') - tonumber(redis.call('GET', month) or '0') - tonumber(a[3] or '0')
  end
  return tonumber(a[2] or '0') - tonumber(a[3] or '0')
end
