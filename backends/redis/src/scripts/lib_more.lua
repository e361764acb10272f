-- lib_more.lua: the rest of the shared part of the queue and consumer-group scripts (see
-- lib.lua, which precedes it): retries, dead letters, maintenance, leases.

-- The max_attempts override from a message's wire header (version 1: bytes 23..26 from 0,
-- big-endian u32; docs/wire-format.md). 0 = none, also for bytes that are not Courier's.
local function max_override(bytes)
  if not bytes or #bytes < 43 or string.byte(bytes, 1) ~= 199 or string.byte(bytes, 2) ~= 1 then
    return 0
  end
  local b1, b2, b3, b4 = string.byte(bytes, 24, 27)
  return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end

-- The retry delay after failed attempt `attempt` (1-based), in whole ms (rounded up).
-- This mirrors courier_core::RetryPolicy::delay, a pure function:
--   d = min(max_delay, base * factor^(attempt-1)), then uniform within [d(1-j), d(1+j)].
-- With jitter 0 both give exactly the same delay (tested in src/scripts.rs).
-- Parse the retry policy (once per call, on first need).
local function retry_policy()
  if MAX_ATTEMPTS then return end
  MAX_ATTEMPTS = tonumber(ARGV[2])
  BASE = tonumber(ARGV[3])
  FACTOR = tonumber(ARGV[4])
  MAX_DELAY = tonumber(ARGV[5])
  JITTER = tonumber(ARGV[6])
  -- Scripts are effect-replicated (Redis >= 5), so a seeded generator is allowed; the client
  -- passes a fresh random seed with every call.
  math.randomseed(tonumber(ARGV[7]))
end

local function backoff_ms(attempt)
  retry_policy()
  local exp = attempt - 1
  if exp < 0 then exp = 0 end
  if exp > 1000 then exp = 1000 end
  local d = BASE * (FACTOR ^ exp)
  if d ~= d or d >= MAX_DELAY then d = MAX_DELAY end
  if JITTER > 0 and d > 0 then
    local spread = (math.random() * 2 - 1) * JITTER
    d = d * (1 + spread)
    if d < 0 then d = 0 end
  end
  return math.ceil(d - 1e-9)
end

-- A group's stream entries are acknowledged when the group is done with them for good
-- (acked, buried, discarded): the group's pending entries list then holds exactly the events
-- it still owes.
local function xack(ids)
  if not GROUP_MODE or #ids == 0 then return end
  local sids = vget('HMGET', K_INFO, ids)
  local out, k = {}, 0
  for i = 1, #ids do
    if sids[i] then
      k = k + 1
      out[k] = sids[i]
    end
  end
  local i = 1
  while i <= k do
    local j = i + CHUNK - 1
    if j > k then j = k end
    redis.pcall('XACK', K_LOG, GROUP, unpack(out, i, j))
    i = j + 1
  end
end

-- Remove messages for good (ack, discard).
local function forget(ids)
  if #ids == 0 then return end
  vcall('HDEL', K_MSGS, ids)
  if GROUP_MODE then
    xack(ids)
    vcall('HDEL', K_INFO, ids)
  end
end

-- Move messages to the dead-letter store (or discard them when dead letters are off).
-- ids, atts (deliveries made), ps (priorities), errs: parallel lists. Each dead letter gets its
-- own key "id#seq", so the same id may be dead more than once (as in the reference model).
local function bury(ids, atts, ps, errs, now)
  local n = #ids
  if n == 0 then return end
  if DEAD_LETTER then
    local bytes = vget('HMGET', K_MSGS, ids)
    local seq = redis.call('HINCRBY', K_COUNTERS, 'dead_seq', n) - n
    local z, x, h, m = {}, {}, {}, {}
    for i = 1, n do
      local key = ids[i] .. '#' .. (seq + i)
      z[2 * i - 1] = seq + i
      z[2 * i] = key
      x[2 * i - 1] = 0
      x[2 * i] = key
      h[2 * i - 1] = key
      h[2 * i] = atts[i] .. '|' .. now .. '|' .. ps[i] .. '|' .. errs[i]
      m[2 * i - 1] = key
      m[2 * i] = bytes[i] or ''
    end
    vcall('ZADD', K_DEAD, z)
    vcall('ZADD', K_DEADIDX, x)
    vcall('HSET', K_DEADINFO, h)
    vcall('HSET', K_MSGS, m)
  end
  forget(ids)
  count('dead_lettered', n)
