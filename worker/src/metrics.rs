//! The worker's Prometheus series (names are a contract for dashboards and alerts) and the
//! small HTTP server that exposes them with `/healthz`.
//!
//! - `flashsale_orders_finalized_total`: orders confirmed by this worker.
//! - `flashsale_orders_dead_lettered_total{reason}`: entries this worker moved to a dead-letter
//!   stream, by reason (a fixed set: `shared::dead_letter::REASONS`); `max_attempts` entries
//!   are *parked*: their orders wait for an operator.
//! - `flashsale_finalize_failures_total`: finalize attempts an entry made fail (counted
//!   towards `MAX_DELIVERIES`; Redis faults are not among them).
//! - `flashsale_events_purged_total`: events whose idempotency entries and user totals were
//!   removed after their retention; `flashsale_events_removed_total`: events that left Redis
//!   (every order in the ledger), whose `{event}` series then disappear.
//! - `flashsale_entries_skipped_total`: entries already finished elsewhere (redeliveries).
//! - `flashsale_entries_claimed_total`: entries taken over from idle consumers.
//! - `flashsale_finalize_lag_seconds`: reservation to confirmation.
//! - `flashsale_stream_pending`, `flashsale_stream_backlog`: delivered-but-unacknowledged and
//!   not-yet-delivered entries, over all events (group-wide: every worker reports the same).
//! - `flashsale_event_stock`, `flashsale_event_remaining`, `flashsale_event_confirmed`
//!   `{event}`: each event's units; `flashsale_event_dead_letters{event}`: its unresolved
//!   dead letters; `flashsale_event_live{event}`: 1 while it is on sale (alerts sized for a
//!   two-minute sale are gated on it).
//! - `flashsale_build_info{version,revision}`: always 1.
//! - `flashsale_worker_redis_errors_total`: failed Redis calls (retried).
//! - `flashsale_ledger_up`: 1 while the ledger (PostgreSQL) answers; `flashsale_ledger_errors_total`
//!   failed ledger calls (retried); `flashsale_ledger_write_seconds` the time of one batch's
//!   write; `flashsale_ledger_lag_seconds` reservation (202) to recorded in the ledger.
//! - `flashsale_ledger_refusals_total{what}`: what the ledger refused as the data's fault
//!   (a constraint, a value out of range: SQLSTATE classes 22 and 23), never an outage:
//!   `order` (its entry's attempt fails, parked after `MAX_DELIVERIES`) or `event` (its
//!   configuration row; its orders are refused too).
//! - `flashsale_redis_reconciliations_total`, `flashsale_orders_restored_total`: a restarted
//!   Redis reconciled with the ledger before sales resumed (the fence), and what came back.
//! - `flashsale_ledger_drift_units{event}`: Redis's confirmed units minus the ledger's (0 when
//!   they agree; briefly negative while a recorded batch is being confirmed in Redis).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use flashsale_shared::EventId;
use flashsale_shared::telemetry::Metrics;
use metrics::{Counter, Gauge, Histogram};

/// Lag spans milliseconds (a healthy worker) to minutes (a backlog after an outage).
const LAG_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// What the ledger refused (`flashsale_ledger_refusals_total{what}`): a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    Order,
    Event,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Event => "event",
        }
    }
}

#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Metrics,
    pub finalized: Counter,
    dead_lettered: HashMap<&'static str, Counter>,
    pub finalize_failures: Counter,
    pub purged: Counter,
    pub events_removed: Counter,
    pub reconciliations: Counter,
    pub orders_restored: Counter,
    pub skipped: Counter,
    pub claimed: Counter,
    pub redis_errors: Counter,
    pub trimmed: Counter,
    pub finalize_lag: Histogram,
    pub ledger_up: Gauge,
    pub ledger_errors: Counter,
    ledger_refusals: HashMap<Refusal, Counter>,
    pub ledger_write: Histogram,
    pub ledger_lag: Histogram,
    pub stream_pending: Gauge,
    pub stream_backlog: Gauge,
    per_event: Mutex<HashMap<EventId, EventGauges>>,
}

