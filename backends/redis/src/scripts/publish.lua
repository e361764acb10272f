-- publish.lua: store a batch of messages (Q1, Q7).
--
-- Atomic: the whole batch is stored in one script run, so other clients see all of it or
-- none of it (no partial batch), each message lands in exactly one place (a ready list or the
-- delayed set), and the wake-up tokens are pushed in the same step, so a consumer that checked
-- an empty queue and is about to block cannot miss the messages.
--
-- ARGV[A]: n, then per message: id, priority (0..3), delay in ms relative to the server's now
-- (0 = ready now), wire bytes.
-- Reply: the server time (ms).

local now = now_ms()
local n = tonumber(ARGV[A])
local hm, z = {}, {}
local ready = { {}, {}, {}, {} }
local rk = { 0, 0, 0, 0 }
local zk = 0
local nready = 0
for i = 0, n - 1 do
  local b = A + 1 + i * 4
  local id = ARGV[b]
  hm[2 * i + 1] = id
  hm[2 * i + 2] = ARGV[b + 3]
  local rel = tonumber(ARGV[b + 2])
  if rel > 0 then
    z[zk + 1] = now + rel
    z[zk + 2] = ARGV[b + 1] .. '|' .. id
    zk = zk + 2
  else
    local p = tonumber(ARGV[b + 1]) + 1
    local k = rk[p] + 1
    rk[p] = k
    ready[p][k] = id
    nready = nready + 1
  end
end
vcall('HSET', K_MSGS, hm)
for p = 1, 4 do vcall('RPUSH', K_READY[p], ready[p]) end
delay_add(z)
count('published', n)
if zk > 0 then nready = nready + 1 end
wake(nready)
return now
