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
-- Event hash fields: stock, remaining, confirmed (units finalized by the worker), accepted
-- (orders ever accepted), limit, name, starts, ends, purge_at, created (ms), purged (ms, set
-- by purge.lua), state ('paused' | 'ended', set by control.lua), paused_at, ended_at.
-- Returns 'created' | 'unchanged' | 'replaced' | 'conflict'.

local cur = redis.call('HMGET', KEYS[1], 'stock', 'limit', 'name', 'starts', 'ends', 'accepted', 'purge_at', 'state')
local function write(status)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'remaining', ARGV[1], 'confirmed', 0,
    'accepted', 0, 'limit', ARGV[2], 'name', ARGV[3], 'starts', ARGV[4], 'ends', ARGV[5],
    'purge_at', ARGV[6], 'created', now)
  redis.call('HDEL', KEYS[1], 'purged')
  return status
end

if not cur[1] then
  return write('created')
end
if cur[1] == ARGV[1] and cur[2] == ARGV[2] and cur[3] == ARGV[3] and cur[4] == ARGV[4]
    and cur[5] == ARGV[5] then
  if cur[7] ~= ARGV[6] and tonumber(cur[6]) == 0 and not cur[8] then
    -- Same event, new retention setting on the gateway: adopt it while nothing depends on it.
    redis.call('HSET', KEYS[1], 'purge_at', ARGV[6])
  end
  return 'unchanged'
end
-- Sales, or an operator's pause or end: the configuration is frozen.
if tonumber(cur[6]) > 0 or cur[8] then
  return 'conflict'
end
return write('replaced')
