-- finalize.lua: finalize a batch of stream entries of one event and acknowledge them.
--
-- Finalizing an order (pending -> confirmed, confirmed_at, the event's confirmed count) and
-- its XACK are one atomic step, and an entry that is no longer pending, or whose order is
-- already final, changes nothing: redelivery and racing workers can never double count.
--
-- The delivery count is read here, from the group's pending entries list, so it counts the
-- delivery in hand. An entry delivered more than max_deliveries times, or one that cannot be
-- understood, is moved to the dead-letter stream instead; when it names a pending order,
-- that order fails and its units return to the stock and to the user's allowance.
-- Bad content never raises an error: one poison entry must not fail the whole batch.
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] user totals, KEYS[4] order stream,
-- KEYS[5] dead-letter stream
-- ARGV[1] consumer group, ARGV[2] max deliveries, ARGV[3] event id,
-- ARGV[4] channel told when units return to stock, ARGV[5..] entry ids
--
-- Returns, per entry, five elements: entry id, outcome, quantity, created_ms, done_ms, where
-- outcome is 'confirmed' | 'duplicate' (order already final) | 'skipped' (no longer pending:
-- another worker finished it) | 'dead_lettered:<reason>'.

local group, max_deliveries = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}

local function parse(record)
  if type(record) ~= 'string' then return nil end
  local status, qty, created, done, user = string.match(record, '^(%a)|(%d+)|(%d+)|(%d*)|(.+)$')
  if not status then return nil end
  return {status = status, qty = tonumber(qty), created = created, done = done, user = user}
end

local function dead_letter(id, reason, deliveries, fields, order_id, order)
  redis.call('XADD', KEYS[5], '*', 'entry', id, 'reason', reason, 'deliveries', deliveries,
    'order', order_id or '', 'payload', cjson.encode(fields or {}), 'at', now)
  if order and order.status == 'p' then
    redis.call('HSET', KEYS[2], order_id,
      string.format('f|%d|%s|%d|%s', order.qty, order.created, now, order.user))
    redis.call('HINCRBY', KEYS[1], 'remaining', order.qty)
    -- The user totals expire with the idempotency entries; never resurrect them negative.
    if redis.call('HEXISTS', KEYS[3], order.user) == 1 then
      if redis.call('HINCRBY', KEYS[3], order.user, -order.qty) <= 0 then
        redis.call('HDEL', KEYS[3], order.user)
      end
    end
    redis.call('PUBLISH', ARGV[4], ARGV[3])
  end
  redis.call('XACK', KEYS[4], group, id)
  local qty, created = 0, 0
  if order then qty, created = order.qty, order.created end
  return {id, 'dead_lettered:' .. reason, qty, created, now}
end

local function finalize(id)
  local pending = redis.call('XPENDING', KEYS[4], group, id, id, 1)
  if #pending == 0 then
    return {id, 'skipped', 0, 0, 0}
  end
  local deliveries = tonumber(pending[1][4])
  local entry = redis.call('XRANGE', KEYS[4], id, id)
  if #entry == 0 then
    return dead_letter(id, 'entry_missing', deliveries)
  end
  local fields = entry[1][2]
  local order_id
  for i = 1, #fields, 2 do
    if fields[i] == 'order' then order_id = fields[i + 1] end
  end
  if not order_id then
    return dead_letter(id, 'unparseable', deliveries, fields)
  end
  local order = parse(redis.call('HGET', KEYS[2], order_id))
  if not order then
    return dead_letter(id, 'unknown_order', deliveries, fields, order_id)
  end
  if deliveries > max_deliveries then
    return dead_letter(id, 'max_deliveries', deliveries, fields, order_id, order)
  end
  if order.status ~= 'p' then
    redis.call('XACK', KEYS[4], group, id)
    return {id, 'duplicate', order.qty, order.created, order.done}
  end
  redis.call('HSET', KEYS[2], order_id,
    string.format('c|%d|%s|%d|%s', order.qty, order.created, now, order.user))
  redis.call('HINCRBY', KEYS[1], 'confirmed', order.qty)
  redis.call('XACK', KEYS[4], group, id)
  return {id, 'confirmed', order.qty, order.created, now}
end

for i = 5, #ARGV do
  for _, v in ipairs(finalize(ARGV[i])) do
    out[#out + 1] = v
  end
end
return out
