-- audit.lua: one consistent snapshot of an event's books, for the invariant check.
--
-- Read-only. It walks every order of the event, so it is meant for operators and tests, not
-- for the request path (a few thousand orders take well under a millisecond).
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] user totals, KEYS[4] idempotency,
-- KEYS[5] order stream; ARGV[1] consumer group
--
-- Returns a flat array of name, value pairs (all integers), or {} when the event is unknown:
--   stock, remaining, confirmed_counter, accepted_counter,
--   orders_pending, orders_confirmed, orders_failed, units_pending, units_confirmed,
--   units_failed, corrupt_orders, user_totals_checked (0 once they expired),
--   user_total_mismatches, idempotency_dangling, stream_pending, stream_lag (-1 unknown)

local ev = redis.call('HMGET', KEYS[1], 'stock', 'remaining', 'confirmed', 'accepted')
if not ev[1] then return {} end

local count = {p = 0, c = 0, f = 0}
local units = {p = 0, c = 0, f = 0}
local corrupt = 0
local held = {}
local orders = redis.call('HGETALL', KEYS[2])
for i = 1, #orders, 2 do
  local status, qty, user = string.match(orders[i + 1], '^(%a)|(%d+)|%d+|%d*|(.+)$')
  if not status or not count[status] then
    corrupt = corrupt + 1
  else
    qty = tonumber(qty)
    count[status] = count[status] + 1
    units[status] = units[status] + qty
    if status ~= 'f' then held[user] = (held[user] or 0) + qty end
  end
end

-- User totals and idempotency entries expire together after the event (purge_at).
-- Expired means: units are held but both hashes are gone (the idempotency hash is never
-- emptied while orders exist, so a missing one cannot be a drained one).
local checked, mismatches = 0, 0
local expired = count.p + count.c > 0 and redis.call('EXISTS', KEYS[3]) == 0
  and redis.call('EXISTS', KEYS[4]) == 0
if not expired then
  checked = 1
  local totals = redis.call('HGETALL', KEYS[3])
  local seen = {}
  for i = 1, #totals, 2 do
    seen[totals[i]] = true
    if tonumber(totals[i + 1]) ~= (held[totals[i]] or 0) then mismatches = mismatches + 1 end
  end
  for user, n in pairs(held) do
    if not seen[user] and n > 0 then mismatches = mismatches + 1 end
  end
end

local dangling = 0
local idem = redis.call('HGETALL', KEYS[4])
for i = 2, #idem, 2 do
  if redis.call('HEXISTS', KEYS[2], idem[i]) == 0 then dangling = dangling + 1 end
end

local pending, lag = 0, 0
if redis.call('EXISTS', KEYS[5]) == 1 then
  lag = redis.call('XLEN', KEYS[5]) -- no group yet: every entry is unread
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[5])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      pending = info['pending']
      lag = info['lag'] or -1
    end
  end
end

return {
  'stock', tonumber(ev[1]), 'remaining', tonumber(ev[2]),
  'confirmed_counter', tonumber(ev[3]), 'accepted_counter', tonumber(ev[4]),
  'orders_pending', count.p, 'orders_confirmed', count.c, 'orders_failed', count.f,
  'units_pending', units.p, 'units_confirmed', units.c, 'units_failed', units.f,
  'corrupt_orders', corrupt, 'user_totals_checked', checked,
  'user_total_mismatches', mismatches, 'idempotency_dangling', dangling,
  'stream_pending', pending, 'stream_lag', lag,
}