end

-- The dead keys of the given ids (every dead letter of each), oldest first.
local function dead_keys_of(ids)
  local keys = {}
  local seen = {}
  for i = 1, #ids do
    local id = ids[i]
    if not seen[id] then
      seen[id] = true
      for _, k in ipairs(redis.call('ZRANGEBYLEX', K_DEADIDX, '[' .. id .. '#', '[' .. id .. '#~')) do
        keys[#keys + 1] = { tonumber(string.match(k, '#(%d+)$')), k }
      end
    end
  end
  table.sort(keys, function(a, b) return a[1] < b[1] end)
  local out = {}
  for i = 1, #keys do out[i] = keys[i][2] end
  return out
end

-- The id of a dead key "id#seq".
local function dead_id(key)
  return string.match(key, '^(.*)#%d+$')
end

-- Make messages ready again after `delay` ms: at the back of their priority level when due
-- now, else in the delayed set. Returns how many became ready now, and how many were delayed.
local function schedule(ids, atts, ps, delays, now)
  local n = #ids
  if n == 0 then return 0, 0 end
  local z, zk = {}, 0
  local ready = { {}, {}, {}, {} }
  local nready = 0
  for i = 1, n do
    local e = entry(ids[i], atts[i])
    if delays[i] <= 0 then
      local r = ready[ps[i] + 1]
      r[#r + 1] = e
      nready = nready + 1
    else
      z[zk + 1] = now + delays[i]
      z[zk + 2] = ps[i] .. '|' .. e
      zk = zk + 2
    end
  end
  for p = 1, 4 do vcall('RPUSH', K_READY[p], ready[p]) end
  delay_add(z)
  return nready, zk / 2
end

-- Expired leases count as failed attempts: retry after the policy's backoff, or dead letter
-- "lease expired" when out of attempts. Bounded per call. Must run before promote().
local function reclaim(now)
  local members = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now, 'LIMIT', 0, RECLAIM_MAX)
  local n = #members
  if n == 0 then return 0 end
  vcall('ZREM', K_LEASES, members)
  local ids, ps, atts = {}, {}, {}
  for i = 1, n do ids[i], ps[i], atts[i] = member_parse(members[i]) end
  local bytes = vget('HMGET', K_MSGS, ids)
  local r_ids, r_atts, r_ps, r_delays = {}, {}, {}, {}
  local d_ids, d_atts, d_ps, d_errs = {}, {}, {}, {}
  for i = 1, n do
    if bytes[i] then
      local a = atts[i]
      local p = ps[i]
      retry_policy()
      local limit = MAX_ATTEMPTS
      local max = max_override(bytes[i])
      if max > 0 then limit = max end
      if limit < 1 then limit = 1 end
      if a >= limit then
        local k = #d_ids + 1
        d_ids[k], d_atts[k], d_ps[k], d_errs[k] = ids[i], a, p, 'lease expired'
      else
        local k = #r_ids + 1
        r_ids[k], r_atts[k], r_ps[k], r_delays[k] = ids[i], a, p, backoff_ms(a)
      end
    end
  end
  -- Through the delayed set even with no backoff: promote() then orders them with messages
  -- that fell due earlier (by due time), as every backend does, instead of ahead of them.
  local z = {}
  for k = 1, #r_ids do
    z[#z + 1] = now + r_delays[k]
    z[#z + 1] = r_ps[k] .. '|' .. entry(r_ids[k], r_atts[k])
  end
  delay_add(z)
  count('retried', #r_ids)
  bury(d_ids, d_atts, d_ps, d_errs, now)
  return #r_ids
end

-- Move due delayed messages to the back of their priority level, oldest due first.
-- Bounded per call.
local function promote(now)
  local members = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now * DSEQ + DSEQ - 1, 'LIMIT',
    0, PROMOTE_MAX)
  local n = #members
  if n == 0 then return 0 end
  vcall('ZREM', K_DELAYED, members)
  local ready = { {}, {}, {}, {} }
  for i = 1, n do
    local m = members[i]
    local r = ready[tonumber(string.sub(m, 1, 1)) + 1]
    r[#r + 1] = string.sub(m, 3)
  end
  for p = 1, 4 do vcall('RPUSH', K_READY[p], ready[p]) end
  return n
end

-- Pop up to n entries, highest priority first, FIFO within a level. Returns the ids, the
-- attempts counted so far and the priorities (parallel lists); each entry is parsed as
-- entry_parse() does, inline (this is the claim's per-message loop).
local function take(n)
  local ids, atts, ps = {}, {}, {}
  if n <= 0 then return ids, atts, ps end
  local levels = 4
  if GROUP_MODE then levels = 1 end
  local find, sub = string.find, string.sub
  local k = 0
  for p = 1, levels do
    local want = n - k
    if want <= 0 then break end
    local got = redis.call('LPOP', K_READY[p], want)
    if got then
      local pr = p - 1
      if GROUP_MODE then pr = 2 end
      for i = 1, #got do
        k = k + 1
        local e = got[i]
        local bar = find(e, '|', 1, true)
        if bar then
          ids[k] = sub(e, 1, bar - 1)
          atts[k] = tonumber(sub(e, bar + 1))
        else
          ids[k] = e
          atts[k] = 0
        end
        ps[k] = pr
      end
    end
  end
  return ids, atts, ps
end

-- Decimal digits, for building tokens without number formatting (costly in Lua).
local DIGIT = { '0', '1', '2', '3', '4', '5', '6', '7', '8', '9' }

-- Lease messages: attempts + 1, a fresh token each, deadline now + VIS. ids, atts (counted so
-- far), ps: parallel lists; `bytes` may be given (events just read from a stream). Returns
-- the reply { now, deadline, -1, member, bytes, ... } where each lease member
-- "id|token|attempt" tells the client the delivery's id, token and attempt.
--
-- A token is 19 decimal digits: '1', an 11-digit call sequence number (one HINCRBY per call,
-- or per million messages), a 6-digit index within the call, and the priority digit (0..3).
-- It is built from strings only: formatting a number costs about as much as a ZADD member, so
-- per message nothing is formatted (the deadline is formatted once, and the attempt once per
-- distinct value). Tokens of the older layout, (counter * 4 + priority), are below 10^18, so
-- the two never collide.
local function lease(ids, atts, ps, bytes, now)
  local n = #ids
  local deadline = now + VIS
  local dls = tostring(deadline)
  if not bytes then bytes = vget('HMGET', K_MSGS, ids) end
  local out = { now, deadline, -1 }
  local ok, zk, lost = 3, 0, {}
  local z = {}
  local att_str = {}
  local seqs, pre, hi = nil, nil, 0
  local c1, c2, c3 = 1, 1, 0
  for i = 1, n do
    local b = bytes[i]
    if b then
      -- The index's low three digits count up (c1 c2 c3 index DIGIT); the high three and the
      -- call sequence change every 1000 messages.
      c3 = c3 + 1
      if c3 > 10 then
        c3 = 1
        c2 = c2 + 1
        if c2 > 10 then
          c2 = 1
          c1 = c1 + 1
          if c1 > 10 then
            c1 = 1
            hi = hi + 1
            pre = nil
          end
        end
      end
      if not pre then
        if not seqs or hi >= 1000 then
          hi = 0
          local seq = redis.call('HINCRBY', K_COUNTERS, 'lease_seq', 1) % 100000000000
          seqs = '1' .. string.format('%011d', seq)
        end
        pre = seqs .. string.format('%03d', hi)
      end
      local a = atts[i] + 1
      local as = att_str[a]
      if not as then
        as = tostring(a)
        att_str[a] = as
      end
      local m = ids[i] .. '|' .. pre .. DIGIT[c1] .. DIGIT[c2] .. DIGIT[c3] .. DIGIT[ps[i] + 1]
        .. '|' .. as
      z[zk + 1] = dls
      z[zk + 2] = m
      zk = zk + 2
      out[ok + 1] = m
      out[ok + 2] = b
      ok = ok + 2
    else
      lost[#lost + 1] = ids[i]
    end
  end
  vcall('ZADD', K_LEASES, z)
  if #lost > 0 then forget(lost) end
  return out
end

-- Which of the given deliveries (lease members "id|token|attempt") are held right now: the
-- member exists and its deadline has not passed. A delivery repeated in one batch is held
-- only once. Returns a list of booleans.
local function held(members, now)
  local n = #members
  local scores = vget('ZMSCORE', K_LEASES, members)
  local oks, seen = {}, {}
  for i = 1, n do
    local s = scores[i]
    local ok = false
    if s and tonumber(s) > now and not seen[members[i]] then
      ok = true
      seen[members[i]] = true
    end
    oks[i] = ok
  end
  return oks
end

-- held() for the members ARGV[i..j]; the second result is true when every one is held (and
-- none repeated).
--
-- Fast path, when no lease in the set has expired (its lowest deadline is ahead): then being in
-- the set is enough, and membership is checked with ZADD NX under score -1 (which no lease
-- has), which reads no score back. Nothing added: every member is held. Otherwise the added
-- ones are removed again (ZREMRANGEBYSCORE -1 -1) and the scores are read as below.
local function held_argv(i, j, now)
  local n = j - i + 1
  local low = redis.call('ZRANGE', K_LEASES, 0, 0, 'WITHSCORES')[2]
  local live = not low or tonumber(low) > now
  local oks, seen = {}, {}
  if live then
    local z = {}
    for x = 1, n do
      z[2 * x - 1] = '-1'
      z[2 * x] = ARGV[i + x - 1]
    end
    local added = 0
    local a = 1
    while a <= 2 * n do
      local b = a + CHUNK - 1
      if b > 2 * n then b = 2 * n end
      added = added + redis.call('ZADD', K_LEASES, 'NX', unpack(z, a, b))
      a = b + 1
    end
    if added == 0 then
      local all = true
      for x = 1, n do
        local m = ARGV[i + x - 1]
        if seen[m] then
          oks[x] = false
          all = false
        else
          seen[m] = true
          oks[x] = true
        end
      end
      return oks, all
    end
    redis.call('ZREMRANGEBYSCORE', K_LEASES, -1, -1)
  end
  local scores = {}
  local k = 0
  local s = i
  while s <= j do
    local e = s + CHUNK - 1
    if e > j then e = j end
    local r = redis.call('ZMSCORE', K_LEASES, unpack(ARGV, s, e))
    for x = 1, e - s + 1 do
      k = k + 1
      scores[k] = r[x]
    end
    s = e + 1
  end
  for x = 1, k do
    local sc = scores[x]
    local ok = false
    if sc then
      local m = ARGV[i + x - 1]
      if (live or tonumber(sc) > now) and not seen[m] then
        ok = true
        seen[m] = true
      end
    end
    oks[x] = ok
  end
  return oks, false
end

-- Milliseconds until the earliest delayed message is due or lease ends (-1: none).
local function next_due(now)
  local best = -1
  local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if d[2] then best = math.floor(tonumber(d[2]) / DSEQ) end
  local l = redis.call('ZRANGE', K_LEASES, 0, 0, 'WITHSCORES')
  if l[2] and (best < 0 or tonumber(l[2]) < best) then best = tonumber(l[2]) end
  if best < 0 then return -1 end
  local ms = best - now
  if ms < 0 then ms = 0 end
  return ms
end

-- Trim a topic's log to its retention (length and age). Appends trim by length too; this
-- catches retention changed since, and age passing without appends.
local function trim_log(now)
  if not GROUP_MODE then return end
  local max_len = tonumber(ARGV[11])
  local max_age = tonumber(ARGV[12])
  if max_len >= 0 then redis.call('XTRIM', K_LOG, 'MAXLEN', '=', max_len) end
  if max_age > 0 and now - max_age > 0 then
    redis.call('XTRIM', K_LOG, 'MINID', '=', (now - max_age) .. '-0')
  end
end

-- The maintenance every call starts with.
local function maintain(now)
  trim_log(now)
  local moved = reclaim(now)
  promote(now)
  return moved
end

-- ---------------------------------------------------------------------------------------
-- The script body follows.
