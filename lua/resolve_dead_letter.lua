-- resolve_dead_letter.lua: an operator's decision on one dead letter, in one atomic step.
--
-- A parked entry's order stays pending, its units held, until an operator decides:
-- - 'redrive': the order goes back on the order stream as a new entry (its failed attempts
--   forgotten) and a worker confirms it; the dead letter is removed. Only for a pending order.
-- - 'fail': a pending order fails, its units return to the stock and to the buyer's allowance,
--   and every gateway is told (the stock-returned channel); the dead letter is removed, and an
--   entry on the order stream tells a worker to record the failure in the ledger. A dead letter
--   with no pending order (unparseable, unknown, already final) is just removed.
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] user totals, KEYS[4] order stream,
-- KEYS[5] dead-letter stream, KEYS[6] attempts
-- ARGV[1] 'redrive' | 'fail', ARGV[2] dead-letter entry id, ARGV[3] event id,
-- ARGV[4] channel told when units return to stock
--
-- Returns {outcome, order_id, detail} where outcome is
--   'redriven' (detail: the new stream entry id) | 'failed' (detail: units returned) |
--   'removed' (nothing to fail) | 'not_found' (no such dead letter) |
--   'not_pending' (redrive refused: the order is not pending; detail: its status or 'none').

local found = redis.call('XRANGE', KEYS[5], ARGV[2], ARGV[2])
if #found == 0 then return {'not_found', '', ''} end
local fields = found[1][2]
local order_id, entry, payload = '', '', '[]'
for i = 1, #fields, 2 do
  if fields[i] == DEAD_ORDER then order_id = fields[i + 1] end
  if fields[i] == DEAD_ENTRY then entry = fields[i + 1] end
  if fields[i] == DEAD_PAYLOAD then payload = fields[i + 1] end
end
-- The original entry's idempotency scope, carried on to the entry that tells the worker.
local scope = ''
local ok, original = pcall(cjson.decode, payload)
if ok and type(original) == 'table' then
  for i = 1, #original - 1, 2 do
    if original[i] == STREAM_SCOPE then scope = tostring(original[i + 1]) end
  end
end

local record = order_id ~= '' and redis.call('HGET', KEYS[2], order_id) or false
local status, qty, created, _, user
if record then
  status, qty, created, _, user = string.match(record, RECORD_PARTS)
end
local pending = status == PENDING
local status_name = STATUS_NAMES[status] or 'none'

if ARGV[1] == 'redrive' then
  if not pending then return {'not_pending', order_id, status_name} end
  local id = redis.call('XADD', KEYS[4], '*', STREAM_ORDER, order_id, STREAM_SCOPE, scope)
  redis.call('XDEL', KEYS[5], ARGV[2])
  if entry ~= '' then redis.call('HDEL', KEYS[6], entry) end
  return {'redriven', order_id, id}
end

if not pending then
  redis.call('XDEL', KEYS[5], ARGV[2])
  return {'removed', order_id, status_name}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
qty = tonumber(qty)
redis.call('HSET', KEYS[2], order_id, string.format(RECORD, FAILED, qty, created, string.format('%d', now), user))
redis.call('HINCRBY', KEYS[1], EV_REMAINING, qty)
-- The user totals are gone once the event's retention has passed: never resurrect them.
if redis.call('HEXISTS', KEYS[3], user) == 1 then
  redis.call('HINCRBY', KEYS[3], user, -qty)
end
redis.call('XDEL', KEYS[5], ARGV[2])
if entry ~= '' then redis.call('HDEL', KEYS[6], entry) end
-- The worker records the failure in the ledger (and acknowledges this entry) as for any order.
redis.call('XADD', KEYS[4], '*', STREAM_ORDER, order_id, STREAM_SCOPE, scope)
redis.call('PUBLISH', ARGV[4], ARGV[3])
return {'failed', order_id, tostring(qty)}
