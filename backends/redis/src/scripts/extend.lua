-- extend.lua: push a lease's deadline to now + visibility (Q4).
--
-- Atomic: the lease check (the token is leased and its deadline is ahead, on the server clock)
-- and the new deadline are one step, so an expired lease can never be revived after it was
-- reclaimed or re-leased. The token gets a deadline of its own, which wins over its batch's.
--
-- ARGV[A]: lease token, visibility_ms.
-- Reply: { 1, new_deadline } or { 0 } when the lease is lost.
local now = now_ms()
local token = ARGV[A]
if redis.call('HEXISTS', K_LEASED, token) == 0 then return { 0 } end
local d = deadlines_of({ token })[1]
if not d or d <= now then return { 0 } end
local deadline = now + tonumber(ARGV[A + 1])
redis.call('ZADD', K_DEADLINES, deadline, token)
return { 1, deadline }
