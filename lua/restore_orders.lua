-- restore_orders.lua: put back, from the ledger, the decisions and orders a Redis that
-- restarted may have lost.
--
-- After a restart from an older snapshot (or a lost `appendfsync everysec` second, or a
-- failover to a replica that lagged) Redis can know less than the ledger. Before any sale
-- resumes (the fence, see shared/src/scripts.rs) a worker passes each live event's decision
-- and every ledger order through here, in chunks. Atomically:
-- - the event's decision (configuration, purge_at, state with paused_at/ended_at, and its
--   decision counter EV_VERSION): the hash is recreated from it if it is gone; otherwise the
--   ledger's decision replaces Redis's when the ledger's counter is not below Redis's (Redis
--   forgot, or both hold the same decision: writing it again changes nothing). A higher
--   counter in Redis is a decision Redis took first (an end while the database was down,
--   kept by its AOF): it stays, and the worker records it. Two exceptions: an end is never
--   undone, and once the ledger holds an order its configuration is final whatever the
--   counters say (a configuration only changes before the first sale). A configuration put
--   back moves `remaining` by the change of stock, so the units held stay held;
-- - per order absent from Redis: its record comes back with the ledger's status, it counts as
--   accepted, a confirmed one holds its units again (remaining, confirmed, the buyer's total)
--   and its idempotency scope names it again, so a buyer's retry replays it and no unit is
--   sold twice;
-- - per order pending in Redis, final in the ledger: it takes the ledger's status (its stream
--   entry may be gone);
-- - a parked order (PENDING in the ledger, which records a parked order as `parked`) is never
--   made final here: only an operator decides it (lua/resolve_dead_letter.lua). Absent from
--   Redis it comes back pending, holding its units (remaining, the buyer's total) as when it
--   was accepted; pending or final in Redis it is left as it is;
-- - otherwise nothing changes. Running it twice changes nothing the second time.
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] idempotency entries, KEYS[4] user totals
-- ARGV[1..6] the ledger's configuration (stock, limit, name, starts, ends, purge_at; '' when
-- absent), ARGV[7] when it was configured (ms, '' unknown), ARGV[8] its state ('' selling by
-- its window, STATE_PAUSED or STATE_ENDED), ARGV[9] paused_at, ARGV[10] ended_at (ms or ''),
-- ARGV[11] its decision counter, ARGV[12] '1' when the ledger holds an order of the event;
-- then per order seven elements: order id, status letter (CONFIRMED, FAILED or PENDING: parked), quantity,
-- created_ms, finalized_ms, user id, scope ('' unknown).
-- Returns {restored, corrected, decided}: decided is 1 when Redis had lost the ledger's decision
-- (the hash was gone or its counter was below the ledger's) and it was put back.

local FIRST_ORDER = 13
local version = tonumber(ARGV[11])
local state, paused_at, ended_at = ARGV[8], ARGV[9], ARGV[10]

-- Writes the ledger's state (and purge_at, which an end sets) and decision counter.
local function put_state()
  redis.call('HSET', KEYS[1], EV_PURGE_AT, ARGV[6], EV_VERSION, version)
  if state == STATE_PAUSED then
    redis.call('HSET', KEYS[1], EV_STATE, STATE_PAUSED, EV_PAUSED_AT, paused_at)
    redis.call('HDEL', KEYS[1], EV_ENDED_AT)
  elseif state == STATE_ENDED then
    redis.call('HSET', KEYS[1], EV_STATE, STATE_ENDED, EV_ENDED_AT, ended_at)
    redis.call('HDEL', KEYS[1], EV_PAUSED_AT)
  else
    redis.call('HDEL', KEYS[1], EV_STATE, EV_PAUSED_AT, EV_ENDED_AT)
  end
end

local decided = 0
local cur = redis.call('HMGET', KEYS[1], EV_STOCK, EV_VERSION, EV_STATE)
if not cur[1] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if ARGV[7] ~= '' then now = ARGV[7] end
  new_event(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], now, version)
  put_state()
  decided = 1
else
  -- Counter 0: a row recorded before the ledger kept decisions (migration 0002), whose state
  -- the ledger never knew: Redis's stands.
  local redis_version = tonumber(cur[2]) or 0
  local ledger_later = version > 0 and version >= redis_version
  if ledger_later or ARGV[12] == '1' then
    -- The configuration; remaining follows the stock (stock - remaining is the units held).
    local shift = tonumber(ARGV[1]) - tonumber(cur[1])
    redis.call('HSET', KEYS[1], EV_STOCK, ARGV[1], EV_LIMIT, ARGV[2], EV_NAME, ARGV[3], EV_STARTS, ARGV[4],
      EV_ENDS, ARGV[5])
    if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], EV_CREATED, ARGV[7]) end
    if shift ~= 0 then redis.call('HINCRBY', KEYS[1], EV_REMAINING, shift) end
  end
  -- An end is final: no decision of the ledger's brings an ended sale back.
  if ledger_later and not (cur[3] == STATE_ENDED and state ~= STATE_ENDED) then
    put_state()
    if version > redis_version then decided = 1 end
  end
end
local purged = redis.call('HEXISTS', KEYS[1], EV_PURGED) == 1
local restored, corrected = 0, 0
for i = FIRST_ORDER, #ARGV, 7 do
  local id, status, qty, created, done, user, scope =
    ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local record = redis.call('HGET', KEYS[2], id)
  if not record then
    if status == PENDING then done = '' end
    redis.call('HSET', KEYS[2], id, string.format(RECORD, status, qty, created, done, user))
    redis.call('HINCRBY', KEYS[1], EV_ACCEPTED, 1)
    if status ~= FAILED then
      -- Confirmed or parked: its units are held again.
      redis.call('HINCRBY', KEYS[1], EV_REMAINING, -qty)
      if status == CONFIRMED then redis.call('HINCRBY', KEYS[1], EV_CONFIRMED, qty) end
      if not purged then redis.call('HINCRBY', KEYS[4], user, qty) end
    end
    if scope ~= '' and not purged then redis.call('HSET', KEYS[3], scope, id) end
    restored = restored + 1
  else
    local rstatus, rqty, rcreated, _, ruser = string.match(record, RECORD_PARTS)
    if rstatus == PENDING and status ~= PENDING then
      redis.call('HSET', KEYS[2], id, string.format(RECORD, status, rqty, rcreated, done, ruser))
      if status == CONFIRMED then
        redis.call('HINCRBY', KEYS[1], EV_CONFIRMED, tonumber(rqty))
      else
        redis.call('HINCRBY', KEYS[1], EV_REMAINING, tonumber(rqty))
        if not purged and redis.call('HEXISTS', KEYS[4], ruser) == 1 then
          redis.call('HINCRBY', KEYS[4], ruser, -tonumber(rqty))
        end
      end
      corrected = corrected + 1
    end
  end
end
return {restored, corrected, decided}
