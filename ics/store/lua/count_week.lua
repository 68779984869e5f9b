-- Second step of a settlement, in the inmate's slot: count an accepted call towards its
-- weekly quota once. The call id is kept in the week's hash, so a replay adds nothing.
local week, field = KEYS[1], 'call:' .. ARGV[1]
if redis.call('HSETNX', week, field, ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', week, 'calls', 1)
redis.call('HINCRBY', week, 'minutes', tonumber(ARGV[2]))
redis.call('EXPIRE', week, 5184000)
return 1
