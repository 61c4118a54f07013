-- control.lua: an operator pauses, resumes or ends a live sale, in one atomic step.
--
-- The event hash's EV_STATE field says it: absent (selling by its window), STATE_PAUSED
-- (nothing sells until resumed) or STATE_ENDED (for good: the sale is over whatever its window said, and
-- its idempotency entries go after the retention, from now). purchase.lua checks it after the
-- replay check, so a buyer's retry of an accepted order still gets that order in every state.
-- Every gateway is told on the channel that drops local sold-out flags, so none keeps
-- answering `sold_out` for a paused or ended sale (and the flags' re-validation sees the
-- state within 25 ms anyway).
-- Every change raises EV_VERSION, the decision counter: the worker records the decision in the
-- ledger once it sees a counter above the ledger's, so no Redis restart can undo it after that.
--
-- KEYS[1] event hash; ARGV[1] 'pause' | 'resume' | 'end', ARGV[2] event id, ARGV[3] channel,
-- ARGV[4] retention (ms) after an end before the idempotency entries go
-- Returns the outcome: 'paused' | 'resumed' | 'ended' | 'unchanged' (already in that state) |
-- 'not_found' | 'ended_already' (pause or resume of an ended sale) | 'not_paused' (resume).

local ev = redis.call('HMGET', KEYS[1], EV_STOCK, EV_STATE, EV_PURGE_AT)
if not ev[1] then return 'not_found' end
local state = ev[2]
local action = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function tell()
  redis.call('PUBLISH', ARGV[3], ARGV[2])
end

if state == STATE_ENDED then
  if action == 'end' then return 'unchanged' end
  return 'ended_already'
end
if action == 'pause' then
  if state == STATE_PAUSED then return 'unchanged' end
  redis.call('HSET', KEYS[1], EV_STATE, STATE_PAUSED, EV_PAUSED_AT, now)
  redis.call('HINCRBY', KEYS[1], EV_VERSION, 1)
  tell()
  return 'paused'
elseif action == 'resume' then
  if state ~= STATE_PAUSED then return 'not_paused' end
  redis.call('HDEL', KEYS[1], EV_STATE, EV_PAUSED_AT)
  redis.call('HINCRBY', KEYS[1], EV_VERSION, 1)
  tell()
  return 'resumed'
elseif action == 'end' then
  local purge_at = now + tonumber(ARGV[4])
  if ev[3] and ev[3] ~= '' and tonumber(ev[3]) < purge_at then purge_at = tonumber(ev[3]) end
  redis.call('HSET', KEYS[1], EV_STATE, STATE_ENDED, EV_ENDED_AT, now, EV_PURGE_AT, purge_at)
  redis.call('HDEL', KEYS[1], EV_PAUSED_AT)
  redis.call('HINCRBY', KEYS[1], EV_VERSION, 1)
  tell()
  return 'ended'
end
return redis.error_reply('unknown action ' .. tostring(action))
