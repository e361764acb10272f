-- lib.lua: the shared part of every queue and consumer-group script, followed by expiry.lua
-- and lib_more.lua.
-- src/scripts.rs makes two things of them: one Redis Functions library (the shared part once,
-- then one registered function per script; Redis >= 7) and, for older servers, one
-- self-contained EVAL body per script (the shared part, then the script).
--
-- Why scripts: Redis runs a script to completion with no other command interleaved, so each
-- state change below (and the maintenance it starts with) is atomic. A crash of a client can
-- never leave a message half moved: it is in exactly one of ready / delayed / leased / dead
-- (Q9). Time comes from the server (`TIME`), never from a client clock.
--
-- Speed: a message's wire bytes are its entry. Publish pushes the bytes straight from ARGV onto
-- a ready list; claim pops them, stores them under a fresh lease token and returns them; ack
-- checks and deletes the tokens. Per message that is one list element and one hash field,
-- moved by one variadic command per batch (RPUSH, LPOP, HSET, HMGET, HDEL), with no lookup
-- by message id and no per-message string built in Lua on the hot paths. What a message needs
-- besides its bytes is in its wire header (docs/wire-format.md): its priority, its max_attempts
-- override, and its attempt field, which in a stored entry counts the deliveries made so far.
-- Deadlines are kept per claim batch, not per message (one ZADD per claim).
--
-- KEYS: the same layout for every script, all sharing one hash tag (one cluster slot):
--   1..4  ready lists, one per priority, Critical first. Entry: the wire bytes. A consumer
--         group passes its one ready list four times (events have no priority order).
--   5     msgs      HASH "id#seq" -> wire bytes of a dead letter (so a replayed or
--                   re-published id never collides with its dead copy)
--   6     info      HASH raw 16-byte id -> stream id of the event (consumer groups only)
--   7     delayed   ZSET "sequence (12 digits)" .. entry -> due_ms * 1024 + (sequence mod
--                   1024): due order, and insertion order among messages due in the same ms
--   8     leased    HASH token -> entry, one field per delivery being handled
--   9     dead      ZSET "id#seq" -> seq, the burial sequence number (oldest first)
--   10    deadidx   ZSET "id#seq" -> 0 (finds an id's dead letters with ZRANGEBYLEX)
--   11    deadinfo  HASH "id#seq" -> "attempts|failed_at_ms|priority|error"
--   12    counters  HASH published / acked / retried / dead_lettered / expired /
--                   deduplicated / *_seq
--   13    wake      queue: LIST of wake-up tokens (consumers BLPOP it);
--                   group: STREAM of wake-up entries (consumers XREAD it)
--   14    deadlines ZSET lease deadlines (ms): a claim batch (its 15-digit name) -> the
--                   deadline of all its tokens, and an extended token -> its own deadline,
--                   which then wins over its batch's
--   15    batches   HASH claim batch name -> how many of its tokens are still leased; a batch
--                   leaves the deadlines when its last token is settled
--   16    queue: dedup  HASH deduplication key (Q11) -> its holder: the 16-byte id of the
--                   message last accepted with it, '1' while that message is live (ready,
--                   delayed, leased, waiting for a retry) else '0', then hold_until in ms
--                   (decimal; '0' = no window). The key is taken while the holder is live or
--                   the server's now < hold_until. Absent when no key is held, so a queue that
--                   never used keys pays one EXISTS on an all-ack settle and nothing else.
--         group: log    the topic's STREAM (groups never use deduplication keys)
--   17    queue: holds  ZSET deduplication key -> hold_until, for keys accepted with a
--                   window: keyed publishes forget, in bounded steps, the keys whose window
--                   passed and whose holder is no longer live (see purge_holds)
--         group: ctl    the group's control HASH (as a queue's 18th key: `paused` only)
--   18    queue: ctl    control HASH (flow control): `paused` = '1' while paused (Q14, E8),
--                   `max` and `per` (ms) while rate-limited (Q15). A field is there only while
--                   it applies, so the key is absent for an unpaused, unlimited queue: a claim
--                   then pays one HMGET of a missing key (see claim_allows in lib_more.lua).
--   19    queue: rate   HASH `w` (the start of the counted window, ms, aligned to the epoch)
--                   and `n` (deliveries leased in it, across every process): written by the
--                   claim that leases, expiring a few windows after its last write
--
-- A lease token is 18 decimal digits: the batch name ('1', an 11-digit sequence number from
-- the counters, the batch size minus one in 3 digits) and the index in the batch (3 digits).
-- A claim makes one batch per 1000 messages. The client derives each token from the batch
-- names in the claim reply, so no token is built or sent per message.
--
-- An entry that does not decode (a corrupt or foreign writer, a newer wire version) is still
-- leased and returned: the client finds it undecodable and buries it (Q10) with settle's 'u'
-- operation, which names the id to file it under. Such bytes are then kept wrapped: 0xC7 0xFF,
-- a 16-byte id, then the raw bytes (inject_raw, a test hook, stores bytes wrapped too). The
-- wrap is how junk keeps its dead letter's id and its bytes through a requeue: the dead letter
-- stores the wrapped form, a requeue puts it back as it is, and the client decodes the bytes
-- inside a wrap, so the same bytes fail with the same error on every delivery (never "version
-- 255"). The id is the one the entry carries if it can be trusted (the id field of a version-1
-- or version-2 header or of a wrap, and not nil; see has_id), else a fresh one: the client's (a new
-- MessageId), or, for junk buried here after its lease expired without the client burying it,
-- one made from the time and the dead-letter sequence number (see dead_form). So every dead
-- letter has an id of its own, and the attempts of junk are the deliveries Courier counted (one:
-- junk is buried on the delivery that finds it), never a number read from the junk. (Junk whose
-- lease expired is counted by reclaim() like any entry: bytes that look like wire bytes, a
-- version-1 or version-2 header and 51 or 53 bytes or more, cannot be told from a message
-- there.)
-- A wrapped entry whose inner bytes do decode (readers upgraded since it was buried) is
-- delivered as that message; a settle unwraps it (see plain), an expired lease buries it.
--
-- Message expiry (Q12; not the subject of expiry.lua, which handles expired leases): a
-- version-2 entry may carry its expires_at (extension tag 2, see entry_expiry). Only a claim
-- looks at it: take_live (lib_more.lua) checks each entry it pops against the server's now and,
-- when now >= expires_at, expires it instead of leasing it (see expire: a dead letter "expired"
-- with the deliveries made so far as its attempts, or dropped; counted in `expired`, not in
-- dead_lettered; its deduplication key left as a bury leaves it), then pops more in its place
-- until n live entries are leased, nothing is ready, or EXPIRE_MAX entries were expired in the
-- call. Until a claim reaches it, a message past its expiry stays ready or delayed (and stats
-- count it there); a leased one finishes normally. Wrapped and junk entries never expire. An
-- entry with no extension pays one byte read for the check.
--
-- ARGV[1..9] (every script):
--   visibility_ms, max_attempts, delay table (core's retry delays, see expiry.lua), seed,
--   dead_letter (1/0), mode ('q' queue, 'g' group), group name, retention max_len (-1 = none),
--   retention max_age_ms (0 = none).
-- The script's own arguments start at ARGV[10] (`A`). claim.lua and group_claim.lua take two:
--   ARGV[A] n (how many to lease), ARGV[A + 1] '1' to keep expired messages as dead letters,
--   '0' to drop them (the config's keeps_expired(): dead_letter and not drop_expired).

-- The state of one call. A script is run in one of two ways (see src/scripts.rs): as a Redis
-- Function (Redis >= 7: this library is loaded once and each call only runs its function) or
-- as an EVAL body (older servers: the whole text runs on every call). Either way the
-- per-call state lives in these upvalues, set by setup() at the start of every call, so
-- nothing carries over from one call to the next.
local KEYS, ARGV
local K_READY, K_MSGS, K_INFO, K_DELAYED, K_LEASED, K_DEAD, K_DEADIDX, K_DEADINFO
local K_COUNTERS, K_WAKE, K_DEADLINES, K_BATCHES, K_LOG, K_DEDUP, K_HOLDS, K_CTL, K_RATE
local VIS, DEAD_LETTER, GROUP_MODE, GROUP
local A = 10

-- The retry policy (ARGV[2..4]) is parsed only by calls that retry something (see
-- retry_policy() in expiry.lua), and retention (ARGV[8..9]) only by trim_log(): most calls
-- need neither, and every tonumber is paid on every call.
local MAX_ATTEMPTS, DELAYS

-- String functions, set by setup(): a Redis Functions library may not read the `string`
-- global while it loads, only when a function runs.
local byte, char, sub, format

local function setup(keys, argv)
  KEYS, ARGV = keys, argv
  K_READY = { keys[1], keys[2], keys[3], keys[4] }
  K_MSGS = keys[5]
  K_INFO = keys[6]
  K_DELAYED = keys[7]
  K_LEASED = keys[8]
  K_DEAD = keys[9]
  K_DEADIDX = keys[10]
  K_DEADINFO = keys[11]
  K_COUNTERS = keys[12]
  K_WAKE = keys[13]
  K_DEADLINES = keys[14]
  K_BATCHES = keys[15]
  VIS = tonumber(argv[1])
  DEAD_LETTER = argv[5] == '1'
  GROUP_MODE = argv[6] == 'g'
  if GROUP_MODE then
    K_LOG, K_DEDUP, K_HOLDS, K_CTL, K_RATE = keys[16], nil, nil, keys[17], nil
  else
    K_LOG, K_DEDUP, K_HOLDS, K_CTL, K_RATE = nil, keys[16], keys[17], keys[18], keys[19]
  end
  GROUP = argv[7]
  MAX_ATTEMPTS, DELAYS = nil, nil
  byte, char, sub, format = string.byte, string.char, string.sub, string.format
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


-- Is this entry Courier wire bytes: version 1 (at least the 51 bytes of the smallest one), or
-- version 2, a message with optional fields (version 1's layout, then the extension of tagged
-- fields and its length as a big-endian u16 in the last two bytes: at least 53 bytes)? Both share every
-- header field read here (id, priority, attempt, max_attempts), so the scripts treat them alike.
local function is_wire(e)
  if #e < 51 or byte(e, 1) ~= 199 then return false end
  local v = byte(e, 2)
  return v == 1 or (v == 2 and #e >= 53)
end

-- The field tagged `tag` in a version-2 entry's extension (tagged fields `tag, u16 length,
-- value`, followed by the extension's u16 length as the last two bytes; docs/wire-format.md):
-- the position of its value and its length, or nil when the entry is not version-2 wire bytes,
-- has no such field, or has an extension that does not fit.
local function ext_field(e, tag)
  local n = #e
  local m, v = byte(e, 1, 2)
  -- is_wire(e) for version 2, inlined: this runs on every claimed version-2 entry.
  if v ~= 2 or m ~= 199 or n < 53 then return nil end
  local h, l = byte(e, n - 1, n)
  local pos = n - 1 - (h * 256 + l)
  if pos < 52 then return nil end
  while pos + 2 <= n - 2 do
    local t, l1, l2 = byte(e, pos, pos + 2)
    local len = l1 * 256 + l2
    if pos + 2 + len > n - 2 then return nil end
    if t == tag then return pos + 3, len end
    pos = pos + 3 + len
  end
  return nil
end

-- The deduplication key of an entry (Q11): the field tagged 1 of a version-2 entry's
-- extension. nil for any other entry, an empty key, or an extension that does not fit.
local function entry_key(e)
  local at, l = ext_field(e, 1)
  if not at or l == 0 then return nil end
  return sub(e, at, at + l - 1)
end

-- The expiry of an entry (Q12), in ms since the epoch: the field tagged 2 of a version-2
-- entry's extension, a big-endian u64 (8 bytes, as the decoder requires; exact up to 2^53 ms,
-- and any later instant stays later than every server clock). nil when the entry has none:
-- version 1, wrapped or junk bytes, or a field of another length. Callers on the claim path
-- first compare byte 2 with 2, so entries without an extension cost one byte read.
local function entry_expiry(e)
  local at, l = ext_field(e, 2)
  if not at or l ~= 8 then return nil end
  local b1, b2, b3, b4, b5, b6, b7, b8 = byte(e, at, at + 7)
  return ((((((b1 * 256 + b2) * 256 + b3) * 256 + b4) * 256 + b5) * 256 + b6) * 256 + b7) * 256
    + b8
end

-- An entry's priority (0..3) and the deliveries counted so far (its attempt field); 2 and 0
-- for an entry that is not wire bytes.
local function entry_info(e)
  if not is_wire(e) then return 2, 0 end
  local p = byte(e, 19)
  if p > 3 then p = 2 end
  local a1, a2, a3, a4 = byte(e, 20, 23)
  return p, ((a1 * 256 + a2) * 256 + a3) * 256 + a4
end

-- A copy of the wire entry e with its priority byte set to p (0..3).
local function with_priority(e, p)
  return sub(e, 1, 18) .. char(p) .. sub(e, 20)
end

-- A copy of the entry with its attempt field set to a (an entry that is not wire bytes is
-- returned as it is).
local function with_attempts(e, a)
  if not is_wire(e) then return e end
  return sub(e, 1, 19) .. char(math.floor(a / 16777216) % 256, math.floor(a / 65536) % 256,
    math.floor(a / 256) % 256, a % 256) .. sub(e, 24)
end

-- The wrapped form of bytes that are not wire bytes (see the header): 0xC7 0xFF, id, bytes.
local function is_wrapped(e)
  return #e >= 18 and byte(e, 1) == 199 and byte(e, 2) == 255
end

-- Whether an entry carries an id that can be trusted: the id field of a version-1 or version-2
-- header or of a wrap, and not the nil id (no two entries may share the nil id as their dead letters' id).
-- The same rule as the client's (carried_id in src/queue.rs).
local NIL_ID = '\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0'
local function has_id(e)
  if #e < 18 or byte(e, 1) ~= 199 then return false end
  local v = byte(e, 2)
  return (v == 1 or v == 2 or v == 255) and sub(e, 3, 18) ~= NIL_ID
end

-- A delivered entry as it is settled: a wrapped entry whose inner bytes are wire bytes was
-- delivered as that message (the client decoded it), so it is settled as the message itself
-- (its attempts counted, its dead letter under its own id). Anything else as it is.
local function plain(e)
  if is_wrapped(e) then
    local inner = sub(e, 19)
    if is_wire(inner) then return inner end
  end
  return e
end

-- The message id of an entry as text (the nil id when the entry carries none).
local UUID = '%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x'
local function entry_id(e)
  if #e >= 18 and byte(e, 1) == 199 then return format(UUID, byte(e, 3, 18)) end
  return '00000000-0000-0000-0000-000000000000'
end

-- The raw 16 bytes of a text id (zeros when it is not one).
local function raw_id(text)
  local hex = string.gsub(text, '-', '')
  if #hex ~= 32 or string.find(hex, '[^%x]') then return string.rep('\0', 16) end
  return (string.gsub(hex, '..', function(h) return char(tonumber(h, 16)) end))
end

-- Three-digit strings '000'..'999', made on first use.
local IDX = {}
local function idx3(x)
  local s = IDX[x]
  if not s then
    s = format('%03d', x)
    IDX[x] = s
  end
  return s
end

local function count(field, n)
  if n > 0 then redis.call('HINCRBY', K_COUNTERS, field, n) end
end

-- Add (due, entry) pairs (flat list: due1, e1, due2, e2, ...) to the delayed set, in order.
-- Each member is the entry behind a 12-digit sequence number, so two entries with the same
-- bytes (one message published twice) stay two messages.
local function delay_add(z)
  local n = #z / 2
  if n == 0 then return end
  local seq = redis.call('HINCRBY', K_COUNTERS, 'delay_seq', n) - n
  for i = 1, #z, 2 do
    seq = seq + 1
    z[i] = z[i] * DSEQ + (seq % DSEQ)
    z[i + 1] = format('%012d', seq % 1000000000000) .. z[i + 1]
  end
  vcall('ZADD', K_DELAYED, z)
end

-- The entry of a delayed-set member (see delay_add).
local function delayed_entry(m)
  return sub(m, 13)
end

-- The ready list (1..4) an entry goes back to: its priority's, or the one list of a group
-- (events have no priority order, so a group never regroups its entries).
local function level(e)
  if GROUP_MODE then return 1 end
  return (entry_info(e)) + 1
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

