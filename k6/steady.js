// Steady load: a constant arrival rate of distinct buyers on an event whose stock never runs
// out, to measure the purchase path's throughput and latency (and how fast the workers keep
// up) without the sold-out short cut.
//
// teardown() checks through the API that nothing sold out, that nothing was oversold and
// that the workers confirmed every order, and reports how long they took to drain.
//
//   BASE_URL=http://127.0.0.1:8080 ADMIN_TOKEN=... k6 run k6/steady.js
//   RATE=3000 DURATION=1m VUS=200 k6 run k6/steady.js      # a real benchmark
//
// Environment (defaults finish in ~20 s):
//   RATE=300         buyers (purchases) per second
//   DURATION=15s     how long
//   STOCK            units on sale (default 10 x RATE x DURATION: never sells out)
//   VUS=50 MAX_VUS=400  pre-allocated / maximum virtual users
//   P99_MS=250       p99 purchase latency threshold (the alerting SLO)
//   MAX_DROPPED_PCT=1  dropped iterations allowed, in % of the planned purchases
// plus BASE_URL, ADMIN_TOKEN, EVENT_ID, DRAIN_TIMEOUT_S, SUMMARY_JSON (see lib/flashsale.js).

import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import * as fs from './lib/flashsale.js';

const RATE = Math.max(1, fs.envInt('RATE', 300));
const DURATION = fs.envDuration('DURATION', '15s');
const PLANNED = Math.round(RATE * fs.seconds(DURATION));
const STOCK = fs.envInt('STOCK', 10 * PLANNED);
const P99_MS = fs.envInt('P99_MS', 250);
const MAX_DROPPED = Math.floor((PLANNED * fs.envInt('MAX_DROPPED_PCT', 1)) / 100);

http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 409));

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: fs.envInt('VUS', 50),
      maxVUs: fs.envInt('MAX_VUS', 400),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{name:purchase}': [`p(99)<${P99_MS}`],
    dropped_iterations: [`count<=${MAX_DROPPED}`],
    checks: ['rate==1'],
    // The stock never runs out, so a sold-out answer is a bug.
    flashsale_sold_out: ['count==0'],
    flashsale_unexpected: ['count==0'],
    flashsale_books_balanced: ['rate==1'],
  },
  summaryTrendStats: fs.TREND_STATS,
  setupTimeout: '30s',
  teardownTimeout: '90s',
};

export function setup() {
  if (STOCK <= PLANNED) {
    exec.test.abort(`STOCK (${STOCK}) must exceed the ${PLANNED} planned purchases`);
  }
  const event = fs.eventId('k6-steady');
  fs.createEvent(event, { stock: STOCK, per_user_limit: 1, name: 'k6 steady load' });
  return { event, run: Math.floor(Math.random() * 36 ** 4).toString(36) };
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  const user = `buyer-${data.run}-${n}`;
  const res = fs.purchase(fs.gateway(n), data.event, user, { key: `${user}-1` });
  if (res.status === 202) {
    fs.metrics.accepted.add(1);
    check(res, { 'accepted order is pending': (r) => r.json('status') === 'pending' });
  } else if (res.status === 409 && fs.problemCode(res) === 'sold_out') {
    fs.metrics.soldOut.add(1);
  } else {
    fs.unexpected(res, `purchase by ${user}`);
  }
}

export function teardown(data) {
  const event = fs.waitForDrain(data.event);
  const sold = event.stock - event.remaining;
  fs.checkBooks(event, {
    'stock as configured': event.stock === STOCK,
    'never sold out (remaining > 0, state live)': event.remaining > 0 && event.state === 'live',
    'nothing oversold (sold <= stock)': sold <= event.stock,
    'every sold unit confirmed by the workers': event.confirmed === sold,
  });
}

export function handleSummary(data) {
  return fs.summary('steady', data, fs.seconds(DURATION));
}
