// Shared by the k6 scripts: configuration from the environment, the flashsale API calls,
// the books check run in teardown() and the compact end-of-test summary.
//
// Environment (all scripts):
//   BASE_URL     gateway URL, or a comma-separated list to spread the load over several
//                gateways (default http://127.0.0.1:8080)
//   ADMIN_TOKEN  bearer token of the admin routes (required: setup() creates an event)
//   BUYER_JWT_SECRET  the gateways' HS256 buyer-token secret: each buyer's requests then carry
//                a token for it (sub = its user id), minted here; unset: no tokens (BUYER_AUTH=none)
//   EVENT_ID     event to create (default: a unique id per run)
//   DRAIN_TIMEOUT_S  how long teardown() waits for the workers to confirm every order (30)
//   SUMMARY_JSON path to also write k6's full end-of-test data to, as JSON

import http from 'k6/http';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import { sleep } from 'k6';
import { Counter, Gauge, Rate, Trend } from 'k6/metrics';

export const BASE_URLS = (__ENV.BASE_URL || 'http://127.0.0.1:8080')
  .split(',')
  .map((url) => url.trim().replace(/\/+$/, ''))
  .filter((url) => url.length > 0);

export const ADMIN_TOKEN = __ENV.ADMIN_TOKEN || '';
export const BUYER_JWT_SECRET = __ENV.BUYER_JWT_SECRET || '';

const tokens = {};

