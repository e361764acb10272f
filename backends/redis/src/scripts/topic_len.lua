-- topic_len.lua: events retained in a topic's log (E5).
--
-- Atomic: retention (length and age) is applied and the length read in one step, so the answer never
-- counts events that are already too old.
--
-- KEYS[1]: the topic's stream. ARGV[1]: max_age_ms (0 = none), ARGV[2]: max_len (-1 = none).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_age = tonumber(ARGV[1])
local max_len = tonumber(ARGV[2])
if max_len >= 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', max_len) end
if max_age > 0 and now - max_age > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '=', (now - max_age) .. '-0')
end
return redis.call('XLEN', KEYS[1])
