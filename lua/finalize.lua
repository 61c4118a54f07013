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
-- ARGV[1] consumer group, ARGV[2] max failed attempts (MAX_DELIVERIES), ARGV[3] the number n of
-- entries, then per entry, in stream order, two elements: entry id and order id ('' = read
-- it from the entry); then, for the few entries the ledger refused, pairs of the entry's
-- position (1-based) and the error it gave (which counts as a failed attempt and confirms
-- nothing).
--
-- Returns the script's time (ms) then, for every entry that was not confirmed, two elements:
-- its position (1-based) and its outcome; entries not listed were confirmed. Nothing per
-- confirmed entry: at 200 entries a call, building the reply was a tenth of the script's
-- time. Outcomes: 'duplicate' (order already final) | 'skipped' (no longer pending: another
-- worker finished it) | 'dead_lettered:<reason>' (reason unparseable, entry_missing,
-- unknown_order, corrupt_order: nothing held) | 'parked:max_attempts' (order still pending) |
-- 'retry:<error>' (attempt counted, entry left pending).

local group, max_attempts, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_text = string.format('%d', now)
local had_attempts = redis.call('EXISTS', KEYS[5]) == 1
local out = {now}
-- Written together at the end: the confirmed records (one HSET), the counter (one HINCRBY)
-- and the acknowledgements (one XACK), so a batch costs a handful of commands rather than
-- several per entry. Nothing between them can fail: the counter is checked first, and once a
-- script has written, Redis no longer refuses it for memory.
local to_ack = {}

-- Errors no entry is to blame for (INFRA_ERRORS, from the prelude) are re-raised so that
-- nothing is counted.

local function message(e)
  if type(e) == 'table' then return tostring(e.err or e[1] or '?') end
  return tostring(e)
end

