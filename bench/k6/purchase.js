// Open-model latency run of the purchase path: a fixed arrival rate, whatever the server does.
// Every iteration is a distinct buyer; every response must carry the expected status, and
// handleSummary writes one JSON document for bench/run.sh, which fails the run on any
// unexpected status and reports dropped iterations (offered load that was never sent).
//
// Environment: BASE_URL, EVENT, PREFIX (user-id prefix, unique per run), RATE (requests/s),
// DURATION (e.g. "8s"), VUS (pre-allocated VUs = at most this many connections),
// EXPECT (the one status every response must have: 202 accepted path, 409 sold-out path),
// OUT (where the JSON summary goes).
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL;
const EVENT = __ENV.EVENT;
const PREFIX = __ENV.PREFIX || 'k';
const EXPECT = parseInt(__ENV.EXPECT || '202', 10);
const VUS = parseInt(__ENV.VUS || '100', 10);
const RATE = parseInt(__ENV.RATE || '1000', 10);

const unexpected = new Counter('unexpected_status');

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
  scenarios: {
    purchases: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '8s',
      preAllocatedVUs: VUS,
      maxVUs: VUS,
      gracefulStop: '2s',
    },
  },
};

const url = `${BASE_URL}/v1/events/${EVENT}/purchases`;
const params = { headers: { 'Content-Type': 'application/json' }, responseCallback: http.expectedStatuses(EXPECT) };

export default function () {
  const user = `${PREFIX}-${exec.vu.idInTest}-${exec.vu.iterationInInstance}`;
  const res = http.post(url, `{"user_id":"${user}","quantity":1}`, params);
  if (res.status !== EXPECT) {
    unexpected.add(1, { status: String(res.status) });
  }
}

export function handleSummary(data) {
  const m = data.metrics;
  const value = (name, field) => (m[name] && m[name].values[field] !== undefined ? m[name].values[field] : 0);
  const d = (field) => value('http_req_duration', field) * 1000; // ms -> us
  const out = {
    offered_rate: RATE,
    requests: value('http_reqs', 'count'),
    rate: value('http_reqs', 'rate'),
    dropped_iterations: value('dropped_iterations', 'count'),
    unexpected_status: value('unexpected_status', 'count'),
    failed: value('http_req_failed', 'passes'),
    vus_max: value('vus_max', 'value'),
    latency_us: {
      mean: d('avg'), p50: d('med'), p90: d('p(90)'), p99: d('p(99)'), 'p99.9': d('p(99.9)'), max: d('max'),
    },
  };
  return { [__ENV.OUT || 'stdout']: JSON.stringify(out) + '\n' };
}
