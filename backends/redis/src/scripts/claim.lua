-- claim.lua: lease up to n messages of a queue (Q2, Q3, Q4).
--
-- Atomic: maintenance (expired leases back to retry or dead letters, due delayed messages to
-- their ready lists) and the lease itself happen in one script run, so a message is never
-- both ready and leased, never leased twice, and never lost between pop and lease (a reliable
-- fetch: there is no moment where a message was popped but not yet recorded as leased).
--
-- Expiry (Q12): the entries popped after their expiry are expired instead (in the same run, on
-- the server clock) and do not count towards n (see take_live in lib_more.lua).
--
-- Flow control (Q14, Q15): after the maintenance (so expired leases and due messages move as
-- usual), a paused queue leases nothing, and a rate limit caps n by the current window's
-- budget (claim_allows in lib_more.lua); the entries leased are counted in the window in this
-- same run (rate_spend), so processes sharing the queue share the budget exactly.
--
-- ARGV[A]: n. ARGV[A + 1]: '1' keeps expired messages as dead letters, '0' drops them.
-- Reply: see lease() in lib_more.lua; when nothing was leased: { now, 0, next_due_ms }, where
-- next_due_ms says when to look again (-1: only a publish can help; 0: at once, the claim
-- stopped at its bound on expired entries; a spent rate-limit window: when the next starts).

local now = now_ms()
maintain(now)
local n, rate = claim_allows(tonumber(ARGV[A]), now)
local entries, cut = {}, false
if n > 0 then entries, cut = take_live(n, now, ARGV[A + 1] == '1') end
if #entries == 0 then
  if cut then return { now, 0, 0 } end
  -- Idle (or held back by a pause or a spent window): drop stale wake-up tokens so the
  -- caller's BLPOP waits for a new event. Safe: a publish, resume or new limit after this
  -- point pushes a fresh token.
  redis.call('DEL', K_WAKE)
  return { now, 0, held_due(now, rate) }
end
rate_spend(rate, #entries)
return lease(entries, now)
