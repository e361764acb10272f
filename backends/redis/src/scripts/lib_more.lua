-- lib_more.lua: the rest of the shared part of the queue and consumer-group scripts (see
-- lib.lua, which precedes it): retries, dead letters, maintenance, leases.

-- The max_attempts override from an entry's wire header (versions 1 and 2: bytes 23..26 from 0,
-- big-endian u32; docs/wire-format.md). 0 = none, also for bytes that are not Courier's.
local function max_override(e)
  if not is_wire(e) then return 0 end
  local b1, b2, b3, b4 = byte(e, 24, 27)
  return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end

-- A group's stream entries are acknowledged when the group is done with them for good
-- (acked, buried, discarded): the group's pending entries list then holds exactly the events
-- it still owes. Takes the entries.
local function forget(entries)
  if not GROUP_MODE or #entries == 0 then return end
  local rids = {}
  for i = 1, #entries do rids[i] = sub(entries[i], 3, 18) end
  local sids = vget('HMGET', K_INFO, rids)
  local out, k = {}, 0
  for i = 1, #rids do
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
  vcall('HDEL', K_INFO, rids)
end

-- The `n` low-order bytes of x (an integer, 0 <= x < 2^53), big-endian.
local function be_bytes(x, n)
  local t = {}
  for k = n, 1, -1 do
    t[k] = x % 256
    x = math.floor(x / 256)
  end
  return char(unpack(t))
end

