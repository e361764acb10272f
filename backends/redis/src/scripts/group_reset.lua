-- group_reset.lua: move a consumer group's cursor for replay (E5).
--
-- Atomic: the group's pending, delayed, ready and leased events are dropped (its dead letters
-- are kept) and the group is recreated at the new position in one script run, so no consumer
-- can lease an event of the old position after the reset, and none is half dropped.
-- Recreating (XGROUP DESTROY + CREATE) also empties the group's pending entries list.
--
-- ARGV[A]: 'start' | 'end' | 'before', then for 'before' a stream id: the group then reads
-- that entry and everything after it.

local now = now_ms()
trim_log(now)
local drop = {}
for _, e in ipairs(redis.call('HVALS', K_LEASED)) do drop[#drop + 1] = sub(e, 3, 18) end
for _, m in ipairs(redis.call('ZRANGE', K_DELAYED, 0, -1)) do
  drop[#drop + 1] = sub(delayed_entry(m), 3, 18)
end
for _, e in ipairs(redis.call('LRANGE', K_READY[1], 0, -1)) do drop[#drop + 1] = sub(e, 3, 18) end
vcall('HDEL', K_INFO, drop)
redis.call('DEL', K_LEASED, K_DEADLINES, K_BATCHES, K_DELAYED, K_READY[1])
redis.pcall('XGROUP', 'DESTROY', K_LOG, GROUP)
local target = '0'
if ARGV[A] == 'end' then
  target = '$'
elseif ARGV[A] == 'before' and ARGV[A + 1] ~= '0-0' then
  local prev = redis.call('XREVRANGE', K_LOG, '(' .. ARGV[A + 1], '-', 'COUNT', 1)
  if prev[1] then target = prev[1][1] end
end
redis.call('XGROUP', 'CREATE', K_LOG, GROUP, target, 'MKSTREAM')
wake(1)
return #drop
