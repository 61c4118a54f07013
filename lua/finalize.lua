-- finalize.lua: finalize a batch of stream entries of one event and acknowledge them.
--
-- Finalizing an order (pending -> confirmed, confirmed_at, the event's confirmed count) and
-- its XACK are one atomic step, and an entry that is no longer pending, or whose order is
-- already final, changes nothing: redelivery and racing workers can never double count.
--
-- An accepted order is never failed here. What happens to an entry that cannot be finalized:
-- - it cannot be understood (no order field, the entry is gone, the order is unknown or its
--   record unreadable): dead-lettered at once, with the reason; there is no order to hold.
-- - it names a pending order and processing it raised an error: the attempt is counted in the
--   attempts hash (a write, so a full or read-only Redis, which refuses it, cannot raise the
--   count) and the entry stays pending for a retry; once it failed max_attempts times it is
--   *parked*: recorded in the dead-letter stream and acknowledged, its order left pending with
--   its units held until an operator redrives or fails it (lua/resolve_dead_letter.lua).
--   It gets max_attempts failed attempts; the next failure parks it.
-- - an infrastructure error (out of memory, read-only replica, ...) is raised as it is: the
--   whole call fails, nothing is counted, and the worker retries the batch later.
-- Delivery counts of the stream are deliberately not used: reading pending entries again and
-- claiming them raise those, and both happen while Redis is full or a worker crash-loops.
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] order stream, KEYS[4] dead-letter stream,
-- KEYS[5] attempts (entry id -> failed attempts)
-- ARGV[1] consumer group, ARGV[2] max failed attempts (MAX_DELIVERIES), then per entry, in
-- stream order, three
-- elements: entry id, order id ('' = read it from the entry), and an error the ledger gave for
-- this order ('' = none; one that is set counts as a failed attempt and confirms nothing).
--
-- Returns the script's time (ms) then, per entry in the order given, two elements: the
-- outcome and the order's created_ms (0 when there is none), where outcome is 'confirmed' | 'duplicate' (order already final) | 'skipped' (no longer pending:
-- another worker finished it) | 'dead_lettered:<reason>' (reason unparseable, entry_missing,
-- unknown_order, corrupt_order: nothing held) | 'parked:max_attempts' (order still pending) |
-- 'retry:<error>' (attempt counted, entry left pending).

local group, max_attempts = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local had_attempts = redis.call('EXISTS', KEYS[5]) == 1
local out = {now}
-- Written together at the end: the confirmed records (one HSET), the counter (one HINCRBY)
-- and the acknowledgements (one XACK), so a batch costs a handful of commands rather than
-- several per entry. Nothing between them can fail: the counter is checked first, and once a
-- script has written, Redis no longer refuses it for memory.
local to_ack = {}

-- Errors no entry is to blame for: re-raised so that nothing is counted.
local INFRA = {'OOM', 'READONLY', 'MISCONF', 'NOREPLICAS', 'BUSY', 'LOADING', 'MASTERDOWN',
  'CLUSTERDOWN', 'TRYAGAIN', 'MOVED', 'ASK'}

local function message(e)
  if type(e) == 'table' then return tostring(e.err or e[1] or '?') end
  return tostring(e)
end

