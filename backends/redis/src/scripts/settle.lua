-- settle.lua: ack / retry / bury / release a batch of deliveries (Q4, Q5, Q6).
--
-- Atomic: each operation checks its lease (the delivery's "id|token|attempt" member is in the
-- lease set with a deadline still ahead, on the server clock) and applies its move in the
-- same script run, so a stale holder can never change a message that expired or went to
-- another consumer (LeaseLost, nothing changes), and a batch settles with one round trip and
-- one variadic command per kind of change.
--
-- ARGV[A]: n, then per operation: kind ('a' ack, 'r' retry, 'b' bury, 'l' release), lease
-- member "id|token|attempt", extra (retry: delay in ms; bury: error text; else '').
-- Reply: one integer per operation, 1 = done, 0 = lease lost.

local now = now_ms()
local n = tonumber(ARGV[A])
local kinds, members, extras = {}, {}, {}
for i = 1, n do
  local b = A + 1 + (i - 1) * 3
  kinds[i] = ARGV[b]
  members[i] = ARGV[b + 1]
  extras[i] = ARGV[b + 2]
end
local oks = held(members, now)
local res = {}
local unlease, uk = {}, 0
local acks, ak = {}, 0
local r_ids, r_atts, r_ps, r_delays = {}, {}, {}, {}
local b_ids, b_atts, b_ps, b_errs = {}, {}, {}, {}
local front = { {}, {}, {}, {} }
local nrelease = 0
for i = 1, n do
  if oks[i] then
    res[i] = 1
    uk = uk + 1
    unlease[uk] = members[i]
    local k = kinds[i]
    if k == 'a' then
      ak = ak + 1
      local m = members[i]
      acks[ak] = string.sub(m, 1, string.find(m, '|', 1, true) - 1)
    else
      local id, p, a = member_parse(members[i])
      if k == 'r' then
        local j = #r_ids + 1
        r_ids[j], r_atts[j], r_ps[j], r_delays[j] = id, a, p, tonumber(extras[i])
      elseif k == 'b' then
        local j = #b_ids + 1
        b_ids[j], b_atts[j], b_ps[j], b_errs[j] = id, a, p, extras[i]
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
vcall('ZREM', K_LEASES, unlease)
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
