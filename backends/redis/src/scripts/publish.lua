-- publish.lua: store a batch of messages (Q1, Q7).
--
-- Atomic: the whole batch is stored in one script run, so other clients see all of it or
-- none of it (no partial batch), each message lands in exactly one place (a ready list or the
-- delayed set), and the wake-up tokens are pushed in the same step, so a consumer that checked
-- an empty queue and is about to block cannot miss the messages.
--
-- ARGV[A]: n, then the number of messages ready now at each priority (4 values, Critical
-- first), then (id, wire bytes) per message: the ready-now ones grouped by priority (batch
-- order within a priority), then the delayed ones in batch order; then per delayed message its
-- priority (0..3) and delay in ms relative to the server's now.
-- The pairs are passed to HSET straight from ARGV and nothing is converted per ready message:
-- the script's per-message work is one table store per id.
-- Reply: the server time (ms).

local now = now_ms()
local n = tonumber(ARGV[A])
local first = A + 5
local after = first + 2 * n
acall('HSET', K_MSGS, first, after - 1)
local b = first
local nready = 0
for p = 1, 4 do
  local c = tonumber(ARGV[A + p])
  if c > 0 then
    local r = {}
    for k = 1, c do
      r[k] = ARGV[b]
      b = b + 2
    end
    vcall('RPUSH', K_READY[p], r)
    nready = nready + c
  end
end
local z = {}
local d = after
for k = 1, n - nready do
  z[2 * k - 1] = now + tonumber(ARGV[d + 1])
  z[2 * k] = ARGV[d] .. '|' .. ARGV[b]
  b = b + 2
  d = d + 2
end
delay_add(z)
count('published', n)
if #z > 0 then nready = nready + 1 end
wake(nready)
return now
