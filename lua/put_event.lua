-- put_event.lua: create or replace an event's configuration.
--
-- The configuration may be replaced until the first order is accepted ("has sales" means an
-- order was ever accepted, not stock - remaining: failed orders give units back). After that
-- only an identical PUT is accepted, so buyers never see the rules change under them.
--
-- KEYS[1] event hash fs:{ev:E}:event
-- ARGV[1] stock, ARGV[2] per-user limit, ARGV[3] name ('' when absent),
-- ARGV[4] starts_ms ('' when absent), ARGV[5] ends_ms ('' when absent),
-- ARGV[6] purge_at_ms: when the worker removes idempotency entries and user totals
-- (purge.lua; '' = never)
--
-- The event hash's fields are EventField in shared/src/schema/event_hash.rs; new_event (the
-- prelude) writes the configuration and zeroed counters.
-- Every accepted change (created, replaced, a retention adopted) raises EV_VERSION, the
-- decision counter the worker records in the ledger: a replaced configuration is a later
-- decision than the one it replaced, so the ledger (and a Redis rebuilt from it) ends with it.
-- Returns 'created' | 'unchanged' | 'replaced' | 'conflict'.

local cur = redis.call('HMGET', KEYS[1], EV_STOCK, EV_LIMIT, EV_NAME, EV_STARTS, EV_ENDS, EV_ACCEPTED,
  EV_PURGE_AT, EV_STATE, EV_VERSION)
-- Writes the configuration with zeroed counters (a new event, or one replaced before any sale).
local function write()
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  new_event(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], now, (tonumber(cur[9]) or 0) + 1)
  redis.call('HDEL', KEYS[1], EV_PURGED)
end

if not cur[1] then
  write()
  return 'created'
end
if cur[1] == ARGV[1] and cur[2] == ARGV[2] and cur[3] == ARGV[3] and cur[4] == ARGV[4]
    and cur[5] == ARGV[5] then
  if cur[7] ~= ARGV[6] and tonumber(cur[6]) == 0 and not cur[8] then
    -- Same event, new retention setting on the gateway: adopt it while nothing depends on it.
    redis.call('HSET', KEYS[1], EV_PURGE_AT, ARGV[6])
    redis.call('HINCRBY', KEYS[1], EV_VERSION, 1)
  end
  return 'unchanged'
end
-- Sales, or an operator's pause or end: the configuration is frozen.
if tonumber(cur[6]) > 0 or cur[8] then
  return 'conflict'
end
write()
return 'replaced'
