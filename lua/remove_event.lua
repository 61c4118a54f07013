-- remove_event.lua: an ended sale leaves Redis, once nothing of it is needed here any more.
--
-- The ledger is the system of record; Redis only needs an event while buyers can buy or retry
-- and while the worker has something to do. All of these must hold, checked atomically:
-- its retention passed and purge.lua removed its idempotency entries and user totals; no dead
-- letter waits for an operator; the consumer group has nothing pending and nothing undelivered;
-- and the ledger holds as many orders as the event ever accepted (the worker passes the
-- ledger's count). Then every key of the event goes (UNLINK: freed in the background).
-- Removing the id from fs:events is the caller's next step (another slot).
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] idempotency entries, KEYS[4] user totals,
-- KEYS[5] order stream, KEYS[6] dead letters, KEYS[7] attempts
-- ARGV[1] consumer group, ARGV[2] orders of the event in the ledger
-- Returns 'removed', or why not: 'unknown' | 'not_purged' | 'dead_letters' | 'not_drained' |
-- 'ledger_behind'.

local ev = redis.call('HMGET', KEYS[1], EV_ACCEPTED, EV_PURGED)
if not ev[1] then return 'unknown' end
if not ev[2] then return 'not_purged' end
if redis.call('XLEN', KEYS[6]) > 0 then return 'dead_letters' end
if redis.call('EXISTS', KEYS[5]) == 1 then
  local drained = false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[5])) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      drained = info['pending'] == 0 and info['lag'] == 0
    end
  end
  if not drained then return 'not_drained' end
end
if tonumber(ev[1]) ~= tonumber(ARGV[2]) then return 'ledger_behind' end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
return 'removed'
