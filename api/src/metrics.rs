//! The gateway's Prometheus series. Names are a contract for dashboards and alerts.
//!
//! - `flashsale_purchases_total{outcome}`: accepted, replayed, and for a problem its
//!   [`crate::error::ProblemSpec::outcome`]: sold_out, limit_exceeded, sale_not_active, sale_paused, rejected
//!   (any other 4xx), error (5xx).
//! - `flashsale_purchase_duration_seconds`: purchase latency, all outcomes.
//! - `flashsale_sold_out_local_total`: purchases answered `sold_out` from the local flag.
//! - `flashsale_http_requests_in_flight`: requests being handled now.
//! - `flashsale_build_info{version,revision}`: always 1.
//! - `flashsale_rate_limited_total{limit}`: requests refused with 429, `limit` `buyer` or
//!   `client`; `flashsale_rate_limit_keys{limit}`: entries the limiter held at its last sweep,
//!   before it dropped the stale ones (the most it held since the sweep before);
//!   `flashsale_rate_limit_overflow_total{limit}`: requests of keys that found the store full.
//! - `flashsale_http_requests_total{method,route,status}` and
//!   `flashsale_http_request_duration_seconds{method,route}`: by matched route, never by raw
//!   path (unmatched requests share `route="unmatched"`), so cardinality stays bounded.
//!   Every label comes from a fixed set: `method` is one of [`method_label`]'s eight values
//!   (an invented method is `other`), `route` a route template or `unmatched`, `status` one
//!   the gateway itself chose.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use flashsale_shared::telemetry::{LATENCY_BUCKETS, Metrics};
use metrics::{Counter, Gauge, Histogram};

use crate::error::{Limit, ProblemCode};

pub const PURCHASES_TOTAL: &str = "flashsale_purchases_total";
pub const PURCHASE_DURATION: &str = "flashsale_purchase_duration_seconds";
pub const SOLD_OUT_LOCAL_TOTAL: &str = "flashsale_sold_out_local_total";
pub const HTTP_REQUESTS_TOTAL: &str = "flashsale_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "flashsale_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "flashsale_http_requests_in_flight";
pub const RATE_LIMITED_TOTAL: &str = "flashsale_rate_limited_total";
pub const RATE_LIMIT_KEYS: &str = "flashsale_rate_limit_keys";
pub const RATE_LIMIT_OVERFLOW_TOTAL: &str = "flashsale_rate_limit_overflow_total";

/// The route whose requests also count as purchases.
pub const PURCHASE_ROUTE: &str = "/v1/events/{event_id}/purchases";

