-- group_claim.lua: lease up to n events of a topic for one consumer group (E2, E3, E4).
--
-- Atomic: maintenance (expired leases, due retries), the read of new events from the topic's
-- stream with XREADGROUP (which moves the group's cursor and records the entries in its
-- pending list) and the leases are one script run. An event read from the log is leased in
-- the same step, so no crash or cancelled call can leave it read but unowned. The group is
-- created on first use at the start of the retained log (XGROUP CREATE ... 0 MKSTREAM).
--
-- Events being handled or waiting for a retry are entries of the group (their bytes copied
-- from the log), so retention may trim the log meanwhile; info maps each to its stream id, to
-- acknowledge it in the log when the group is done with it.
--
-- Expiry (Q12), per group: an event this claim reaches after its expiry, from the group's ready
-- list or read from the log, is expired for this group (its dead letters, or dropped; its
-- stream entry acknowledged) and does not count towards n. Other groups are not affected.
--
-- Pause (E8): a paused group leases nothing and reads nothing from the log (no XREADGROUP),
-- so its lag keeps counting the events emitted meanwhile; its expired leases and due
-- retries still move (the maintenance). The group is still created on first use, as a
-- receive places it whether or not it is paused.
--
-- ARGV[A]: n. ARGV[A + 1]: '1' keeps expired events as dead letters, '0' drops them.
-- Reply: as claim.lua; when nothing was leased:
--   { now, 0, next_due_ms, last id of the log, last id of the wake stream }; while paused the
--   log's id is '' (wait on the wake stream only: an emit cannot help, a resume wakes it).

local function last_id(key)
  local r = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if r[1] then return r[1][1] end
  return '0-0'
end

-- Create the group at the start of the retained log (on first use). Answers BUSYGROUP (ignored)
-- when it exists.
local function place_group()
  redis.pcall('XGROUP', 'CREATE', K_LOG, GROUP, '0', 'MKSTREAM')
end

local now = now_ms()
maintain(now)
local n = claim_allows(tonumber(ARGV[A]), now)
if n == 0 then
  place_group()
  return { now, 0, next_due(now), '', last_id(K_WAKE) }
end
local keep = ARGV[A + 1] == '1'
local entries, cut = take_live(n, now, keep)
-- Pull from the log only as many events as can be leased now (so `lag` stays meaningful);
-- an event emitted with a delay waits it out in the group's delayed set first. Events read
-- after their expiry are expired once the loop is done (forget() needs their stream ids in
-- info); a round that expired some does not count towards the 8, EXPIRE_MAX bounds those.
local created = false
local pulled = 0
local rounds = 0
local gone = {}
while #entries < n and rounds < 8 and not cut do
  if #gone >= EXPIRE_MAX then
    cut = true
    break
  end
  rounds = rounds + 1
  local read = { 'XREADGROUP', 'GROUP', GROUP, 'courier', 'COUNT', n - #entries, 'STREAMS', K_LOG, '>' }
  local r = redis.pcall(unpack(read))
  if type(r) == 'table' and r.err then
    if created or not string.find(r.err, 'NOGROUP', 1, true) then
      return redis.error_reply(r.err)
    end
    place_group()
    created = true
    r = redis.call(unpack(read))
  end
  if not (r and r[1]) or #r[1][2] == 0 then break end
  local hi, z, fresh = {}, {}, {}
  local got = r[1][2]
  for i = 1, #got do
    local sid = got[i][1]
    local f = got[i][2]
    local id, m, d = nil, nil, 0
    for j = 1, #f, 2 do
      local name = f[j]
      if name == 'i' then id = f[j + 1]
      elseif name == 'm' then m = f[j + 1]
      elseif name == 'd' then d = tonumber(f[j + 1]) or 0 end
    end
    if id and m then
      pulled = pulled + 1
      -- Bytes that are not wire bytes are wrapped with the event's id (see lib.lua).
      if not is_wire(m) then m = char(199, 255) .. raw_id(id) .. m end
      hi[#hi + 1] = sub(m, 3, 18)
      hi[#hi + 1] = sid
      if d > now then
        z[#z + 1] = d
        z[#z + 1] = m
      else
        fresh[#fresh + 1] = m
      end
    else
      -- Not an event written by Courier: skip it for good.
      redis.call('XACK', K_LOG, GROUP, sid)
    end
  end
  vcall('HSET', K_INFO, hi)
  delay_add(z)
  local before = #gone
  split_expired(fresh, now, gone)
  if #gone > before then rounds = rounds - 1 end
  local k = #entries
  for i = 1, #fresh do entries[k + i] = fresh[i] end
end
count('published', pulled)
expire(gone, now, keep)
if #entries == 0 then
  local due = next_due(now)
  if cut then due = 0 end
  return { now, 0, due, last_id(K_LOG), last_id(K_WAKE) }
end
return lease(entries, now)
