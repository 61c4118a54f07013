-- restore_orders.lua: put back, from the ledger, orders a Redis that restarted may have lost.
--
-- After a restart from an older snapshot (or a lost `appendfsync everysec` second, or a
-- failover to a replica that lagged) Redis can know less than the ledger. Before any sale
-- resumes (the fence, see shared/src/scripts.rs) a worker passes every ledger order of each
-- live event through here, in chunks. Per order, atomically:
-- - absent from Redis: its record comes back with the ledger's status, it counts as accepted,
--   a confirmed one holds its units again (remaining, confirmed, the buyer's total) and its
--   idempotency scope names it again, so a buyer's retry replays it and no unit is sold twice;
-- - pending in Redis, final in the ledger: it takes the ledger's status (its stream entry may
--   be gone);
-- - otherwise nothing changes. Running it twice changes nothing the second time.
-- The event hash itself is recreated from the ledger's configuration if it is gone.
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] idempotency entries, KEYS[4] user totals
-- ARGV[1..6] the event's configuration (stock, limit, name, starts, ends, purge_at; '' when
-- absent), used only when the event hash is gone, then per order seven elements: order id,
-- status letter (CONFIRMED or FAILED), quantity, created_ms, finalized_ms, user id, scope ('' unknown).
-- Returns {restored, corrected}.

if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  new_event(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], now)
end
local purged = redis.call('HEXISTS', KEYS[1], EV_PURGED) == 1
local restored, corrected = 0, 0
for i = 7, #ARGV, 7 do
  local id, status, qty, created, done, user, scope =
    ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local record = redis.call('HGET', KEYS[2], id)
  if not record then
    redis.call('HSET', KEYS[2], id, string.format(RECORD, status, qty, created, done, user))
    redis.call('HINCRBY', KEYS[1], EV_ACCEPTED, 1)
    if status == CONFIRMED then
      redis.call('HINCRBY', KEYS[1], EV_REMAINING, -qty)
      redis.call('HINCRBY', KEYS[1], EV_CONFIRMED, qty)
      if not purged then redis.call('HINCRBY', KEYS[4], user, qty) end
    end
    if scope ~= '' and not purged then redis.call('HSET', KEYS[3], scope, id) end
    restored = restored + 1
  else
    local rstatus, rqty, rcreated, _, ruser = string.match(record, RECORD_PARTS)
    if rstatus == PENDING then
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
return {restored, corrected}
