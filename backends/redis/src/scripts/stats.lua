-- stats.lua: one consistent snapshot of a queue (Q8).
--
-- Atomic: maintenance first (so expired leases and due messages are counted where they are
-- now), then every gauge and counter is read in the same script run: the numbers add up
-- (Q9) even while other clients publish and settle.
--
-- Reply: { ready0, ready1, ready2, ready3, delayed, in_flight, dead,
--          published, acked, retried, dead_lettered, deduplicated, expired }.
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
return out
