-- dead_move.lua: requeue or purge dead letters (Q6).
--
-- Atomic: each selected entry leaves the dead-letter store and (requeue) enters the back of
-- its priority's ready list with attempts reset and its id kept (junk: its wrapped form as it
-- is, see lib.lua), or (purge) is deleted, in one step: it is never in two places or in none.
-- 'all' handles at most `limit` entries per call (the oldest); the client repeats until fewer
-- come back, so one call never blocks the server for long.
--
-- ARGV[A]: 'requeue' | 'requeue:<0..3>' (at that priority, Q8) | 'purge', then 'all', limit
-- |  'ids', id, ... (every dead letter of each id; unknown ids are ignored).
-- Reply: how many entries were moved.

local action, at = ARGV[A], nil
if sub(action, 1, 8) == 'requeue:' then
  at = tonumber(sub(action, 9))
  if at == nil or at < 0 or at > 3 then return redis.error_reply('bad priority ' .. action) end
  action = 'requeue'
end
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
vcall('HDEL', K_DEADINFO, keys)
if action == 'purge' then
  vcall('HDEL', K_MSGS, keys)
  return n
end
local bytes = vget('HMGET', K_MSGS, keys)
vcall('HDEL', K_MSGS, keys)
local entries, delays = {}, {}
for i = 1, n do
  local b = bytes[i] or ''
  if is_wire(b) then
    entries[i] = with_attempts(b, 0)
    -- At another priority: its priority byte (offset 18) changes, so the entry goes to that
    -- level's list here and is delivered and retried at it.
    if at then entries[i] = with_priority(entries[i], at) end
  elseif is_wrapped(b) then
    -- Junk (see lib.lua): back as it was stored, so the next delivery finds the same bytes,
    -- fails with the same error and buries them under the same id.
    entries[i] = b
  else
    -- Bytes a Courier before the wrapped dead letters stored raw: wrapped with their id.
    entries[i] = char(199, 255) .. raw_id(dead_id(keys[i])) .. b
  end
  delays[i] = 0
end
-- Requeued messages keep their deduplication keys (Q11) and hold them again where they can.
retake_keys(entries, now)
local nready = schedule(entries, delays, now)
wake(nready)
return n
