-- settle.lua: ack / retry / bury / release a batch of deliveries (Q4, Q5, Q6).
--
-- Atomic: each operation checks its lease (the token is in the leased hash and its deadline,
-- its own after an extend or else its batch's, is still ahead on the server clock) and applies
-- its move in the same script run, so a stale holder can never change a message that expired
-- or went to another consumer (LeaseLost, nothing changes), and a batch settles with one round
-- trip and one variadic command per kind of change.
--
-- ARGV[A]: n; ARGV[A + 1]: the kinds, one character per operation ('a' ack, 'r' retry,
-- 'b' bury, 'l' release, 'u' bury an entry the client could not decode); ARGV[A + 2 .. A + 1
-- + n]: the lease tokens; then the extras in operation order: one per retry (delay in ms) and
-- per bury (error text), two per 'u' (the 16-byte id to file it under, the error text).
-- 'u' counts one attempt whatever the entry's bytes say: junk is buried on the delivery that
-- found it (see lib.lua), and its bytes cannot be trusted to count anything.
-- Reply: one integer per operation, 1 = done, 0 = lease lost; or, when the batch is all acks
-- and every one is held (a worker's usual batch), the integer n alone.

local now = now_ms()
local n = tonumber(ARGV[A])
local kinds = ARGV[A + 1]
local first = A + 2
local last = A + 1 + n
local all_acks = kinds == string.rep('a', n)
-- A queue's acks need no entry bytes (a group's do: they name the stream entry to XACK),
-- unless the queue holds deduplication keys (Q11): an acked holder frees its key.
local keys_held = false
if not GROUP_MODE and all_acks then keys_held = keyed() end
local oks, entries, all_held = held_argv(first, last, now,
  GROUP_MODE or not all_acks or keys_held)
if all_held and all_acks then
  -- Fast path: no per-operation bookkeeping and a one-integer reply.
  acall('HDEL', K_LEASED, first, last)
  -- Extended tokens have a deadline of their own; drop those with the lease.
  acall('ZREM', K_DEADLINES, first, last)
  local toks = {}
  for i = 1, n do toks[i] = ARGV[first + i - 1] end
  unbatch(toks)
  forget(entries)
  if keys_held then leave_keys(entries, now) end
  count('acked', n)
  return n
end
local res = {}
local gone, gk = {}, 0
local acks = {}
local r_ents, r_delays = {}, {}
local b_ents, b_atts, b_errs, b_ids = {}, {}, {}, {}
local front = { {}, {}, {}, {} }
local nrelease = 0
local x = last + 1
for i = 1, n do
  local k = byte(kinds, i)
  local extra, id
  if k == 114 or k == 98 then
    extra = ARGV[x]
    x = x + 1
  elseif k == 117 then
    id, extra = ARGV[x], ARGV[x + 1]
    x = x + 2
  end
  if oks[i] then
    res[i] = 1
    local e = entries[i]
    gk = gk + 1
    gone[gk] = ARGV[A + 1 + i]
    if k == 97 then
      acks[#acks + 1] = e
    elseif k == 117 then
      local j = #b_ents + 1
      b_ents[j], b_atts[j], b_errs[j], b_ids[j] = e, 1, extra, id
    else
      e = plain(e)
      local _, a = entry_info(e)
      if k == 114 then
        local j = #r_ents + 1
        r_ents[j], r_delays[j] = with_attempts(e, a + 1), tonumber(extra)
      elseif k == 98 then
        local j = #b_ents + 1
        b_ents[j], b_atts[j], b_errs[j] = e, a + 1, extra
      else
        -- Release: the attempt does not count (the entry keeps its count), and the message
        -- goes back to the very front of its level, as if released one after the other (the
        -- reference model's push_front).
        local f = front[level(e)]
        f[#f + 1] = e
        nrelease = nrelease + 1
      end
    end
  else
    res[i] = 0
  end
end
vcall('HDEL', K_LEASED, gone)
-- Extended tokens have a deadline of their own; drop those with the lease.
vcall('ZREM', K_DEADLINES, gone)
unbatch(gone)
if #acks > 0 then
  forget(acks)
  leave_keys(acks, now)
  count('acked', #acks)
end
local nready, ndelayed = schedule(r_ents, r_delays, now)
count('retried', #r_ents)
bury(b_ents, b_atts, b_errs, now, b_ids)
for p = 1, 4 do vcall('LPUSH', K_READY[p], front[p]) end
if ndelayed > 0 then nready = nready + 1 end
wake(nready + nrelease)
return res
