-- extend.lua: push a lease's deadline to now + visibility (Q4).
--
-- Atomic: the lease check (the delivery's member and its deadline, on the server clock) and
-- the new deadline are one step, so an expired lease can never be revived after it was
-- reclaimed or re-leased.
--
-- ARGV[A]: lease member "id|token|attempt", visibility_ms.
-- Reply: { 1, new_deadline } or { 0 } when the lease is lost.

local now = now_ms()
local oks = held({ ARGV[A] }, now)
if not oks[1] then return { 0 } end
local deadline = now + tonumber(ARGV[A + 1])
redis.call('ZADD', K_LEASES, 'XX', deadline, ARGV[A])
return { 1, deadline }