-- How a dead letter is stored (see lib.lua's header). `id`: the 16 bytes the client filed an
-- undecodable entry under (settle's 'u'), or nil. Wire bytes with an id of their own are a
-- message, stored as they are. Anything else is junk, stored wrapped: under the client's id,
-- else the id the entry carries if it can be trusted (has_id), else a fresh one made here (junk
-- whose lease expired before the client buried it): a UUIDv7 layout of the time in ms and the
-- queue's dead-letter sequence number `seq`, which no other dead letter of the queue has.
local function dead_form(e, id, seq, now)
  if id and #id ~= 16 then id = nil end
  if not id then
    if is_wire(e) and has_id(e) then return e end
    if is_wrapped(e) and has_id(e) then return e end
    if has_id(e) then
      id = sub(e, 3, 18)
    else
      id = be_bytes(now, 6) .. char(112, 0, 128, 0) .. be_bytes(seq, 6)
    end
  end
  if is_wrapped(e) then e = sub(e, 19) end
  return char(199, 255) .. id .. e
end

-- Deduplication keys (Q11; queues only, see the dedup hash and the holds set in lib.lua).
-- A holder record: the holder's 16-byte id, '1' live or '0' not, then hold_until (ms).
local function hold_parse(r)
  return sub(r, 1, 16), byte(r, 17) == 49, tonumber(sub(r, 18)) or 0
end

local function hold_record(id, live, till)
  if live then return id .. '1' .. till end
  return id .. '0' .. till
end

-- Whether this queue holds any key now (false for a group).
local function keyed()
  return not GROUP_MODE and redis.call('EXISTS', K_DEDUP) == 1
end

-- Entries that stopped being live (acked, dead-lettered or discarded: a dead message does not
-- hold its key): each key an entry holds is free at once when its window passed, else it stays
-- taken, not live, until hold_until (then purge_holds forgets it). An entry that is not its
-- key's holder (requeued while another message held the key) changes nothing.
local function leave_keys(entries, now)
  if #entries == 0 or not keyed() then return end
  local drop, dk = {}, 0
  for i = 1, #entries do
    local e = plain(entries[i])
    local k = entry_key(e)
    if k then
      local r = redis.call('HGET', K_DEDUP, k)
      if r then
        local id, live, till = hold_parse(r)
        if id == sub(e, 3, 18) then
          if now < till then
            if live then redis.call('HSET', K_DEDUP, k, hold_record(id, false, till)) end
          else
            redis.call('HDEL', K_DEDUP, k)
            if till > 0 then
              dk = dk + 1
              drop[dk] = k
            end
          end
        end
      end
    end
  end
  vcall('ZREM', K_HOLDS, drop)
end

-- Requeued dead letters (live again) keep their keys: each holds its key again when it is
-- still the recorded holder, or when nobody holds the key now (then with no window); when
-- another message holds the key (live, or within its window), it is requeued without holding
-- it. In order, so of two requeued messages with one key the first takes it.
local function retake_keys(entries, now)
  if GROUP_MODE then return end
  for i = 1, #entries do
    local e = plain(entries[i])
    local k = entry_key(e)
    if k then
      local mine = sub(e, 3, 18)
      local r = redis.call('HGET', K_DEDUP, k)
      if not r then
        redis.call('HSET', K_DEDUP, k, hold_record(mine, true, 0))
      else
        local id, live, till = hold_parse(r)
        if id == mine then
          if not live then redis.call('HSET', K_DEDUP, k, hold_record(id, true, till)) end
        elseif not live and now >= till then
          redis.call('HSET', K_DEDUP, k, hold_record(mine, true, 0))
        end
      end
    end
  end
end

-- Forget up to `max` keys whose window passed (oldest first) and whose holder is not live.
-- A key whose holder is still live leaves the holds set only: leave_keys frees it at once.
local function purge_holds(now, max)
  local got = redis.call('ZRANGEBYSCORE', K_HOLDS, '-inf', now, 'LIMIT', 0, max)
  if #got == 0 then return end
  local recs = vget('HMGET', K_DEDUP, got)
  local gone, gk = {}, 0
  for i = 1, #got do
    if recs[i] then
      local _, live, till = hold_parse(recs[i])
      if not live and till <= now then
        gk = gk + 1
        gone[gk] = got[i]
      end
    end
  end
  vcall('ZREM', K_HOLDS, got)
  vcall('HDEL', K_DEDUP, gone)
end

-- Store entries as dead letters. entries, atts (deliveries made), errs: parallel lists; ids
-- (optional, sparse): the id the client filed an undecodable entry under (see dead_form). Each
-- dead letter gets its own key "id#seq", so the same id may be dead more than once (as in the
-- reference model).
local function store_dead(entries, atts, errs, now, ids)
  local n = #entries
  local seq = redis.call('HINCRBY', K_COUNTERS, 'dead_seq', n) - n
  local z, x, h, m = {}, {}, {}, {}
  for i = 1, n do
    local e = entries[i]
    local d = dead_form(e, ids and ids[i], seq + i, now)
    local key = entry_id(d) .. '#' .. (seq + i)
    local p = entry_info(e)
    z[2 * i - 1] = seq + i
    z[2 * i] = key
    x[2 * i - 1] = 0
    x[2 * i] = key
    h[2 * i - 1] = key
    h[2 * i] = atts[i] .. '|' .. now .. '|' .. p .. '|' .. errs[i]
    m[2 * i - 1] = key
    m[2 * i] = d
  end
  vcall('ZADD', K_DEAD, z)
  vcall('ZADD', K_DEADIDX, x)
  vcall('HSET', K_DEADINFO, h)
  vcall('HSET', K_MSGS, m)
end

-- Move entries to the dead-letter store (or discard them when dead letters are off), counted
-- in dead_lettered. entries, atts, errs, ids: as store_dead's.
local function bury(entries, atts, errs, now, ids)
  local n = #entries
  if n == 0 then return end
  leave_keys(entries, now)
  if DEAD_LETTER then store_dead(entries, atts, errs, now, ids) end
  forget(entries)
  count('dead_lettered', n)
end

-- Entries a claim popped after their expiry (Q12, see lib.lua's header): kept as dead letters
-- "expired" with the deliveries made so far (their attempt field, not incremented: 0 if
-- never delivered) when `keep`, else discarded; counted in `expired` either way, never in
-- dead_lettered. Like a bury they leave their deduplication keys and, in a group, their
-- stream entries.
local function expire(entries, now, keep)
  local n = #entries
  if n == 0 then return end
  leave_keys(entries, now)
  if keep then
    local atts, errs = {}, {}
    for i = 1, n do
      local _, a = entry_info(entries[i])
      atts[i], errs[i] = a, 'expired'
    end
    store_dead(entries, atts, errs, now)
  end
  forget(entries)
  count('expired', n)
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

-- Make entries ready again after `delay` ms: at the back of their priority level when due
-- now, else in the delayed set. Returns how many became ready now, and how many were delayed.
local function schedule(entries, delays, now)
  local n = #entries
  if n == 0 then return 0, 0 end
  local z, zk = {}, 0
  local ready = { {}, {}, {}, {} }
  local nready = 0
  for i = 1, n do
    local e = entries[i]
    if delays[i] <= 0 then
      local r = ready[level(e)]
      r[#r + 1] = e
      nready = nready + 1
    else
      z[zk + 1] = now + delays[i]
      z[zk + 2] = e
      zk = zk + 2
    end
  end
  for p = 1, 4 do vcall('RPUSH', K_READY[p], ready[p]) end
  delay_add(z)
  return nready, zk / 2
end

-- The deadline of each token (false when it has none): its own (after an extend), else its
-- batch's.
local function deadlines_of(tokens)
  local n = #tokens
  if n == 0 then return {} end
  local q = {}
  for i = 1, n do
    q[i] = tokens[i]
    q[n + i] = sub(tokens[i], 1, 15)
  end
  local s = vget('ZMSCORE', K_DEADLINES, q)
  local out = {}
  for i = 1, n do
    local d = s[i] or s[n + i]
    if d then out[i] = tonumber(d) else out[i] = false end
  end
  return out
end

-- True when no lease deadline has passed: then every token in the leased hash is held.
local function all_live(now)
  local low = redis.call('ZRANGE', K_DEADLINES, 0, 0, 'WITHSCORES')[2]
  return not low or tonumber(low) > now
end

-- Tokens left the leased hash (settled or reclaimed): count them off their batches, and drop
-- a batch from the deadlines once none of its tokens is leased. `skip`: batches already gone.
local function unbatch(tokens, skip)
  local per, order = {}, {}
  for i = 1, #tokens do
    local b = sub(tokens[i], 1, 15)
    local c = per[b]
    if not c then
      order[#order + 1] = b
      c = 0
    end
    per[b] = c + 1
  end
  for i = 1, #order do
    local b = order[i]
    if not (skip and skip[b]) then
      local left = redis.call('HINCRBY', K_BATCHES, b, -per[b])
      if left <= 0 then
        redis.call('HDEL', K_BATCHES, b)
        redis.call('ZREM', K_DEADLINES, b)
      end
    end
  end
end

-- Expired leases count as failed attempts: retry after the policy's backoff, or dead letter
-- "lease expired" when out of attempts (expiry.lua decides which). Bounded per call. Must run
-- before promote().
local function reclaim(now)
  local members = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', now, 'LIMIT', 0, RECLAIM_MAX)
  if #members == 0 then return 0 end
  -- The tokens whose lease may have ended: every token of an expired batch (unless extended
  -- past now), and every expired extended token. At most about RECLAIM_MAX per call; the
  -- members not looked at stay for the next call.
  local done, cand, seen, ended, ek = {}, {}, {}, {}, {}
  for i = 1, #members do
    if #cand >= RECLAIM_MAX then break end
    local m = members[i]
    done[i] = m
    if #m == 15 then
      ended[m] = true
      ek[#ek + 1] = m
      for x = 0, tonumber(sub(m, 13, 15)) do
        local t = m .. idx3(x)
        if not seen[t] then
          seen[t] = true
          cand[#cand + 1] = t
        end
      end
    elseif not seen[m] then
      seen[m] = true
      cand[#cand + 1] = m
    end
  end
  vcall('ZREM', K_DEADLINES, done)
  vcall('HDEL', K_BATCHES, ek)
  local entries = vget('HMGET', K_LEASED, cand)
  local toks, ents = {}, {}
  for i = 1, #cand do
    if entries[i] then
      toks[#toks + 1] = cand[i]
      ents[#ents + 1] = entries[i]
    end
  end
  if #toks == 0 then return 0 end
  -- A token extended past now keeps its lease although its batch ended.
  local own = vget('ZMSCORE', K_DEADLINES, toks)
  local gone, r_ents, r_delays = {}, {}, {}
  local d_ents, d_atts, d_errs = {}, {}, {}
  for i = 1, #toks do
    if not (own[i] and tonumber(own[i]) > now) then
      local e = ents[i]
      gone[#gone + 1] = toks[i]
      local _, a = entry_info(e)
      a = a + 1
      -- Bytes that are not Courier's are buried whatever the policy (Q10).
      local delay = is_wire(e) and expiry_delay(a, max_override(e))
      if delay then
        local k = #r_ents + 1
        r_ents[k], r_delays[k] = with_attempts(e, a), delay
      else
        local k = #d_ents + 1
        d_ents[k], d_atts[k], d_errs[k] = e, a, 'lease expired'
      end
    end
  end
  vcall('HDEL', K_LEASED, gone)
  vcall('ZREM', K_DEADLINES, gone)
  unbatch(gone, ended)
  -- Through the delayed set even with no backoff: promote() then orders them with messages
  -- that fell due earlier (by due time), as every backend does, instead of ahead of them.
  local z = {}
  for k = 1, #r_ents do
    z[#z + 1] = now + r_delays[k]
    z[#z + 1] = r_ents[k]
  end
  delay_add(z)
  count('retried', #r_ents)
  bury(d_ents, d_atts, d_errs, now)
  return #r_ents
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
    local e = delayed_entry(members[i])
    local r = ready[level(e)]
    r[#r + 1] = e
  end
  for p = 1, 4 do vcall('RPUSH', K_READY[p], ready[p]) end
  return n
end

-- Pop up to n entries, highest priority first, FIFO within a level.
local function take(n)
  local out = {}
  if n <= 0 then return out end
  local levels = 4
  if GROUP_MODE then levels = 1 end
  local k = 0
  for p = 1, levels do
    local want = n - k
    if want <= 0 then break end
    local got = redis.call('LPOP', K_READY[p], want)
    if got then
      if k == 0 then
        out = got
        k = #got
      else
        for i = 1, #got do
          k = k + 1
          out[k] = got[i]
        end
      end
    end
  end
  return out
end

-- How many expired entries one claim handles at most, so a long run of them cannot block the
-- server for long: past it the claim leases what it has and, with nothing to lease, replies
-- "look again at once" (next_due 0) instead of idle.
local EXPIRE_MAX = 1000

-- Move the entries whose expiry `now` reached (Q12) from `entries` (popped, in order) to the
-- end of `gone`; the live ones keep their order. An entry without an extension costs one byte
-- read, and nothing is copied unless something expired.
local function split_expired(entries, now, gone)
  local n = #entries
  local first = nil
  for i = 1, n do
    local e = entries[i]
    if byte(e, 2) == 2 then
      local x = entry_expiry(e)
      if x and now >= x then
        first = i
        break
      end
    end
  end
  if not first then return end
  local k, g = first - 1, #gone
  for i = first, n do
    local e = entries[i]
    local x = byte(e, 2) == 2 and entry_expiry(e)
    if x and now >= x then
      g = g + 1
      gone[g] = e
    else
      k = k + 1
      entries[k] = e
    end
  end
  for i = n, k + 1, -1 do entries[i] = nil end
end

-- take(n) for a claim: the entries popped after their expiry are expired (see expire, `keep`
-- as there) and more are popped in their place, until n live entries are taken, nothing is
-- ready, or EXPIRE_MAX entries were expired. Returns the live entries, in priority then FIFO
-- order, and true when that bound stopped it (ready entries may be left).
local function take_live(n, now, keep)
  local out = take(n)
  local gone = {}
  split_expired(out, now, gone)
  -- Nothing expired: take's answer is final (fewer than n only when nothing more is ready).
  if #gone == 0 then return out, false end
  local cut = false
  while #out < n do
    if #gone >= EXPIRE_MAX then
      cut = true
      break
    end
    local more = take(n - #out)
    if #more == 0 then break end
    split_expired(more, now, gone)
    local k = #out
    for i = 1, #more do out[k + i] = more[i] end
  end
  expire(gone, now, keep)
  return out, cut
end

-- Lease entries: each gets a token (see the header) under one deadline, now + VIS. Returns the
-- reply { now, deadline, -1, batches, batch name, ..., entry, ... }: the client numbers the
-- entries in order, 1000 per batch, and a token is its batch name followed by the 3-digit index.
local function lease(entries, now)
  local n = #entries
  local deadline = now + VIS
  local h = {}
  local names = {}
  local i = 0
  while i < n do
    local c = n - i
    if c > 1000 then c = 1000 end
    local seq = redis.call('HINCRBY', K_COUNTERS, 'lease_seq', 1) % 100000000000
    local name = '1' .. format('%011d', seq) .. idx3(c - 1)
    names[#names + 1] = name
    for x = 0, c - 1 do
      i = i + 1
      h[2 * i - 1] = name .. idx3(x)
      h[2 * i] = entries[i]
    end
  end
  local z, c = {}, {}
  for b = 1, #names do
    z[2 * b - 1] = deadline
    z[2 * b] = names[b]
    c[2 * b - 1] = names[b]
    if b < #names then c[2 * b] = 1000 else c[2 * b] = n - 1000 * (#names - 1) end
  end
  redis.call('ZADD', K_DEADLINES, unpack(z))
  redis.call('HSET', K_BATCHES, unpack(c))
  vcall('HSET', K_LEASED, h)
  local out = { now, deadline, -1, #names }
  local o = 4
  for b = 1, #names do
    o = o + 1
    out[o] = names[b]
  end
  for k = 1, n do out[o + k] = entries[k] end
  return out
end

-- Which of the given tokens ARGV[i..j] are held right now: leased, deadline ahead (on the
-- server clock), and not repeated earlier in the list. Returns the booleans, the entries (with
-- `bytes`; else only true / false for leased or not), and true when every one is held.
local function held_argv(i, j, now, bytes)
  local n = j - i + 1
  local entries = {}
  -- Presence only is asked for: one HSTRLEN per token reads no bytes, where HMGET copies each
  -- entry into Lua. HMGET is cheaper for small entries (about 0.5 us a message less at 100
  -- bytes), HSTRLEN for large ones (a third of an end-to-end message at 10 KiB). Entries of
  -- one batch tend to be alike, so the first one decides.
  if not bytes and redis.call('HSTRLEN', K_LEASED, ARGV[i]) < 2048 then bytes = true end
  if bytes then
    local k = 0
    local s = i
    while s <= j do
      local e = s + CHUNK - 1
      if e > j then e = j end
      local r = redis.call('HMGET', K_LEASED, unpack(ARGV, s, e))
      for x = 1, e - s + 1 do
        k = k + 1
        entries[k] = r[x]
      end
      s = e + 1
    end
  else
    for x = 1, n do
      entries[x] = redis.call('HSTRLEN', K_LEASED, ARGV[i + x - 1]) > 0
    end
  end
  local live = all_live(now)
  local dls = nil
  if not live then
    local toks = {}
    for x = 1, n do toks[x] = ARGV[i + x - 1] end
    dls = deadlines_of(toks)
  end
  local oks, seen, all = {}, {}, true
  for x = 1, n do
    local t = ARGV[i + x - 1]
    local ok = false
    if entries[x] and not seen[t] and (live or (dls[x] and dls[x] > now)) then
      ok = true
      seen[t] = true
    end
    oks[x] = ok
    if not ok then all = false end
  end
  return oks, entries, all
end

-- Milliseconds until the earliest delayed message is due or lease ends (-1: none).
local function next_due(now)
  local best = -1
  local d = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if d[2] then best = math.floor(tonumber(d[2]) / DSEQ) end
  local l = redis.call('ZRANGE', K_DEADLINES, 0, 0, 'WITHSCORES')
  if l[2] and (best < 0 or tonumber(l[2]) < best) then best = tonumber(l[2]) end
  if best < 0 then return -1 end
  local ms = best - now
  if ms < 0 then ms = 0 end
  return ms
end

-- Flow control at a claim (Q14, Q15, E8; see the control hash in lib.lua). Returns how many
-- of the n asked for this claim may lease, and the rate-limit state (nil when unlimited):
-- { window start, deliveries counted in it, per, max }. Paused: 0. Rate-limited: at most the
-- window's remaining budget and at most a quarter of max (at least 1) per claim, as core's
-- RateLimit::grant_cap. An unpaused, unlimited queue or group pays the one HMGET of a key that
-- does not exist.
local function claim_allows(n, now)
  local c = redis.call('HMGET', K_CTL, 'paused', 'max', 'per')
  if not (c[1] or c[2]) then return n, nil end
  if c[1] then return 0, nil end
  if GROUP_MODE then return n, nil end
  local max, per = tonumber(c[2]), tonumber(c[3])
  if not max or not per or max < 1 or per < 1 then return n, nil end
  local w = now - now % per
  local got = redis.call('HMGET', K_RATE, 'w', 'n')
  local used = 0
  if tonumber(got[1]) == w then used = tonumber(got[2]) or 0 end
  local left = max - used
  local cap = math.ceil(max / 4)
  if left > cap then left = cap end
  if left < n then n = left end
  if n < 0 then n = 0 end
  return n, { w, used, per, max }
end

-- Count k leased entries in the rate-limit window (Q15): the key lives a few windows after
-- its last write, so an idle queue's count does not stay behind.
local function rate_spend(rate, k)
  if not rate or k <= 0 then return end
  redis.call('HSET', K_RATE, 'w', format('%d', rate[1]), 'n', rate[2] + k)
  redis.call('PEXPIRE', K_RATE, 3 * rate[3])
end

-- When an empty claim should look again (ms, -1: only a publish can help): the next due
-- delayed message or lease deadline, or, when a rate limit's window is spent while messages
-- are ready, the start of the next window (a wake-up instant like a due time).
local function held_due(now, rate)
  local due = next_due(now)
  if rate and rate[2] >= rate[4]
    and redis.call('EXISTS', K_READY[1], K_READY[2], K_READY[3], K_READY[4]) > 0 then
    local e = rate[1] + rate[3] - now
    if due < 0 or e < due then due = e end
  end
  return due
end

-- Trim a topic's log to its retention (length and age). Appends trim by length too; this
-- catches retention changed since, and age passing without appends.
local function trim_log(now)
  if not GROUP_MODE then return end
  local max_len = tonumber(ARGV[8])
  local max_age = tonumber(ARGV[9])
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
