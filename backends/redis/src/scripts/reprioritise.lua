-- reprioritise.lua: move every stored copy of a message to another priority (Q16).
--
-- Atomic, in one script run: each ready copy leaves its level and joins the back of the new
-- level's list (also when the level is the same); each delayed copy gets the new priority and
-- keeps its due time (and its place among the messages due in the same ms: the member keeps
-- its sequence number and score); each leased copy keeps its lease, and its stored entry,
-- which a retry, a release or an expired lease puts back, gets the new priority. The priority
-- is the entry's priority byte (with_priority, as requeue_dead_at), so the message is then
-- delivered with the new `priority` field. Dead letters are not looked at (requeue_dead_at
-- sets their priority). Entries that are not wire bytes (junk, wrapped) never match.
--
-- Cost: nothing indexes entries by id (the hot paths pay for no index), so the script reads
-- the ready lists, the delayed set and the leased hash in chunks of CH: linear in the size of
-- the queue, in one run. The maintenance runs first, as in every call that reads the state.
--
-- ARGV[A]: the message id's 16 raw bytes. ARGV[A + 1]: the priority, 0 (Critical) .. 3 (Low).
-- Reply: how many stored copies moved (0: none is ready, delayed or leased).

local id, p = ARGV[A], tonumber(ARGV[A + 1])
if #id ~= 16 or not p or p < 0 or p > 3 then
  return redis.error_reply('reprioritise: bad id or priority')
end
local now = now_ms()
maintain(now)
local CH = 1000
local function mine(e)
  return is_wire(e) and sub(e, 3, 18) == id
end

-- Ready: in level order (Critical first), then list order, as they go to the new level.
local moved, mk = {}, 0
for l = 1, 4 do
  local key = K_READY[l]
  local len = redis.call('LLEN', key)
  local distinct, dk, seen = {}, 0, {}
  local i = 0
  while i < len do
    local got = redis.call('LRANGE', key, i, i + CH - 1)
    for k = 1, #got do
      local e = got[k]
      if mine(e) then
        mk = mk + 1
        moved[mk] = e
        if not seen[e] then
          seen[e] = true
          dk = dk + 1
          distinct[dk] = e
        end
      end
    end
    i = i + CH
  end
  -- LREM removes every copy with these bytes, and each was collected above.
  for k = 1, dk do redis.call('LREM', key, 0, distinct[k]) end
end
for k = 1, mk do moved[k] = with_priority(moved[k], p) end
vcall('RPUSH', K_READY[p + 1], moved)

-- Delayed: same score, same sequence number, new priority byte.
local zrem, zadd = {}, {}
local dn = redis.call('ZCARD', K_DELAYED)
local i = 0
while i < dn do
  local got = redis.call('ZRANGE', K_DELAYED, i, i + CH - 1, 'WITHSCORES')
  for k = 1, #got, 2 do
    local m = got[k]
    local e = delayed_entry(m)
    if mine(e) then
      zrem[#zrem + 1] = m
      zadd[#zadd + 1] = got[k + 1]
      zadd[#zadd + 1] = sub(m, 1, 12) .. with_priority(e, p)
    end
  end
  i = i + CH
end
vcall('ZREM', K_DELAYED, zrem)
vcall('ZADD', K_DELAYED, zadd)

-- Leased: the stored entry under the same token (HSCAN may repeat a field: counted once).
local hs, seen = {}, {}
local cursor = '0'
repeat
  local r = redis.call('HSCAN', K_LEASED, cursor, 'COUNT', CH)
  cursor = r[1]
  local kv = r[2]
  for k = 1, #kv, 2 do
    local t, e = kv[k], kv[k + 1]
    if not seen[t] and mine(e) then
      seen[t] = true
      hs[#hs + 1] = t
      hs[#hs + 1] = with_priority(e, p)
    end
  end
until cursor == '0'
vcall('HSET', K_LEASED, hs)

return mk + #zrem + #hs / 2
