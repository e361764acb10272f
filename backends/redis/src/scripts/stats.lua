-- stats.lua: one consistent snapshot of a queue (Q8).
--
-- Atomic: maintenance first (so expired leases and due messages are counted where they are
-- now), then every gauge and counter is read in the same script run: the numbers add up
-- (Q9) even while other clients publish and settle.
--
-- Reply: { ready0, ready1, ready2, ready3, delayed, in_flight, dead,
--          published, acked, retried, dead_lettered, deduplicated, expired,
--          paused (1/0), rate limit max (0: none), its window in ms, and in ns }.
-- Messages past their expiry (Q12) are counted where they are until a claim reaches them.

local now = now_ms()
maintain(now)
local out = {}
for p = 1, 4 do out[p] = redis.call('LLEN', K_READY[p]) end
out[5] = redis.call('ZCARD', K_DELAYED)
out[6] = redis.call('HLEN', K_LEASED)
out[7] = redis.call('ZCARD', K_DEAD)
local c = redis.call('HMGET', K_COUNTERS, 'published', 'acked', 'retried', 'dead_lettered',
  'deduplicated', 'expired')
for i = 1, 6 do out[7 + i] = tonumber(c[i] or 0) or 0 end
local ctl = redis.call('HMGET', K_CTL, 'paused', 'max', 'per', 'per_ns')
if ctl[1] then out[14] = 1 else out[14] = 0 end
for i = 2, 4 do out[13 + i] = ctl[i] or '0' end
return out
