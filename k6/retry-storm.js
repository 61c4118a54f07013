// Retry storm: every buyer sends the same purchase RETRIES times at once (a client that
// times out and retries, a double-clicking user, a proxy retrying), spread over the
// gateways. Each buyer must end up with exactly one order: one 202, every other answer a
// 200 replay (Idempotent-Replayed: true) of the same order.
//
// Even-numbered buyers send an Idempotency-Key, odd-numbered ones none (the gateway then
// scopes the purchase to the user). The per-user limit is RETRIES and the stock twice the
// buyers, so an idempotency bug would show up as extra orders, not be hidden by a 409.
//
// teardown() re-posts every buyer's purchase through the API: each must be a replay of an
// existing order (never a new one), and the event must report exactly BUYERS units sold
// and confirmed.
//
//   BASE_URL=http://127.0.0.1:8080,http://127.0.0.1:8081 ADMIN_TOKEN=... k6 run k6/retry-storm.js
//
// Environment (defaults finish in ~10 s):
//   BUYERS=100       distinct buyers
//   RETRIES=10       identical requests per buyer, sent in parallel
//   RATE=25          buyers per second (the storm lasts BUYERS / RATE seconds)
//   STOCK=2*BUYERS   units on sale (keep it above BUYERS)
//   VUS=20 MAX_VUS=100  pre-allocated / maximum virtual users
//   P99_MS=500       p99 purchase latency threshold
// plus BASE_URL, ADMIN_TOKEN, EVENT_ID, DRAIN_TIMEOUT_S, SUMMARY_JSON (see lib/flashsale.js).

import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import * as fs from './lib/flashsale.js';

const BUYERS = fs.envInt('BUYERS', 100);
const RETRIES = Math.max(2, fs.envInt('RETRIES', 10));
const RATE = Math.max(1, fs.envInt('RATE', 25));
const STOCK = fs.envInt('STOCK', 2 * BUYERS);
const P99_MS = fs.envInt('P99_MS', 500);
const STORM_SECONDS = Math.ceil(BUYERS / RATE);

// Buyers whose answers were not one order: several 202s, different order ids, or an
// answer other than 202 / replayed 200.
const broken = new Counter('flashsale_buyers_without_exactly_one_order');

http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 409));

export const options = {
  scenarios: {
    storm: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${STORM_SECONDS}s`,
      preAllocatedVUs: fs.envInt('VUS', 20),
      maxVUs: fs.envInt('MAX_VUS', 100),
    },
  },
  // http.batch sends every retry of a buyer at once.
  batch: RETRIES,
  batchPerHost: RETRIES,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:purchase}': [`p(99)<${P99_MS}`],
    dropped_iterations: ['count==0'],
    checks: ['rate==1'],
    flashsale_buyers_without_exactly_one_order: ['count==0'],
    flashsale_accepted: [`count<=${BUYERS}`],
    flashsale_unexpected: ['count==0'],
    flashsale_books_balanced: ['rate==1'],
  },
  summaryTrendStats: fs.TREND_STATS,
  setupTimeout: '30s',
  teardownTimeout: '120s',
};

/** The one purchase a buyer keeps sending: same user, same body, same key (if any). */
function buyerRequest(data, buyer, url, tag = 'purchase') {
  const user = `buyer-${data.run}-${buyer}`;
  const key = buyer % 2 === 0 ? `${user}-key` : null;
  return fs.purchaseRequest(url, data.event, user, { key, tag });
}

export function setup() {
  if (STOCK < BUYERS) {
    exec.test.abort(`STOCK (${STOCK}) must be at least BUYERS (${BUYERS}): every buyer gets one unit`);
  }
  const event = fs.eventId('k6-retry');
  fs.createEvent(event, { stock: STOCK, per_user_limit: RETRIES, name: 'k6 retry storm' });
  return { event, run: Math.floor(Math.random() * 36 ** 4).toString(36) };
}

export default function (data) {
  const buyer = exec.scenario.iterationInTest;
  if (buyer >= BUYERS) return;
  const requests = [];
  for (let i = 0; i < RETRIES; i++) requests.push(buyerRequest(data, buyer, fs.gateway(buyer + i)));
  fs.metrics.purchases.add(requests.length);
  const responses = http.batch(requests);

  const orderIds = new Set();
  let created = 0;
  let ok = true;
  for (const res of responses) {
    if (res.status === 202) {
      created += 1;
      fs.metrics.accepted.add(1);
      orderIds.add(res.json('order_id'));
    } else if (res.status === 200 && res.headers['Idempotent-Replayed'] === 'true') {
      fs.metrics.replayed.add(1);
      orderIds.add(res.json('order_id'));
    } else {
      fs.unexpected(res, `purchase by buyer ${buyer}`);
      ok = false;
    }
  }
  ok = check(null, {
    'exactly one 202 per buyer': () => created === 1,
    'every retry answers the same order': () => orderIds.size === 1,
  }) && ok;
  if (!ok) broken.add(1);
}

export function teardown(data) {
  // Every buyer's purchase again, in batches: each must replay the order of the storm.
  let replays = 0;
  let created = 0;
  const orders = [];
  for (let first = 0; first < BUYERS; first += 20) {
    const batch = [];
    for (let buyer = first; buyer < Math.min(first + 20, BUYERS); buyer++) {
      batch.push(buyerRequest(data, buyer, fs.gateway(buyer), 'books'));
    }
    for (const res of http.batch(batch)) {
      if (res.status === 200 && res.headers['Idempotent-Replayed'] === 'true') {
        replays += 1;
        orders.push({ id: res.json('order_id'), user: res.json('user_id') });
      } else {
        created += res.status === 202 ? 1 : 0;
        console.warn(`teardown re-post: ${res.status} ${String(res.body).slice(0, 200)}`);
      }
    }
  }
  const event = fs.waitForDrain(data.event);
  // The replayed orders exist and the workers confirmed them.
  let confirmed = 0;
  for (let first = 0; first < orders.length; first += 20) {
    const batch = orders.slice(first, first + 20).map(({ id, user }) => ({
      method: 'GET',
      url: `${fs.BASE_URLS[0]}/v1/events/${data.event}/orders/${id}`,
      params: { headers: fs.buyerHeaders(user), tags: { name: 'books' } },
    }));
    for (const res of http.batch(batch)) {
      if (res.status === 200 && res.json('status') === 'confirmed') confirmed += 1;
    }
  }
  const sold = event.stock - event.remaining;
  fs.checkBooks(event, {
    [`every buyer's re-post replays one existing order (${replays}/${BUYERS} replays)`]: replays === BUYERS,
    [`no re-post created a new order (${created} did)`]: created === 0,
    [`exactly one unit per buyer: sold == ${BUYERS}`]: sold === BUYERS,
    'nothing oversold (sold <= stock)': sold <= event.stock,
    'every sold unit confirmed by the workers': event.confirmed === sold,
    [`every buyer's order reads back confirmed (${confirmed}/${BUYERS})`]: confirmed === BUYERS,
  });
}

export function handleSummary(data) {
  return fs.summary('retry-storm', data, STORM_SECONDS, [
    `storm    ${BUYERS} buyers x ${RETRIES} identical requests; ` +
      `${data.metrics.flashsale_buyers_without_exactly_one_order.values.count} buyers without exactly one order`,
  ]);
}
