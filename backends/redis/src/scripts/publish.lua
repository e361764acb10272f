-- publish.lua: store a batch of messages (Q1, Q7).
--
-- Atomic: the whole batch is stored in one script run, so other clients see all of it or
-- none of it (no partial batch), each message lands in exactly one place (a ready list or the
-- delayed set), and the wake-up tokens are pushed in the same step, so a consumer that checked
-- an empty queue and is about to block cannot miss the messages.
--
-- ARGV[A]: n, then the number of messages ready now at each priority (4 values, Critical
-- first), then the wire bytes of each message: the ready-now ones grouped by priority (batch
-- order within a priority), then the delayed ones in batch order, each followed by its delay
-- in ms relative to the server's now. The ready-now entries go to RPUSH straight from ARGV:
-- the script does no per-message work for them.
-- Reply: the server time (ms).

local now = now_ms()
local n = tonumber(ARGV[A])
local b = A + 5
local nready = 0
for p = 1, 4 do
  local c = tonumber(ARGV[A + p])
  if c > 0 then
    acall('RPUSH', K_READY[p], b, b + c - 1)
    b = b + c
    nready = nready + c
  end
end
local z = {}
for k = 1, n - nready do
  z[2 * k - 1] = now + tonumber(ARGV[b + 1])
  z[2 * k] = ARGV[b]
  b = b + 2
end
delay_add(z)
count('published', n)
if #z > 0 then nready = nready + 1 end
wake(nready)
return now
