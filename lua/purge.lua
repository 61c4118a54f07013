-- purge.lua: forget an event's idempotency entries and user totals once its retention passed.
--
-- They are only needed while a buyer's retry can still arrive: until purge_at (ends_at plus
-- IDEMPOTENCY_RETENTION_SECS, stored by put_event.lua). Removing them here, instead of giving
-- them a TTL, keeps every key of a live event out of reach of `volatile-*` eviction. UNLINK
-- frees a large hash in the background, so this never blocks Redis.
--
-- KEYS[1] event hash, KEYS[2] idempotency entries, KEYS[3] user totals
-- Returns 1 when it purged now, 0 when there is nothing to do (no end, not yet, already done).

local ev = redis.call('HMGET', KEYS[1], EV_PURGE_AT, EV_PURGED)
if not ev[1] or ev[1] == '' or ev[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(ev[1]) then return 0 end
redis.call('UNLINK', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], EV_PURGED, now)
return 1