#[derive(Debug, Clone)]
pub struct EventGauges {
    pub stock: Gauge,
    pub remaining: Gauge,
    pub confirmed: Gauge,
    pub dead_letters: Gauge,
    pub drift: Gauge,
    /// 1 while the event is on sale (in its window, not paused or ended), sold out or not.
    pub live: Gauge,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        Self::with_gauge_idle(flashsale_shared::telemetry::GAUGE_IDLE)
    }

    /// `idle`: how long a gauge may go without an update before its series disappears (above
    /// every interval at which the worker sets its gauges).
    pub fn with_gauge_idle(idle: std::time::Duration) -> Self {
        let registry = Metrics::with_gauge_idle(
            &[
                ("flashsale_finalize_lag_seconds", LAG_BUCKETS),
                ("flashsale_ledger_lag_seconds", LAG_BUCKETS),
                ("flashsale_ledger_write_seconds", flashsale_shared::telemetry::LATENCY_BUCKETS),
            ],
            idle,
        );
        Self {
            finalized: registry.counter(
                "flashsale_orders_finalized_total",
                "Orders confirmed by this worker.",
                &[],
            ),
            dead_lettered: flashsale_shared::dead_letter::REASONS
                .iter()
                .map(|reason| {
                    let counter = registry.counter(
                        "flashsale_orders_dead_lettered_total",
                        "Stream entries moved to a dead-letter stream by this worker, by reason \
                         (max_attempts: parked, its order pending until an operator decides).",
                        &[("reason", reason)],
                    );
                    (*reason, counter)
                })
                .collect(),
            finalize_failures: registry.counter(
                "flashsale_finalize_failures_total",
                "Finalize attempts that failed because of the entry (counted towards MAX_DELIVERIES).",
                &[],
            ),
            reconciliations: registry.counter(
                "flashsale_redis_reconciliations_total",
                "Times this worker reconciled a restarted Redis with the ledger and lifted the sales fence.",
                &[],
            ),
            orders_restored: registry.counter(
                "flashsale_orders_restored_total",
                "Orders put back into a restarted Redis from the ledger.",
                &[],
            ),
            events_removed: registry.counter(
                "flashsale_events_removed_total",
                "Ended events whose every order is in the ledger and whose keys left Redis.",
                &[],
            ),
            purged: registry.counter(
                "flashsale_events_purged_total",
                "Events whose idempotency entries and user totals were removed after retention.",
                &[],
            ),
            skipped: registry.counter(
                "flashsale_entries_skipped_total",
                "Entries whose order was already final or that another worker had acknowledged.",
                &[],
            ),
            claimed: registry.counter(
                "flashsale_entries_claimed_total",
                "Entries taken over from idle consumers (XAUTOCLAIM).",
                &[],
            ),
            redis_errors: registry.counter(
                "flashsale_worker_redis_errors_total",
                "Failed Redis calls (the work is retried).",
                &[],
            ),
            trimmed: registry.counter(
                "flashsale_stream_trimmed_total",
                "Acknowledged entries trimmed from order streams.",
                &[],
            ),
            finalize_lag: registry.histogram(
                "flashsale_finalize_lag_seconds",
                "Time from reservation (202) to confirmation.",
                &[],
            ),
            ledger_up: registry.gauge("flashsale_ledger_up", "1 while the ledger (PostgreSQL) answers.", &[]),
            ledger_errors: registry.counter(
                "flashsale_ledger_errors_total",
                "Failed ledger calls (the work is retried; no order is counted against).",
                &[],
            ),
            ledger_refusals: [Refusal::Order, Refusal::Event]
                .into_iter()
                .map(|what| {
                    let counter = registry.counter(
                        "flashsale_ledger_refusals_total",
                        "Rows the ledger refused as the data's fault (a constraint, a value out of \
                         range), by what: an order (its entry's attempt fails) or an event's configuration.",
                        &[("what", what.label())],
                    );
                    (what, counter)
                })
                .collect(),
            ledger_write: registry.histogram(
                "flashsale_ledger_write_seconds",
                "Time to record one batch of orders in the ledger.",
                &[],
            ),
            ledger_lag: registry.histogram(
                "flashsale_ledger_lag_seconds",
                "Time from reservation (202) to the order being recorded in the ledger.",
                &[],
            ),
            stream_pending: registry.gauge(
                "flashsale_stream_pending",
                "Entries delivered to a worker but not acknowledged, over all events.",
                &[],
            ),
            stream_backlog: registry.gauge(
                "flashsale_stream_backlog",
                "Entries not yet delivered to any worker, over all events.",
                &[],
            ),
            per_event: Mutex::new(HashMap::new()),
            registry,
        }
    }

    /// Counts a dead letter; a reason outside the fixed set (a newer script) counts as
    /// `unparseable` rather than creating a series.
    pub fn dead_lettered(&self, reason: &str) {
        let counter = self.dead_lettered.get(reason).or_else(|| self.dead_lettered.get("unparseable"));
        if let Some(counter) = counter {
            counter.increment(1);
        }
    }

    /// Counts a row the ledger refused.
    pub(crate) fn ledger_refused(&self, what: Refusal) {
        if let Some(counter) = self.ledger_refusals.get(&what) {
            counter.increment(1);
        }
    }

    /// Sets `flashsale_build_info` again (gauges not set for a while leave the exposition).
    pub fn build_info(&self) {
        self.registry.build_info();
    }

    /// Stops updating an event's gauges: the registry drops their series once they have been
    /// idle for [`flashsale_shared::telemetry::GAUGE_IDLE`].
    pub fn forget_event(&self, event: &EventId) {
        let mut map = self.per_event.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(event);
    }

    /// The gauges of one event, registered the first time the event is seen.
    pub fn event(&self, event: &EventId) -> EventGauges {
        let mut map = self.per_event.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(event.clone())
            .or_insert_with(|| {
                let labels = [("event", event.as_str())];
                EventGauges {
                    stock: self.registry.gauge("flashsale_event_stock", "Units put on sale.", &labels),
                    remaining: self.registry.gauge(
                        "flashsale_event_remaining",
                        "Units not reserved by a pending or confirmed order.",
                        &labels,
                    ),
                    confirmed: self.registry.gauge(
                        "flashsale_event_confirmed",
                        "Units in orders finalized by the workers.",
                        &labels,
                    ),
                    live: self.registry.gauge(
                        "flashsale_event_live",
                        "1 while the event is on sale (in its window, not paused or ended), sold out or not.",
                        &labels,
                    ),
                    drift: self.registry.gauge(
                        "flashsale_ledger_drift_units",
                        "Redis's confirmed units minus the ledger's.",
                        &labels,
                    ),
                    dead_letters: self.registry.gauge(
                        "flashsale_event_dead_letters",
                        "Unresolved dead letters (parked ones hold their orders' units).",
                        &labels,
                    ),
                }
            })
            .clone()
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }

    pub fn run_upkeep(&self) {
        self.registry.run_upkeep();
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `/metrics` and `/healthz` (the process is up and its loops are running).
pub fn router(metrics: std::sync::Arc<WorkerMetrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render())
                    .into_response()
            }),
        )
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
}
