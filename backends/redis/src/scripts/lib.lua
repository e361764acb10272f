-- lib.lua: the shared part of every queue and consumer-group script, followed by lib_more.lua.
-- src/scripts.rs makes two things of them: one Redis Functions library (the shared part once,
-- then one registered function per script; Redis >= 7) and, for older servers, one
-- self-contained EVAL body per script (the shared part, then the script).
--
-- Why scripts: Redis runs a script to completion with no other command interleaved, so each
-- state change below (and the maintenance it starts with) is atomic. A crash of a client can
-- never leave a message half moved: it is in exactly one of ready / delayed / leased / dead
-- (Q9). Time comes from the server (`TIME`), never from a client clock.
--
-- Speed: per message, the hot paths (publish, claim, ack) touch one field or member in a few
-- variadic commands (one HSET / HMGET / ZADD / ZREM / HDEL for the whole batch), with no
-- per-message command: publish writes the bytes and a list entry, claim pops the entry, reads
-- the bytes and adds a lease member, ack checks and removes the member and deletes the bytes.
-- What a message needs besides its bytes travels with it instead of living in another hash:
-- its attempt count in its list entry and lease member, its priority in its list (and in the
-- low two bits of its lease token), its max_attempts override in its wire header.
--
-- KEYS: the same layout for every script, all sharing one hash tag (one cluster slot):
--   1..4  ready lists, one per priority, Critical first. Entry: "id" (never delivered) or
--         "id|attempts" (deliveries counted so far). A consumer group passes its one ready
--         list four times (events have no priority order).
--   5     msgs      HASH id -> wire bytes (courier_core::wire); a dead letter's bytes live under
--                   its dead key "id#seq" instead (so a replayed or re-published id never
--                   collides with its dead copy)
--   6     info      HASH id -> stream id of the event (consumer groups only)
--   7     delayed   ZSET "priority|entry" -> due_ms * 1024 + (sequence mod 1024): due order,
--                   and insertion order among messages due in the same millisecond
--   8     leases    ZSET "id|token|attempt" -> lease deadline (ms). The member names the
--                   delivery, so one lookup checks token and deadline. token mod 4 = priority.
--   9     dead      ZSET "id#seq" -> seq, the burial sequence number (oldest first)
--   10    deadidx   ZSET "id#seq" -> 0 (finds an id's dead letters with ZRANGEBYLEX)
--   11    deadinfo  HASH "id#seq" -> "attempts|failed_at_ms|priority|error"
--   12    counters  HASH published / acked / retried / dead_lettered / token / *_seq
--   13    wake      queue: LIST of wake-up tokens (consumers BLPOP it);
--                   group: STREAM of wake-up entries (consumers XREAD it)
--   14    log       group only: the topic's STREAM
--
-- ARGV[1..12] (every script):
--   visibility_ms, max_attempts, base_ms, factor, max_delay_ms, jitter, seed,
--   dead_letter (1/0), mode ('q' queue, 'g' group), group name, retention max_len (-1 = none),
--   retention max_age_ms (0 = none).
-- The script's own arguments start at ARGV[13] (`A`).

-- The state of one call. A script is run in one of two ways (see src/scripts.rs): as a Redis
-- Function (Redis >= 7: this library is loaded once and each call only runs its function) or
-- as an EVAL body (older servers: the whole text runs on every call). Either way the
-- per-call state lives in these upvalues, set by setup() at the start of every call, so
-- nothing carries over from one call to the next.
local KEYS, ARGV
local K_READY, K_MSGS, K_INFO, K_DELAYED, K_LEASES, K_DEAD, K_DEADIDX, K_DEADINFO
local K_COUNTERS, K_WAKE, K_LOG
local VIS, DEAD_LETTER, GROUP_MODE, GROUP
local A = 13

-- The retry policy (ARGV[2..7]) is parsed only by calls that retry something (see
-- retry_policy() in lib_more.lua), and retention (ARGV[11..12]) only by trim_log(): most calls
-- need neither, and every tonumber is paid on every call.
local MAX_ATTEMPTS, BASE, FACTOR, MAX_DELAY, JITTER

local function setup(keys, argv)
  KEYS, ARGV = keys, argv
  K_READY = { keys[1], keys[2], keys[3], keys[4] }
  K_MSGS = keys[5]
  K_INFO = keys[6]
  K_DELAYED = keys[7]
  K_LEASES = keys[8]
  K_DEAD = keys[9]
  K_DEADIDX = keys[10]
  K_DEADINFO = keys[11]
  K_COUNTERS = keys[12]
  K_WAKE = keys[13]
  K_LOG = keys[14]
  VIS = tonumber(argv[1])
  DEAD_LETTER = argv[8] == '1'
  GROUP_MODE = argv[9] == 'g'
  GROUP = argv[10]
  MAX_ATTEMPTS = nil
end

-- Bounds on the maintenance done by one call, so a script never blocks the server for long.
local RECLAIM_MAX = 1000
local PROMOTE_MAX = 1000
local WAKE_CAP = 64
local CHUNK = 4000 -- arguments per variadic command (Lua's unpack has a stack limit)
local DSEQ = 1024

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- One variadic command over a long argument list, in chunks of CHUNK arguments (CHUNK is
-- even, so field/value and score/member pairs are never split).
local function vcall(cmd, key, args)
  local n = #args
  if n == 0 then return end
  if n <= CHUNK then
    redis.call(cmd, key, unpack(args))
    return
  end
  local i = 1
  while i <= n do
    local j = i + CHUNK - 1
    if j > n then j = n end
    redis.call(cmd, key, unpack(args, i, j))
    i = j + 1
  end
end

-- One variadic command over ARGV[i..j] (an even count when they are pairs), in chunks.
local function acall(cmd, key, i, j)
  while i <= j do
    local e = i + CHUNK - 1
    if e > j then e = j end
    redis.call(cmd, key, unpack(ARGV, i, e))
    i = e + 1
  end
end

-- HMGET / ZMSCORE over a long field list; missing entries come back as false.
local function vget(cmd, key, fields)
  local n = #fields
  if n == 0 then return {} end
  if n <= CHUNK then return redis.call(cmd, key, unpack(fields)) end
  local out = {}
  local k = 0
  local i = 1
  while i <= n do
    local j = i + CHUNK - 1
    if j > n then j = n end
    local r = redis.call(cmd, key, unpack(fields, i, j))
    for x = 1, j - i + 1 do
      k = k + 1
      out[k] = r[x]
    end
    i = j + 1
  end
  return out
end

-- A ready entry: "id" or "id|attempts".
local function entry(id, att)
  if att > 0 then return id .. '|' .. att end
  return id
end

local function entry_parse(e)
  local bar = string.find(e, '|', 1, true)
  if not bar then return e, 0 end
  return string.sub(e, 1, bar - 1), tonumber(string.sub(e, bar + 1))
end

-- A lease member "id|token|attempt" -> id, priority, attempt. A token is never turned into a
-- number here (it may exceed a double's exact range): see lease() for its layout. Tokens of
-- the older layout (priority = token mod 4) are still read.
local function member_parse(m)
  local id, tok, att = string.match(m, '^(.*)|(%d+)|(%d+)$')
  local p
  if #tok == 19 and string.byte(tok, 1) == 49 then
    p = string.byte(tok, 19) - 48
  else
    p = tonumber(tok) % 4
  end
  return id, p, tonumber(att)
end

local function count(field, n)
  if n > 0 then redis.call('HINCRBY', K_COUNTERS, field, n) end
end

-- Add (due, member) pairs (flat list: due1, m1, due2, m2, ...) to the delayed set, in order.
local function delay_add(z)
  local n = #z / 2
  if n == 0 then return end
  local seq = redis.call('HINCRBY', K_COUNTERS, 'delay_seq', n) - n
  for i = 1, #z, 2 do
    seq = seq + 1
    z[i] = z[i] * DSEQ + (seq % DSEQ)
  end
  vcall('ZADD', K_DELAYED, z)
end

-- Tell idle consumers that something changed (new ready messages, or a new earliest due
-- time). A queue pushes up to n tokens (one BLPOP waiter wakes per token); a group appends
-- one entry to its wake stream (every XREAD waiter wakes).
local function wake(n)
  if n <= 0 then return end
  if GROUP_MODE then
    redis.call('XADD', K_WAKE, 'MAXLEN', '~', 16, '*', 'w', '1')
    return
  end
  if n > WAKE_CAP then n = WAKE_CAP end
  local t = {}
  for i = 1, n do t[i] = '1' end
  redis.call('LPUSH', K_WAKE, unpack(t))
  redis.call('LTRIM', K_WAKE, 0, WAKE_CAP - 1)
end

