-- dead_move.lua: requeue or purge dead letters (Q6).
--
-- Atomic: each selected entry leaves the dead-letter store and (requeue) enters the back of
-- its priority's ready list with attempts reset and its id kept, or (purge) is deleted, in one
-- step: it is never in two places or in none. 'all' handles at most `limit` entries per call
-- (the oldest); the client repeats until fewer come back, so one call never blocks the server
-- for long.
--
-- ARGV[A]: 'requeue' | 'purge', then 'all', limit  |  'ids', id, ... (every dead letter of
-- each id; unknown ids are ignored).
-- Reply: how many entries were moved.

local now = now_ms()
maintain(now)
local keys
if ARGV[A + 1] == 'all' then
  keys = redis.call('ZRANGE', K_DEAD, 0, tonumber(ARGV[A + 2]) - 1)
else
  local asked = {}
  for i = A + 2, #ARGV do asked[#asked + 1] = ARGV[i] end
  keys = dead_keys_of(asked)
end
local n = #keys
if n == 0 then return 0 end
vcall('ZREM', K_DEAD, keys)
vcall('ZREM', K_DEADIDX, keys)
local infos = vget('HMGET', K_DEADINFO, keys)
vcall('HDEL', K_DEADINFO, keys)
if ARGV[A] == 'purge' then
  vcall('HDEL', K_MSGS, keys)
  return n
end
local bytes = vget('HMGET', K_MSGS, keys)
vcall('HDEL', K_MSGS, keys)
local ids, atts, ps, delays, h = {}, {}, {}, {}, {}
for i = 1, n do
  ids[i] = dead_id(keys[i])
  atts[i] = 0
  ps[i] = tonumber(string.match(infos[i] or '', '^%d+|%d+|(%d)|')) or 2
  delays[i] = 0
  h[2 * i - 1] = ids[i]
  h[2 * i] = bytes[i] or ''
end
vcall('HSET', K_MSGS, h)
local nready = schedule(ids, atts, ps, delays, now)
wake(nready)
return n
