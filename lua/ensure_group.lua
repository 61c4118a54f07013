-- ensure_group.lua: create the consumer group of an event's order stream, at id 0 with
-- MKSTREAM (entries added before the group existed are still delivered), only while the event
-- exists: a worker that still polls an event that just left Redis must not bring its stream
-- back. An existing group is success.
--
-- KEYS[1] event hash, KEYS[2] order stream; ARGV[1] consumer group
-- Returns 1 when the group exists now, 0 when the event does not.

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
if not ok then
  local msg = type(err) == 'table' and err.err or tostring(err)
  if string.sub(msg, 1, 9) ~= 'BUSYGROUP' then error(err) end
end
return 1