/** An HS256 buyer token for `user` (valid for an hour), minted once per VU and user. */
export function buyerToken(user) {
  if (!tokens[user]) {
    const now = Math.floor(Date.now() / 1000);
    const part = (value) => encoding.b64encode(JSON.stringify(value), 'rawurl');
    const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: user, iat: now, exp: now + 3600 })}`;
    tokens[user] = `${signed}.${crypto.hmac('sha256', BUYER_JWT_SECRET, signed, 'base64rawurl')}`;
  }
  return tokens[user];
}

/** The Authorization header of `user`'s requests when BUYER_JWT_SECRET is set, else none. */
export function buyerHeaders(user) {
  return BUYER_JWT_SECRET ? { authorization: `Bearer ${buyerToken(user)}` } : {};
}

/** An integer from the environment, or the default. */
export function envInt(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  }
  return value;
}

/** A duration from the environment in k6 syntax ("10s", "1m30s"), or the default. */
export function envDuration(name, fallback) {
  const raw = __ENV[name] || fallback;
  if (!/^(\d+(ms|s|m|h))+$/.test(raw)) {
    throw new Error(`${name} must be a duration like 10s or 1m30s, got ${JSON.stringify(raw)}`);
  }
  return raw;
}

/** Seconds in a k6 duration string. */
export function seconds(duration) {
  const units = { ms: 0.001, s: 1, m: 60, h: 3600 };
  let total = 0;
  for (const [, n, unit] of duration.matchAll(/(\d+)(ms|s|m|h)/g)) total += Number(n) * units[unit];
  return total;
}

/** A fresh event id for this run (ids allow [A-Za-z0-9._:-], at most 64 characters). */
export function eventId(prefix) {
  if (__ENV.EVENT_ID) return __ENV.EVENT_ID;
  const random = Math.floor(Math.random() * 36 ** 6).toString(36);
  return `${prefix}-${Date.now().toString(36)}-${random}`;
}

/** The gateway for the n-th request: round-robin over BASE_URLS. */
export function gateway(n) {
  return BASE_URLS[n % BASE_URLS.length];
}

const JSON_HEADERS = { 'content-type': 'application/json' };

/** PUT /v1/events/{id} with the admin token; aborts the test unless the event was created. */
export function createEvent(id, config) {
  if (!ADMIN_TOKEN) {
    exec.test.abort('ADMIN_TOKEN is not set: setup() needs it to create the event');
  }
  const res = http.put(`${BASE_URLS[0]}/v1/events/${id}`, JSON.stringify(config), {
    headers: { ...JSON_HEADERS, authorization: `Bearer ${ADMIN_TOKEN}` },
    tags: { name: 'admin' },
  });
  if (res.status !== 201) {
    exec.test.abort(`PUT /v1/events/${id} answered ${res.status}: ${res.body}`);
  }
  return res.json();
}

/** GET /v1/events/{id}, parsed; throws unless 200. */
export function getEvent(id) {
  const res = http.get(`${BASE_URLS[0]}/v1/events/${id}`, { tags: { name: 'books' } });
  if (res.status !== 200) throw new Error(`GET /v1/events/${id} answered ${res.status}: ${res.body}`);
  return res.json();
}

/** The request parameters of one purchase, for http.post or http.batch. */
export function purchaseRequest(url, event, user, { quantity = 1, key = null, tag = 'purchase' } = {}) {
  const headers = { ...JSON_HEADERS, ...buyerHeaders(user) };
  if (key !== null) headers['idempotency-key'] = key;
  return {
    method: 'POST',
    url: `${url}/v1/events/${event}/purchases`,
    body: JSON.stringify({ user_id: user, quantity }),
    params: { headers, tags: { name: tag } },
  };
}

export function purchase(url, event, user, options) {
  const req = purchaseRequest(url, event, user, options);
  metrics.purchases.add(1);
  return http.post(req.url, req.body, req.params);
}

/** The `code` of a problem response, or null. */
export function problemCode(res) {
  try {
    return res.json('code') || null;
  } catch (_) {
    return null;
  }
}

// Outcomes as the buyers saw them. `flashsale_unexpected` is any answer the script does not
// expect (a 5xx, a timeout, a 409 other than sold out...): every script requires 0.
export const metrics = {
  purchases: new Counter('flashsale_purchases'),
  accepted: new Counter('flashsale_accepted'),
  soldOut: new Counter('flashsale_sold_out'),
  replayed: new Counter('flashsale_replayed'),
  unexpected: new Counter('flashsale_unexpected'),
  // Set by teardown(): the event's books as the API reports them after the workers drained.
  booksBalanced: new Rate('flashsale_books_balanced'),
  stock: new Gauge('flashsale_books_stock'),
  sold: new Gauge('flashsale_books_sold'),
  confirmed: new Gauge('flashsale_books_confirmed'),
  remaining: new Gauge('flashsale_books_remaining'),
  drainSeconds: new Trend('flashsale_drain_seconds'),
};

let unexpectedLogged = 0;

/** Counts an unexpected answer, logging the first few so a failing run says why. */
export function unexpected(res, what) {
  metrics.unexpected.add(1);
  if (unexpectedLogged < 5) {
    unexpectedLogged += 1;
    console.warn(`unexpected answer to ${what}: ${res.status} ${res.error || ''} ${String(res.body).slice(0, 300)}`);
  }
}

/**
 * Waits until the workers have confirmed every reserved unit (confirmed == stock -
 * remaining), polling every 200 ms for at most DRAIN_TIMEOUT_S seconds; returns the event.
 */
export function waitForDrain(id) {
  const timeout = envInt('DRAIN_TIMEOUT_S', 30);
  const started = Date.now();
  let event = getEvent(id);
  while (event.confirmed !== event.stock - event.remaining && Date.now() - started < timeout * 1000) {
    sleep(0.2);
    event = getEvent(id);
  }
  metrics.drainSeconds.add((Date.now() - started) / 1000);
  return event;
}

/**
 * Records the books in the summary metrics and checks each invariant; throws (failing the
 * run) listing every violated one. `invariants` maps a description to a boolean.
 */
export function checkBooks(event, invariants) {
  metrics.stock.add(event.stock);
  metrics.sold.add(event.stock - event.remaining);
  metrics.confirmed.add(event.confirmed);
  metrics.remaining.add(event.remaining);
  const violated = Object.entries(invariants)
    .filter(([, holds]) => !holds)
    .map(([what]) => what);
  metrics.booksBalanced.add(violated.length === 0);
  if (violated.length > 0) {
    throw new Error(`books of ${event.event_id} do not balance: ${violated.join('; ')} ` +
      `(event: ${JSON.stringify(event)})`);
  }
}

// ---- summary --------------------------------------------------------------------------

function value(data, metric, stat) {
  const m = data.metrics[metric];
  return m && m.values && m.values[stat] !== undefined ? m.values[stat] : null;
}

function count(data, metric) {
  return value(data, metric, 'count') || 0;
}

/** A k6 duration (milliseconds) for people. */
function ms(millis) {
  if (millis === null) return '-';
  return millis >= 1000 ? `${(millis / 1000).toFixed(2)} s` : `${millis.toFixed(millis < 10 ? 2 : 1)} ms`;
}

/** Names of the thresholds that failed. */
function failedThresholds(data) {
  const failed = [];
  for (const [name, metric] of Object.entries(data.metrics)) {
    for (const [expr, result] of Object.entries(metric.thresholds || {})) {
      if (!result.ok) failed.push(`${name} ${expr}`);
    }
  }
  return failed;
}

/**
 * A compact end-of-test summary: the books, what buyers saw, throughput and latency.
 * `loadSeconds` is how long the scenario sent purchases (the rate's denominator);
 * `lines` adds script-specific lines.
 */
export function summary(name, data, loadSeconds, lines = []) {
  const event = data.setup_data ? data.setup_data.event : '?';
  const stock = value(data, 'flashsale_books_stock', 'value');
  const sold = value(data, 'flashsale_books_sold', 'value');
  const confirmed = value(data, 'flashsale_books_confirmed', 'value');
  const remaining = value(data, 'flashsale_books_remaining', 'value');
  const accepted = count(data, 'flashsale_accepted');
  const oversold = stock === null ? '?' : Math.max(0, sold - stock, accepted - stock);
  const purchases = 'http_req_duration{name:purchase}';
  const requests = count(data, 'flashsale_purchases');
  const durationS = data.state.testRunDurationMs / 1000;
  const failed = failedThresholds(data);
  // Set by teardown's checkBooks: null when teardown never got that far.
  const checked = (value(data, 'flashsale_books_balanced', 'passes') || 0) +
    (value(data, 'flashsale_books_balanced', 'fails') || 0);
  const balanced = checked > 0 ? value(data, 'flashsale_books_balanced', 'rate') === 1 : null;
  let verdict = 'PASS';
  if (!data.setup_data) verdict = 'ABORTED (setup did not finish; see the k6 error)';
  else if (balanced === null) verdict = 'FAIL (the books were not checked; see the k6 error)';
  else if (failed.length > 0) verdict = `FAIL (${failed.join(', ')})`;
  const out = [
    '',
    `${name}: event ${event} via ${BASE_URLS.length} gateway(s), ${durationS.toFixed(1)} s  ${verdict}`,
    `  books    stock ${stock ?? '?'}  sold ${sold ?? '?'}  confirmed ${confirmed ?? '?'}  ` +
      `remaining ${remaining ?? '?'}  oversold ${oversold}  ` +
      `${balanced === null ? 'not checked' : balanced ? 'balanced' : 'NOT BALANCED'}`,
    `  buyers   ${requests} purchases: ${accepted} accepted, ${count(data, 'flashsale_sold_out')} sold out, ` +
      `${count(data, 'flashsale_replayed')} replays, ${count(data, 'flashsale_unexpected')} unexpected, ` +
      `${count(data, 'dropped_iterations')} dropped iterations`,
    `  speed    ${(requests / loadSeconds).toFixed(1)} purchases/s over ${loadSeconds} s  ` +
      `p50 ${ms(value(data, purchases, 'med'))}  p95 ${ms(value(data, purchases, 'p(95)'))}  ` +
      `p99 ${ms(value(data, purchases, 'p(99)'))}  max ${ms(value(data, purchases, 'max'))}  ` +
      `drained in ${(value(data, 'flashsale_drain_seconds', 'max') ?? 0).toFixed(1)} s`,
    ...lines.map((line) => `  ${line}`),
    '',
  ];
  const result = { stdout: out.join('\n') };
  if (__ENV.SUMMARY_JSON) result[__ENV.SUMMARY_JSON] = JSON.stringify(data, null, 2);
  return result;
}

/** Trend statistics every script reports (p99 included, for the thresholds and summary). */
export const TREND_STATS = ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'];
