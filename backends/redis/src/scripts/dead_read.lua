-- dead_read.lua: list dead letters oldest first, or fetch one by id (Q6).
--
-- Atomic: maintenance first (a lease that expired on the last attempt is a dead letter now),
-- then the keys, bytes and failure records are read in one step, so an entry is never shown
-- half requeued or half purged.
--
-- ARGV[A]: 'page', offset, limit  |  'id', id (its oldest dead letter).
-- Reply: { id, bytes, "attempts|failed_at|priority|error", ... }.

local now = now_ms()
maintain(now)
local keys
if ARGV[A] == 'page' then
  local offset = tonumber(ARGV[A + 1])
  local limit = tonumber(ARGV[A + 2])
  if limit <= 0 then return {} end
  keys = redis.call('ZRANGE', K_DEAD, offset, offset + limit - 1)
else
  keys = dead_keys_of({ ARGV[A + 1] })
  if #keys > 1 then keys = { keys[1] } end
end
if #keys == 0 then return {} end
local bytes = vget('HMGET', K_MSGS, keys)
local info = vget('HMGET', K_DEADINFO, keys)
local out = {}
for i = 1, #keys do
  out[3 * i - 2] = dead_id(keys[i])
  out[3 * i - 1] = bytes[i] or ''
  out[3 * i] = info[i] or '0|0|2|'
end
return out