local function is_infra(msg)
  for _, prefix in ipairs(INFRA) do
    if string.sub(msg, 1, #prefix + 1) == prefix .. ' ' or msg == prefix then return true end
  end
  return false
end

local function parse(record)
  if type(record) ~= 'string' then return nil end
  local status, qty, created, done, user = string.match(record, '^(%a)|(%d+)|(%d+)|(%d*)|(.+)$')
  if not status then return nil end
  return {status = status, qty = tonumber(qty), created = created, done = done, user = user}
end

local function forget_attempts(id)
  if had_attempts then redis.call('HDEL', KEYS[5], id) end
end

-- Records the entry in the dead-letter stream and acknowledges it. Nothing else changes: a
-- pending order it names stays pending, its units held.
local function dead_letter(id, outcome, reason, attempts, fields, order_id, order, err)
  redis.call('XADD', KEYS[4], '*', 'entry', id, 'reason', reason, 'deliveries', attempts,
    'order', order_id or '', 'payload', cjson.encode(fields or {}), 'at', now,
    'error', err or '')
  to_ack[#to_ack + 1] = id
  forget_attempts(id)
  return outcome .. ':' .. reason, order and order.created or 0
end

-- The batch's order records, in one HMGET (the worker passes the order ids it read).
local records = {}
do
  local named = {}
  for i = 3, #ARGV, 3 do
    if ARGV[i + 1] ~= '' then named[#named + 1] = ARGV[i + 1] end
  end
  for j = 1, #named, 500 do
    local got = redis.call('HMGET', KEYS[2], unpack(named, j, math.min(j + 499, #named)))
    for k = 1, #got do records[named[j + k - 1]] = got[k] end
  end
end
-- Confirmations are written together at the end (one HSET, one HINCRBY), so the one check
-- that could make those writes fail, a counter that is not a number, is made here, first.
local counter_ok = tonumber(redis.call('HGET', KEYS[1], 'confirmed') or '0') ~= nil
local updates, confirmed_add, done = {}, 0, {}

-- Returns the outcome and the order's created_ms. The common path (a pending order the
-- worker named) allocates no table: at 200 entries a call, Lua allocations are most of the cost.
local function finalize(id, order_id)
  local fields, record
  if order_id == '' then
    -- The worker did not have the entry's fields (it listed its pending entries): read them.
    local entry = redis.call('XRANGE', KEYS[3], id, id)
    if #entry == 0 then
      return dead_letter(id, 'dead_lettered', 'entry_missing', 0)
    end
    fields, order_id = entry[1][2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 'order' then order_id = fields[i + 1] end
    end
    if order_id then record = redis.call('HGET', KEYS[2], order_id) end
  else
    record = records[order_id]
  end
  if not order_id then
    return dead_letter(id, 'dead_lettered', 'unparseable', 0, fields)
  end
  fields = fields or {'order', order_id}
  if not record then
    return dead_letter(id, 'dead_lettered', 'unknown_order', 0, fields, order_id)
  end
  local status, qty, created, _, user = string.match(record, '^(%a)|(%d+)|(%d+)|(%d*)|(.+)$')
  if not status then
    return dead_letter(id, 'dead_lettered', 'corrupt_order', 0, fields, order_id)
  end
  if status ~= 'p' or done[order_id] then
    to_ack[#to_ack + 1] = id
    forget_attempts(id)
    return 'duplicate', created
  end
  if not counter_ok then
    error('ERR hash value is not an integer: the event\'s confirmed counter')
  end
  qty = tonumber(qty)
  updates[#updates + 1] = order_id
  updates[#updates + 1] = string.format('c|%d|%s|%d|%s', qty, created, now, user)
  confirmed_add = confirmed_add + qty
  done[order_id] = true
  to_ack[#to_ack + 1] = id
  forget_attempts(id)
  return 'confirmed', created
end

-- Which entries of the batch are still pending: one XPENDING over the batch's id range (the
-- worker passes the entries in stream order, so the range is the first to the last). The
-- range may hold other consumers' entries too; if the answer could be cut short by its COUNT,
-- fall back to one XPENDING per entry.
local pending
if #ARGV >= 5 then
  local first, last = ARGV[3], ARGV[#ARGV - 2]
  local count = (#ARGV - 2) / 3 * 4 + 100
  local rows = redis.call('XPENDING', KEYS[3], group, first, last, count)
  if #rows < count then
    pending = {}
    for _, row in ipairs(rows) do pending[row[1]] = true end
  end
end
local function is_pending(id)
  if pending then return pending[id] == true end
  return #redis.call('XPENDING', KEYS[3], group, id, id, 1) > 0
end

for i = 3, #ARGV, 3 do
  local id, order_arg, ledger_error = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local outcome, created
  if not is_pending(id) then
    outcome, created = 'skipped', 0
  else
    local ok
    if ledger_error ~= '' then
      ok, outcome = false, 'ledger: ' .. ledger_error
    else
      ok, outcome, created = pcall(finalize, id, order_arg)
    end
    if not ok then
      local err = message(outcome)
      if is_infra(err) then error(outcome) end
      -- The one write that counts this attempt; under OOM it raises and nothing is counted.
      local attempts = redis.call('HINCRBY', KEYS[5], id, 1)
      had_attempts = true
      if attempts > max_attempts then
        local entry = redis.call('XRANGE', KEYS[3], id, id)
        local fields, order_id = {}, ''
        if #entry > 0 then
          fields = entry[1][2]
          for j = 1, #fields, 2 do
            if fields[j] == 'order' then order_id = fields[j + 1] end
          end
        end
        outcome, created = dead_letter(id, 'parked', 'max_attempts', attempts, fields, order_id,
          parse(redis.call('HGET', KEYS[2], order_id)), err)
      else
        outcome, created = 'retry:' .. err, 0
      end
    end
  end
  out[#out + 1] = outcome
  out[#out + 1] = created or 0
end
-- The batch's writes: confirmations, the counter, then the acknowledgements.
for i = 1, #updates, 1000 do
  redis.call('HSET', KEYS[2], unpack(updates, i, math.min(i + 999, #updates)))
end
if confirmed_add > 0 then
  redis.call('HINCRBY', KEYS[1], 'confirmed', confirmed_add)
end
for i = 1, #to_ack, 1000 do
  redis.call('XACK', KEYS[3], group, unpack(to_ack, i, math.min(i + 999, #to_ack)))
end
return out
