-- group_stats.lua: one consistent snapshot of a consumer group on a topic (E3, Q8).
--
-- Atomic: maintenance, the group's gauges and counters and its lag (events in the log the
-- group has not read yet) are read in one script run, so they add up. The lag is exact up to
-- 5000 unread events, an estimate from Redis beyond that.
--
-- Reply: { ready, 0, 0, 0, delayed, in_flight, dead, published(0), acked, retried,
--          dead_lettered, lag, expired, paused (1/0) }.

local now = now_ms()
maintain(now)
local out = { redis.call('LLEN', K_READY[1]), 0, 0, 0 }
out[5] = redis.call('ZCARD', K_DELAYED)
out[6] = redis.call('HLEN', K_LEASED)
out[7] = redis.call('ZCARD', K_DEAD)
local c = redis.call('HMGET', K_COUNTERS, 'published', 'acked', 'retried', 'dead_lettered',
  'expired')
for i = 1, 4 do out[7 + i] = tonumber(c[i] or 0) or 0 end
local expired = tonumber(c[5] or 0) or 0

local lag = nil
local last = nil
local found = false
local groups = redis.pcall('XINFO', 'GROUPS', K_LOG)
if type(groups) == 'table' and not groups.err then
  for i = 1, #groups do
    local g = groups[i]
    local name, glag, glast = nil, nil, nil
    for j = 1, #g, 2 do
      if g[j] == 'name' then name = g[j + 1]
      elseif g[j] == 'lag' then glag = g[j + 1]
      elseif g[j] == 'last-delivered-id' then glast = g[j + 1] end
    end
    if name == GROUP then
      found = true
      last = glast
      if type(glag) == 'number' then lag = glag end
    end
  end
end
local len = redis.call('XLEN', K_LOG)
if not found then
  -- Not created yet: it will start at the beginning of the retained log.
  lag = len
else
  -- Redis' own lag (entries added minus entries read) is an estimate that goes wrong once
  -- retention trimmed entries around the group's cursor, so count the entries after the
  -- cursor, up to LAG_EXACT of them; past that, take the estimate, capped by the length.
  local LAG_EXACT = 5000
  local counted = 0
  local from = '(' .. last
  while true do
    local r = redis.call('XRANGE', K_LOG, from, '+', 'COUNT', 1000)
    counted = counted + #r
    if #r < 1000 then
      lag = counted
      break
    end
    if counted >= LAG_EXACT then
      if lag == nil or lag < counted then lag = len end
      if lag > len then lag = len end
      break
    end
    from = '(' .. r[#r][1]
  end
end
out[12] = lag
out[13] = expired
if redis.call('HEXISTS', K_CTL, 'paused') == 1 then out[14] = 1 else out[14] = 0 end
return out
