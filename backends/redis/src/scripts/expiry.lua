-- expiry.lua: what becomes of a delivery whose lease expired on the server (reclaim() in
-- lib_more.lua): retried after a delay, or dead-lettered. Part of the shared library, after
-- lib.lua and before lib_more.lua (see src/scripts.rs).
--
-- The retry formula (exponential backoff capped by max_delay, then jitter) lives in core
-- only: courier_core::RetryPolicy. Nothing here restates it. This file only
--   * compares the attempt with its limit as RetryPolicy::decide does: dead when
--     attempt >= limit, the limit being the message's max_attempts override from its wire
--     header when it has one (> 0), else the queue's max_attempts, and at least 1;
--   * draws the delay uniformly within the bounds core computed for that attempt, with the
--     seeded generator, rounded up to whole ms.
--
-- What it receives (set up per call by lib.lua's setup()):
--   ARGV[2]  max_attempts (>= 1)
--   ARGV[3]  the delay table: RetryPolicy::delay_bounds_table() as 'lo1 hi1 lo2 hi2 ...',
--            pair i being the range of the delay after failed attempt i, in ms as decimals
--            (up to 6 places: exact nanoseconds). Beyond the table the last pair applies;
--            core builds the table so that this is exact.
--   ARGV[4]  a seed for math.randomseed, fresh with every call
--   MAX_ATTEMPTS, DELAYS: upvalues declared in lib.lua, reset to nil by setup(), filled here
--            on first need, so calls that retry nothing parse nothing.
--
-- Checked against core without Redis (src/scripts.rs, `expiry_lua_matches_core`, Lua 5.1 as
-- Redis embeds) and on a real server (`expiry_on_redis_matches_core`).

-- Parse the policy (once per call, on first need).
local function retry_policy()
  if MAX_ATTEMPTS then return end
  MAX_ATTEMPTS = tonumber(ARGV[2])
  local t, n = {}, 0
  for x in string.gmatch(ARGV[3], '%S+') do
    n = n + 1
    t[n] = tonumber(x)
  end
  DELAYS = t
  -- Scripts are effect-replicated (Redis >= 5), so a seeded generator is allowed.
  math.randomseed(tonumber(ARGV[4]))
end

-- The delay after failed attempt a (>= 1), in whole ms (rounded up).
local function backoff_ms(a)
  local last = #DELAYS / 2
  if a > last then a = last end
  if a < 1 then a = 1 end
  local lo, hi = DELAYS[2 * a - 1], DELAYS[2 * a]
  local d = lo
  if hi > lo then
    d = lo + math.random() * (hi - lo)
    if d > hi then d = hi end
  end
  return math.ceil(d - 1e-9)
end

-- After failed attempt a (>= 1) of a message whose max_attempts override is `override`
-- (0 = none): the retry delay in ms, or nil when it is dead.
local function expiry_delay(a, override)
  retry_policy()
  local limit = MAX_ATTEMPTS
  if override > 0 then limit = override end
  if limit < 1 then limit = 1 end
  if a >= limit then return nil end
  return backoff_ms(a)
end

