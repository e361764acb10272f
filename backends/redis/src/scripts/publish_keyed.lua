-- publish_keyed.lua: store a batch in which some message carries a deduplication key (Q1, Q7,
-- Q11). Batches without keys take publish.lua, which does no per-message work; this script
-- decides each message on its own.
--
-- Atomic: the key checks and the stores of the whole batch happen in one script run, in batch
-- order. A keyed message whose key is held (see the dedup hash in lib.lua: its holder is live,
-- or the server's now is before the holder's hold_until) is not stored and is answered with the
-- holder's id; any other message is stored as publish.lua stores it, and a keyed one becomes
-- its key's holder (live, hold_until = now + window, or 0 without a window). So a later message
-- of the batch with the key of an earlier stored one is that one's duplicate, and racing
-- publishers of one key store exactly one message. Maintenance runs first, as in the reference
-- model: a lease that expired on its last attempt is a dead letter before the check (and does
-- not hold its key).
--
-- ARGV[A]: n, then the window in ms (0 = none), then per message in batch order: its priority
-- level (0 = Critical .. 3), its delay in ms relative to the server's now (0 = ready now), its
-- wire bytes.
-- Reply: one value per message: 1 when stored, else the 16-byte id of the key's holder.

local now = now_ms()
maintain(now)
local n = tonumber(ARGV[A])
local window = tonumber(ARGV[A + 1])
local till = 0
if window > 0 then till = now + window end
-- Keys whose window passed, a bounded number per call: more than this call can add.
purge_holds(now, n + 100)
local res = {}
local ready = { {}, {}, {}, {} }
local z, zk = {}, 0
-- The holder of each key met in this batch so far (false: not held).
local holder_of = {}
local h, hk = {}, 0
local hz, hzk = {}, 0
local nstored, ndup, nready = 0, 0, 0
local b = A + 2
for i = 1, n do
  local level, delay, e = tonumber(ARGV[b]) + 1, tonumber(ARGV[b + 1]), ARGV[b + 2]
  b = b + 3
  local k = entry_key(e)
  local holder = false
  if k then
    holder = holder_of[k]
    if holder == nil then
      holder = false
      local r = redis.call('HGET', K_DEDUP, k)
      if r then
        local id, live, t = hold_parse(r)
        if live or now < t then holder = id end
      end
    end
  end
  if holder then
    holder_of[k] = holder
    res[i] = holder
    ndup = ndup + 1
  else
    res[i] = 1
    nstored = nstored + 1
    if k then
      local id = sub(e, 3, 18)
      holder_of[k] = id
      h[hk + 1] = k
      h[hk + 2] = hold_record(id, true, till)
      hk = hk + 2
      if till > 0 then
        hz[hzk + 1] = till
        hz[hzk + 2] = k
        hzk = hzk + 2
      end
    end
    if delay > 0 then
      z[zk + 1] = now + delay
      z[zk + 2] = e
      zk = zk + 2
    else
      local r = ready[level]
      r[#r + 1] = e
      nready = nready + 1
    end
  end
end
vcall('HSET', K_DEDUP, h)
vcall('ZADD', K_HOLDS, hz)
for p = 1, 4 do vcall('RPUSH', K_READY[p], ready[p]) end
delay_add(z)
count('published', nstored)
count('deduplicated', ndup)
if zk > 0 then nready = nready + 1 end
wake(nready)
return res