local function is_infra(msg)
  for _, prefix in ipairs(INFRA_ERRORS) do
    if string.sub(msg, 1, #prefix + 1) == prefix .. ' ' or msg == prefix then return true end
  end
  return false
end

local function forget_attempts(id)
  if had_attempts then redis.call('HDEL', KEYS[5], id) end
end

-- Records the entry in the dead-letter stream and acknowledges it. Nothing else changes: a
-- pending order it names stays pending, its units held.
local function dead_letter(id, outcome, reason, attempts, fields, order_id, err)
  redis.call('XADD', KEYS[4], '*', DEAD_ENTRY, id, DEAD_REASON, reason, DEAD_DELIVERIES, attempts,
    DEAD_ORDER, order_id or '', DEAD_PAYLOAD, cjson.encode(fields or {}), DEAD_AT, now,
    DEAD_ERROR, err or '')
  to_ack[#to_ack + 1] = id
  forget_attempts(id)
  return outcome .. ':' .. reason
end

-- The batch's order records, in one HMGET (the worker passes the order ids it read), by
-- the entry's position.
local records = {}
do
  local named, at = {}, {}
  for k = 1, n do
    local order_id = ARGV[3 + 2 * k]
    if order_id ~= '' then
      named[#named + 1] = order_id
      at[#at + 1] = k
    end
  end
  for j = 1, #named, 500 do
    local got = redis.call('HMGET', KEYS[2], unpack(named, j, math.min(j + 499, #named)))
    for g = 1, #got do records[at[j + g - 1]] = got[g] end
  end
end
-- The ledger's refusals, by the entry's position.
local refused = {}
for j = 4 + 2 * n, #ARGV, 2 do refused[tonumber(ARGV[j])] = ARGV[j + 1] end
-- Confirmations are written together at the end (one HSET, one HINCRBY), so the one check
-- that could make those writes fail, a counter that is not a number, is made here, first.
local counter_ok = tonumber(redis.call('HGET', KEYS[1], EV_CONFIRMED) or '0') ~= nil
local updates, confirmed_add, done = {}, 0, {}

-- Confirms a pending order. Returns nil when it did, 'duplicate' when the order was already
-- final (or confirmed earlier in this batch), false when its record cannot be read.
-- The common path allocates no table and sends no command, and rewrites the record
-- p|qty|created||user (PENDING_RECORD, as purchase.lua writes it) into c|qty|created|now|user
-- with one capture and two substrings: splitting it into five captures and joining them again with
-- string.format was a third of the script's time.
local function confirm(id, order_id, record)
  local qty, at = string.match(record, PENDING_QUANTITY_AT)
  -- No match: not pending (a pending record always matches), so already final, unless the
  -- record is not one at all.
  if not qty and not string.find(record, RECORD_SHAPE) then return false end
  if not qty or done[order_id] then
    to_ack[#to_ack + 1] = id
    forget_attempts(id)
    return 'duplicate'
  end
  if not counter_ok then
    error('ERR hash value is not an integer: the event\'s confirmed counter')
  end
  updates[#updates + 1] = order_id
  updates[#updates + 1] = CONFIRMED .. string.sub(record, 2, at - 1) .. now_text .. string.sub(record, at)
  confirmed_add = confirmed_add + tonumber(qty)
  done[order_id] = true
  to_ack[#to_ack + 1] = id
  forget_attempts(id)
  return nil
end

-- Returns nil when the order was confirmed, else the outcome.
local function finalize(id, order_id, record)
  local fields
  if order_id == '' then
    -- The worker did not have the entry's fields (it listed its pending entries): read them.
    local entry = redis.call('XRANGE', KEYS[3], id, id)
    if #entry == 0 then
      return dead_letter(id, 'dead_lettered', 'entry_missing', 0)
    end
    fields, order_id = entry[1][2], nil
    for i = 1, #fields, 2 do
      if fields[i] == STREAM_ORDER then order_id = fields[i + 1] end
    end
    if order_id then record = redis.call('HGET', KEYS[2], order_id) end
  end
  if not order_id then
    return dead_letter(id, 'dead_lettered', 'unparseable', 0, fields)
  end
  fields = fields or {STREAM_ORDER, order_id}
  if not record then
    return dead_letter(id, 'dead_lettered', 'unknown_order', 0, fields, order_id)
  end
  local outcome = confirm(id, order_id, record)
  if outcome == false then
    return dead_letter(id, 'dead_lettered', 'corrupt_order', 0, fields, order_id)
  end
  return outcome
end

-- Which entries of the batch are still pending: one XPENDING over the batch's id range (the
-- worker passes the entries in stream order, so the range is the first to the last). The
-- range may hold other consumers' entries too; if the answer could be cut short by its COUNT,
-- fall back to one XPENDING per entry.
local pending
if n >= 1 then
  local count = n * 4 + 100
  local rows = redis.call('XPENDING', KEYS[3], group, ARGV[4], ARGV[2 + 2 * n], count)
  if #rows < count then
    pending = {}
    for _, row in ipairs(rows) do pending[row[1]] = true end
  end
end
local function is_pending(id)
  if pending then return pending[id] == true end
  return #redis.call('XPENDING', KEYS[3], group, id, id, 1) > 0
end

for k = 1, n do
  local id, order_arg = ARGV[2 + 2 * k], ARGV[3 + 2 * k]
  local outcome
  if not is_pending(id) then
    outcome = 'skipped'
  else
    local ok, ledger_error = true, refused[k]
    if ledger_error then
      ok, outcome = false, 'ledger: ' .. ledger_error
    elseif counter_ok and records[k] then
      -- The common path, which cannot raise (the record is at hand, the counter sound), so
      -- it runs without pcall; a record it cannot read goes the long way for its reason.
      outcome = confirm(id, order_arg, records[k])
      if outcome == false then ok, outcome = pcall(finalize, id, order_arg, records[k]) end
    else
      ok, outcome = pcall(finalize, id, order_arg, records[k])
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
            if fields[j] == STREAM_ORDER then order_id = fields[j + 1] end
          end
        end
        outcome = dead_letter(id, 'parked', 'max_attempts', attempts, fields, order_id, err)
      else
        outcome = 'retry:' .. err
      end
    end
  end
  if outcome then
    out[#out + 1] = k
    out[#out + 1] = outcome
  end
end
-- The batch's writes: confirmations, the counter, then the acknowledgements.
for i = 1, #updates, 1000 do
  redis.call('HSET', KEYS[2], unpack(updates, i, math.min(i + 999, #updates)))
end
if confirmed_add > 0 then
  redis.call('HINCRBY', KEYS[1], EV_CONFIRMED, confirmed_add)
end
for i = 1, #to_ack, 1000 do
  redis.call('XACK', KEYS[3], group, unpack(to_ack, i, math.min(i + 999, #to_ack)))
end
return out
