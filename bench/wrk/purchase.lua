-- wrk script for the purchase path: every request is a distinct buyer, every response is
-- tallied by status, and done() writes one JSON summary for bench/run.sh to check.
--
-- Environment: BENCH_EVENT (event id), BENCH_PREFIX (user-id prefix, unique per run so no
-- two runs share a buyer), BENCH_OUT (where done() writes its JSON), BENCH_DELAY_MS
-- (optional: pause each connection this long between requests, to offer a fixed rate).

local event = assert(os.getenv("BENCH_EVENT"), "BENCH_EVENT is not set")
local prefix = os.getenv("BENCH_PREFIX") or "u"
local out = os.getenv("BENCH_OUT")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  path = "/v1/events/" .. event .. "/purchases"
  headers = { ["Content-Type"] = "application/json" }
  user_prefix = '{"user_id":"' .. prefix .. "-" .. tid .. "-"
  counter = 0
  statuses = {}
end

function request()
  counter = counter + 1
  return wrk.format("POST", path, headers, user_prefix .. counter .. '","quantity":1}')
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

if pause then
  function delay()
    return pause
  end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  local json = string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"statuses":{%s},"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99.9":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    table.concat(parts, ","),
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9))
  if out then
    local f = assert(io.open(out, "w"))
    f:write(json)
    f:close()
  else
    io.write(json)
  end
end
