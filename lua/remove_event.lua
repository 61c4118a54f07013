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
-- The worker marks the ledger first ("the event left Redis"), then removes; so it asks in
-- mode 'check' whether the event may go (every check, nothing removed), marks, then removes in
-- mode 'remove' (the checks again: harmless, they still hold for an ended, purged, drained
-- sale). In mode 'left' the ledger already says the event left, so this copy can only be one
-- a restored snapshot brought back (or a removal interrupted after the mark): the ledger holds
-- every order it ever accepted, so only a Redis that accepted more than the ledger holds keeps
-- it ('ledger_behind'); retention, dead letters and pending entries of an older copy are
-- already decided in the ledger.
--
-- KEYS[1] event hash, KEYS[2] orders, KEYS[3] idempotency entries, KEYS[4] user totals,
-- KEYS[5] order stream, KEYS[6] dead letters, KEYS[7] attempts
-- ARGV[1] consumer group, ARGV[2] orders of the event in the ledger,
-- ARGV[3] mode: 'remove' (the default) | 'check' | 'left'
-- Returns 'removed' ('ready' in mode 'check'), or why not: 'unknown' | 'not_purged' |
-- 'dead_letters' | 'not_drained' | 'ledger_behind'.

local mode = ARGV[3] or 'remove'
local ev = redis.call('HMGET', KEYS[1], EV_ACCEPTED, EV_PURGED)
if mode == 'left' then
  -- No hash: whatever else of the event is here goes too ('removed' again: the caller then
  -- drops the registration, so a repeat after any interruption finishes the job).
  if ev[1] and tonumber(ev[1]) > tonumber(ARGV[2]) then return 'ledger_behind' end
  redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  return 'removed'
end
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
if mode == 'check' then return 'ready' end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
return 'removed'
