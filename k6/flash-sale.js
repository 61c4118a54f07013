// Flash sale: a spike of distinct buyers, far more than the stock, each buying one unit.
// Every RETRY_EVERY-th buyer sends the same request again RETRY_AFTER_MS later, as a client
// does after a timeout: a buyer who got an order must get a replay of it (200, same order id),
// also once the event has sold out; a buyer who got sold out must get sold out again.
//
// Every unit must be sold exactly once: the buyers get exactly STOCK orders (202), everyone
// else a sold-out 409, and after the workers drain the event reports sold == confirmed ==
// stock and remaining == 0. teardown() checks the books through the API and fails the run
// if they do not balance.
//
//   BASE_URL=http://127.0.0.1:8080 ADMIN_TOKEN=... k6 run k6/flash-sale.js
//
// Environment (defaults finish in ~15 s):
//   STOCK=100        units on sale
//   RATE=400         peak arrival rate, buyers per second
//   DURATION=10s     time at the peak (plus a 1 s ramp up and a 1 s ramp down)
//   VUS=100 MAX_VUS=400  pre-allocated / maximum virtual users (retrying buyers hold one)
//   P99_MS=500       p99 purchase latency threshold
//   RETRY_EVERY=10   every n-th buyer retries once (0: nobody)
//   RETRY_AFTER_MS=1000  how long after the first answer (the stock is gone by then)
//   MAX_DROPPED_PCT=1  dropped iterations allowed, in % of the planned buyers
// plus BASE_URL, ADMIN_TOKEN, EVENT_ID, DRAIN_TIMEOUT_S, SUMMARY_JSON (see lib/flashsale.js).

import http from 'k6/http';
import exec from 'k6/execution';
import { check, sleep } from 'k6';
import * as fs from './lib/flashsale.js';

const STOCK = fs.envInt('STOCK', 100);
const RATE = fs.envInt('RATE', 400);
const DURATION = fs.envDuration('DURATION', '10s');
const P99_MS = fs.envInt('P99_MS', 500);
const RETRY_EVERY = fs.envInt('RETRY_EVERY', 10);
const RETRY_AFTER_MS = fs.envInt('RETRY_AFTER_MS', 1000);
// Arrivals planned by the stages below: the ramps count for half.
const PLANNED = Math.round(RATE * (fs.seconds(DURATION) + 1));
const MAX_DROPPED = Math.floor((PLANNED * fs.envInt('MAX_DROPPED_PCT', 1)) / 100);

// A sold-out 409 is the expected answer for most buyers, not a failed request.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 409));

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: 0,
      timeUnit: '1s',
      preAllocatedVUs: fs.envInt('VUS', 100),
      maxVUs: fs.envInt('MAX_VUS', 400),
      stages: [
        { target: RATE, duration: '1s' },
        { target: RATE, duration: DURATION },
        { target: 0, duration: '1s' },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:purchase}': [`p(99)<${P99_MS}`],
    dropped_iterations: [`count<=${MAX_DROPPED}`],
    checks: ['rate==1'],
    // Nothing oversold, as the buyers saw it: at most STOCK orders were accepted.
    flashsale_accepted: [`count<=${STOCK}`],
    flashsale_unexpected: ['count==0'],
    flashsale_books_balanced: ['rate==1'],
  },
  summaryTrendStats: fs.TREND_STATS,
  setupTimeout: '30s',
  teardownTimeout: '90s',
};

export function setup() {
  if (PLANNED <= STOCK) {
    exec.test.abort(`RATE x DURATION plans ${PLANNED} buyers for ${STOCK} units: not a flash sale`);
  }
  const event = fs.eventId('k6-flash');
  fs.createEvent(event, { stock: STOCK, per_user_limit: 1, name: 'k6 flash sale' });
  // Buyer ids unique to this run, so a rerun against the same event cannot replay.
  return { event, run: Math.floor(Math.random() * 36 ** 4).toString(36) };
}

export default function (data) {
  const n = exec.scenario.iterationInTest;
  const user = `buyer-${data.run}-${n}`;
  const key = `${user}-1`;
  const res = fs.purchase(fs.gateway(n), data.event, user, { key });
  if (res.status === 202) {
    fs.metrics.accepted.add(1);
    check(res, {
      'accepted order is pending': (r) => r.json('status') === 'pending' && r.json('user_id') === user,
      'accepted order has a Location': (r) => (r.headers.Location || '').endsWith(r.json('order_id')),
    });
  } else if (res.status === 409 && fs.problemCode(res) === 'sold_out') {
    fs.metrics.soldOut.add(1);
  } else {
    fs.unexpected(res, `purchase by ${user}`);
    return;
  }
  if (RETRY_EVERY > 0 && n % RETRY_EVERY === 0) retry(data, n, user, key, res);
}

/** The same request again, through another gateway: it must answer as the first did. */
function retry(data, n, user, key, first) {
  sleep(RETRY_AFTER_MS / 1000);
  const res = fs.purchase(fs.gateway(n + 1), data.event, user, { key });
  if (first.status === 202) {
    if (res.status === 200) fs.metrics.replayed.add(1);
    const same = check(res, {
      'retry of an order is a replay of it': (r) => r.status === 200 &&
        r.headers['Idempotent-Replayed'] === 'true' && r.json('order_id') === first.json('order_id'),
    });
    if (!same) fs.unexpected(res, `retry by ${user}`);
  } else {
    if (res.status === 409) fs.metrics.soldOut.add(1);
    const same = check(res, {
      'retry of a sold-out purchase is sold out': (r) => r.status === 409 && fs.problemCode(r) === 'sold_out',
    });
    if (!same) fs.unexpected(res, `retry by ${user}`);
  }
}

export function teardown(data) {
  const event = fs.waitForDrain(data.event);
  const sold = event.stock - event.remaining;
  fs.checkBooks(event, {
    'stock as configured': event.stock === STOCK,
    'sold == stock (every unit sold)': sold === STOCK,
    'remaining == 0 and state sold_out': event.remaining === 0 && event.state === 'sold_out',
    'nothing oversold (sold <= stock)': sold <= event.stock,
    'every sold unit confirmed by the workers': event.confirmed === sold,
  });
}

export function handleSummary(data) {
  return fs.summary('flash-sale', data, fs.seconds(DURATION) + 2);
}
