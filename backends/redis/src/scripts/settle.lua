-- settle.lua: ack / retry / bury / release a batch of deliveries (Q4, Q5, Q6).
--
-- Atomic: each operation checks its lease (the delivery's "id|token|attempt" member is in the
-- lease set with a deadline still ahead, on the server clock) and applies its move in the
-- same script run, so a stale holder can never change a message that expired or went to
-- another consumer (LeaseLost, nothing changes), and a batch settles with one round trip and
-- one variadic command per kind of change.
--
-- ARGV[A]: n; ARGV[A + 1]: the kinds, one character per operation ('a' ack, 'r' retry,
-- 'b' bury, 'l' release); ARGV[A + 2 .. A + 1 + n]: the lease members "id|token|attempt";
-- then one extra per retry (delay in ms) and per bury (error text), in operation order.
-- The members are passed to ZMSCORE (and, when every one is held, to ZREM) straight from ARGV.
-- Reply: one integer per operation, 1 = done, 0 = lease lost; or, when the batch is all acks
-- and every one is held (a worker's usual batch), the integer n alone.

local now = now_ms()
local n = tonumber(ARGV[A])
local kinds = ARGV[A + 1]
local first = A + 2
local last = A + 1 + n
local oks, all_held = held_argv(first, last, now)
if all_held and kinds == string.rep('a', n) then
  -- Fast path: no per-operation bookkeeping and a one-integer reply.
  acall('ZREM', K_LEASES, first, last)
  local ids = {}
  local find, sub = string.find, string.sub
  for i = 1, n do
    local m = ARGV[last - n + i]
    ids[i] = sub(m, 1, find(m, '|', 1, true) - 1)
  end
  forget(ids)
  count('acked', n)
  return n
end
local res = {}
local unlease, uk = {}, 0
local acks, ak = {}, 0
local r_ids, r_atts, r_ps, r_delays = {}, {}, {}, {}
local b_ids, b_atts, b_ps, b_errs = {}, {}, {}, {}
local front = { {}, {}, {}, {} }
local nrelease = 0
local x = last + 1
local byte, find, sub = string.byte, string.find, string.sub
for i = 1, n do
  local k = byte(kinds, i)
  local extra
  if k == 114 or k == 98 then
    extra = ARGV[x]
    x = x + 1
  end
  if oks[i] then
    res[i] = 1
    local m = ARGV[A + 1 + i]
    uk = uk + 1
    unlease[uk] = m
    if k == 97 then
      ak = ak + 1
      acks[ak] = sub(m, 1, find(m, '|', 1, true) - 1)
    else
      local id, p, a = member_parse(m)
      if k == 114 then
        local j = #r_ids + 1
        r_ids[j], r_atts[j], r_ps[j], r_delays[j] = id, a, p, tonumber(extra)
      elseif k == 98 then
        local j = #b_ids + 1
        b_ids[j], b_atts[j], b_ps[j], b_errs[j] = id, a, p, extra
      else
        -- Release: the attempt does not count, and the message goes back to the very front of
        -- its level, as if released one after the other (the reference model's push_front).
        local f = front[p + 1]
        f[#f + 1] = entry(id, a - 1)
        nrelease = nrelease + 1
      end
    end
  else
    res[i] = 0
  end
end
if uk == n then
  acall('ZREM', K_LEASES, first, last)
else
  vcall('ZREM', K_LEASES, unlease)
end
if ak > 0 then
  forget(acks)
  count('acked', ak)
end
local nready, ndelayed = schedule(r_ids, r_atts, r_ps, r_delays, now)
count('retried', #r_ids)
bury(b_ids, b_atts, b_ps, b_errs, now)
for p = 1, 4 do vcall('LPUSH', K_READY[p], front[p]) end
if ndelayed > 0 then nready = nready + 1 end
wake(nready + nrelease)
return res
