-- control.lua: pause, resume and rate limits (Q14, Q15, E8), kept in the queue's or group's
-- control hash (see lib.lua), so every handle and process sees them at its next claim.
--
-- A resume or a limit change (set or cleared) wakes waiting consumers as a publish does: a
-- queue gets a wake-up token per ready message (at most WAKE_CAP), a group one entry on its
-- wake stream. So they claim again at once rather than when their waits end. A pause wakes
-- nobody: a consumer finds it at its next claim. Changing the limit keeps the current
-- window's count (the rate key is not touched). Neither creates the queue (its counters) or
-- the group (the log's consumer group): only the control hash is written.
--
-- ARGV[A]: 'pause' | 'resume' | 'limit', then max, per in ms (the window, as claims count it)
-- and per in ns (the limit exactly as set, for stats) | 'unlimit'.
-- Reply: 1.

local op = ARGV[A]
if op == 'pause' then
  redis.call('HSET', K_CTL, 'paused', '1')
  return 1
elseif op == 'resume' then
  redis.call('HDEL', K_CTL, 'paused')
elseif op == 'limit' then
  local max, per = tonumber(ARGV[A + 1]), tonumber(ARGV[A + 2])
  if not max or not per or max < 1 or per < 1 then
    return redis.error_reply('bad rate limit ' .. tostring(ARGV[A + 1]) .. '/' .. tostring(ARGV[A + 2]))
  end
  redis.call('HSET', K_CTL, 'max', ARGV[A + 1], 'per', ARGV[A + 2], 'per_ns', ARGV[A + 3])
elseif op == 'unlimit' then
  redis.call('HDEL', K_CTL, 'max', 'per', 'per_ns')
else
  return redis.error_reply('unknown control operation ' .. tostring(op))
end
local ready = 1
if not GROUP_MODE then
  ready = 0
  for p = 1, 4 do ready = ready + redis.call('LLEN', K_READY[p]) end
end
wake(ready)
return 1
