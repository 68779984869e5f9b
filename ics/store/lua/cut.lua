-- The call record (ics.records record_cut / record_system_drop), one key.
-- One step, so no reader sees half a cut: cut_ms never after ended_ms (whichever of the listener's
-- cut and settlement's end, stamped by Asterisk's clock, is written first, each clamps against the
-- other); the reason replaces none or a plain hang-up; a system drop (ARGV[5] = 1) writes nothing
-- over another reason. ARGV[6..] are the plain ends.
local k = KEYS[1]
local reason = redis.call('HGET', k, 'reason')
local plain = not reason
for i = 6, #ARGV do if reason == ARGV[i] then plain = true end end
if ARGV[5] == '1' and not plain then return 0 end
local ended = tonumber(redis.call('HGET', k, 'ended_ms') or '')
local at = tonumber(ARGV[1])
if ended and ended < at then at = ended end
redis.call('HSET', k, 'cut_ms', at, 'rule', ARGV[2], 'rule_threshold', ARGV[3], 'evidence', ARGV[4])
if plain then redis.call('HSET', k, 'reason', ARGV[2]) end
return 1
