-- emit.lua: append a batch of events to a topic's log (E1), applying its retention.
--
-- Atomic: the batch is appended in order with no other append in between, so a topic's
-- events keep their emit order (E4) and a batch is stored whole or not at all. Consumers
-- blocked in XREAD on the log wake by themselves.
--
-- KEYS[1]: the topic's stream.
-- ARGV: max_len (-1 = none), max_age_ms (0 = none), n, then per event: id, delay in ms
-- relative to the server's now (0 = none), wire bytes. A delayed event carries its absolute due time (server clock) in field 'd'.
-- Reply: the server time (ms).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_len = tonumber(ARGV[1])
local max_age = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local b = 4 + i * 3
  local cmd = { 'XADD', KEYS[1] }
  if max_len >= 0 then
    cmd[3] = 'MAXLEN'
    cmd[4] = '='
    cmd[5] = max_len
  end
  cmd[#cmd + 1] = '*'
  cmd[#cmd + 1] = 'i'
  cmd[#cmd + 1] = ARGV[b]
  local rel = tonumber(ARGV[b + 1])
  if rel > 0 then
    cmd[#cmd + 1] = 'd'
    cmd[#cmd + 1] = now + rel
  end
  cmd[#cmd + 1] = 'm'
  cmd[#cmd + 1] = ARGV[b + 2]
  redis.call(unpack(cmd))
end
if max_age > 0 and now - max_age > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '=', (now - max_age) .. '-0')
end
return now
