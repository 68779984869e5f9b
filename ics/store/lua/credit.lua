-- Credit a settled call in full, once, when the system itself dropped it early (reason
-- system_error, bridged at most ARGV[1] ms). The reason and times come from the call record
-- (ARGV[5..7]: reason, bridged_ms, ended_ms), read just before. Returns {1, cents} when
-- credited now, {0, cents already credited or 0}.
local money, acct, ledger, unsynced = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cid = ARGV[2]
local c = redis.call('HMGET', money, 'settled', 'billed_cents', 'credited_cents')
if c[3] then return {0, tonumber(c[3])} end
if c[1] ~= '1' or ARGV[5] ~= 'system_error' then return {0, 0} end
local bridged, ended = tonumber(ARGV[6]), tonumber(ARGV[7])
if not bridged or not ended or ended - bridged > tonumber(ARGV[1]) then return {0, 0} end
local amount = tonumber(c[2] or '0') or 0
if amount <= 0 or redis.call('EXISTS', acct) == 0 then return {0, 0} end
local bal = redis.call('HINCRBY', acct, 'balance_cents', amount)
redis.call('XADD', ledger, '*', 'kind', 'credit', 'amount_cents', amount, 'balance_cents', bal,
           'call', cid, 'note', 'auto credit: system drop ' .. cid, 'ts', ARGV[3])
redis.call('HSET', money, 'credited_cents', amount, 'credit_reason', ARGV[4])
redis.call('HSET', unsynced, cid, redis.call('HINCRBY', money, 'v', 1))
return {1, amount}