/// Request count and latency handles by route, then (method label, status): looked up by the
/// matched route's `&str` without allocating.
type HttpSeries = HashMap<String, HashMap<(&'static str, u16), (Counter, Histogram)>>;

/// The `method` label: the methods a client of this API may send, and `other` for the rest.
/// HTTP lets a client invent methods (`FOO0`, `FOO1`, ...): taken raw, 200 of them grew
/// `/metrics` from 3.4 KB to 306 KB.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[derive(Debug)]
pub struct ApiMetrics {
    registry: Metrics,
    /// Requests being handled now (the one middleware counts them in and out).
    pub(crate) in_flight: metrics::Gauge,
    accepted: Counter,
    replayed: Counter,
    /// By [`ProblemCode`]: the counter of its outcome (codes sharing one share the series).
    problems: [Counter; ProblemCode::ALL.len()],
    /// A failure that is not a problem (none should be: `observe` makes every error one).
    rejected: Counter,
    error: Counter,
    purchase_duration: Histogram,
    sold_out_local: Counter,
    /// By [`Limit`]: buyer, client.
    rate_limited: [Counter; 2],
    rate_limit_keys: [Gauge; 2],
    rate_limit_overflow: [Counter; 2],
    /// Handles per (method, route[, status]), registered on first use and then reused, so a
    /// request costs one read-locked lookup instead of building label sets.
    http: RwLock<HttpSeries>,
}

impl ApiMetrics {
    pub fn new() -> Self {
        let registry =
            Metrics::new(&[(PURCHASE_DURATION, LATENCY_BUCKETS), (HTTP_REQUEST_DURATION, LATENCY_BUCKETS)]);
        registry.build_info();
        let outcome = |name: &str| {
            registry.counter(PURCHASES_TOTAL, "Purchase requests by outcome.", &[("outcome", name)])
        };
        Self {
            accepted: outcome("accepted"),
            replayed: outcome("replayed"),
            problems: ProblemCode::ALL.map(|code| outcome(code.spec().outcome)),
            rejected: outcome("rejected"),
            error: outcome("error"),
            purchase_duration: registry.histogram(
                PURCHASE_DURATION,
                "Time to answer a purchase request, all outcomes.",
                &[],
            ),
            sold_out_local: registry.counter(
                SOLD_OUT_LOCAL_TOTAL,
                "Purchases answered sold_out from the gateway's local flag, without Redis.",
                &[],
            ),
            rate_limited: [Limit::Buyer, Limit::Client].map(|limit| {
                registry.counter(
                    RATE_LIMITED_TOTAL,
                    "Requests refused with 429, by limit.",
                    &[("limit", limit.label())],
                )
            }),
            rate_limit_keys: [Limit::Buyer, Limit::Client].map(|limit| {
                registry.gauge(
                    RATE_LIMIT_KEYS,
                    "Entries a rate limiter held at its last sweep, before stale ones were dropped.",
                    &[("limit", limit.label())],
                )
            }),
            rate_limit_overflow: [Limit::Buyer, Limit::Client].map(|limit| {
                registry.counter(
                    RATE_LIMIT_OVERFLOW_TOTAL,
                    "Requests of keys that found the rate limiter's store full (one shared entry).",
                    &[("limit", limit.label())],
                )
            }),
            http: RwLock::new(HashMap::new()),
            in_flight: registry.gauge(HTTP_IN_FLIGHT, "HTTP requests being handled now.", &[]),
            registry,
        }
    }

    /// A purchase answered from the local sold-out flag (also counted as `sold_out`).
    pub fn sold_out_locally(&self) {
        self.sold_out_local.increment(1);
    }

    pub fn rate_limited(&self, limit: Limit) {
        self.rate_limited[limit as usize].increment(1);
    }

    /// What a limiter's sweep found: entries held before it, overflowed requests so far.
    pub fn rate_limit_swept(&self, limit: Limit, held: usize, overflowed: u64) {
        self.rate_limit_keys[limit as usize].set(held as f64);
        self.rate_limit_overflow[limit as usize].absolute(overflowed);
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }

    pub fn run_upkeep(&self) {
        self.registry.run_upkeep();
    }

    pub(crate) fn record_purchase(&self, status: StatusCode, code: Option<ProblemCode>, elapsed: Duration) {
        let counter = match (status.as_u16(), code) {
            (202, _) => &self.accepted,
            (200, _) => &self.replayed,
            (_, Some(code)) => &self.problems[code as usize],
            (s, _) if s >= 500 => &self.error,
            _ => &self.rejected,
        };
        counter.increment(1);
        self.purchase_duration.record(elapsed.as_secs_f64());
    }

    pub(crate) fn record_http(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let method = method_label(method);
        let series = self.http.read().ok().and_then(|by_route| {
            by_route.get(route).and_then(|by_status| by_status.get(&(method, status.as_u16())).cloned())
        });
        let (count, duration) = series.unwrap_or_else(|| self.register_http(method, route, status));
        count.increment(1);
        duration.record(elapsed.as_secs_f64());
    }

    /// First request of a (method, route, status): register its series once.
    fn register_http(&self, method: &'static str, route: &str, status: StatusCode) -> (Counter, Histogram) {
        let labels = [("method", method), ("route", route)];
        let handles = (
            self.registry.counter(
                HTTP_REQUESTS_TOTAL,
                "HTTP requests by method, matched route and status.",
                &[labels[0], labels[1], ("status", status.as_str())],
            ),
            self.registry.histogram(
                HTTP_REQUEST_DURATION,
                "HTTP request latency by method and matched route.",
                &labels,
            ),
        );
        if let Ok(mut by_route) = self.http.write() {
            by_route.entry(route.to_owned()).or_default().insert((method, status.as_u16()), handles.clone());
        }
        handles
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}
