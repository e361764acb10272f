-- claim.lua: lease up to n messages of a queue (Q2, Q3, Q4).
--
-- Atomic: maintenance (expired leases back to retry or dead letters, due delayed messages to
-- their ready lists) and the lease itself happen in one script run, so a message is never
-- both ready and leased, never leased twice, and never lost between pop and lease (a reliable
-- fetch: there is no moment where a message was popped but not yet recorded as leased).
--
-- ARGV[A]: n.
-- Reply: see lease() in lib_more.lua; when nothing was leased: { now, 0, next_due_ms }, where
-- next_due_ms says when to look again (-1: only a publish can help).

local now = now_ms()
maintain(now)
local entries = take(tonumber(ARGV[A]))
if #entries == 0 then
  -- Idle: drop stale wake-up tokens so the caller's BLPOP waits for a new event. Safe: a
  -- publish after this point pushes a fresh token.
  redis.call('DEL', K_WAKE)
  return { now, 0, next_due(now) }
end
return lease(entries, now)
