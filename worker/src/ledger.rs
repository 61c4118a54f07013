//! The worker's gate to the ledger (PostgreSQL): every ledger call the worker makes goes
//! through [`LedgerGate`], which times and counts the writes, keeps the up/down flag
//! (`flashsale_ledger_up`: while it is down nothing new is read or claimed) and turns a
//! refused batch into the orders to blame. It reads nothing from Redis: what to write comes
//! from the batch (`batch`), and failures go to the one failure policy (`failure`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flashsale_ledger::{Ledger, LedgerError, Recorded};
use flashsale_shared::event::Decision;
use flashsale_shared::{EventId, OrderId};
use time::OffsetDateTime;

use crate::metrics::{Refusal, WorkerMetrics};

/// An order the ledger would not take (a constraint, an invalid value): the data is to blame,
/// not the database, so each entry naming it gets a failed attempt (and is parked after
/// `MAX_DELIVERIES`), never a silent skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) order_id: OrderId,
    /// What the ledger said, recorded as the entry's error.
    pub(crate) reason: String,
}

#[derive(Debug)]
pub(crate) struct LedgerGate {
    ledger: Ledger,
    /// Whether the last ledger call worked.
    up: AtomicBool,
    /// Per event, the ledger's decision counter as this process last saw it (after its own
    /// write): a Redis counter not above it needs no write.
    decisions: Mutex<HashMap<EventId, u64>>,
    /// Events whose configuration the ledger refused (a row it cannot hold, written before the
    /// gateway checked what the ledger holds), with why: their orders are refused with that
    /// reason (each entry's failed attempt, parked after `MAX_DELIVERIES`) rather than the
    /// refusal being taken for an outage that holds the batch, and every batch after it,
    /// forever. Tried again at each batch, so a corrected row lets the orders through.
    events_refused: Mutex<HashMap<EventId, String>>,
    /// Events where `finalize.lua` parked an order whose ledger row this process could not then
    /// mark parked (the database was down): healed from the dead letters at the event's next
    /// batch ([`crate::batch`]), so the row does not say `confirmed` until the next
    /// reconciliation.
    parks_unrecorded: Mutex<HashSet<EventId>>,
    metrics: Arc<WorkerMetrics>,
    /// The `crash-after-ledger-write` failpoint (tests only).
    crash_after_write: bool,
}

impl LedgerGate {
    pub(crate) fn new(ledger: Ledger, metrics: Arc<WorkerMetrics>, crash_after_write: bool) -> Self {
        Self {
            ledger,
            up: AtomicBool::new(false),
            decisions: Mutex::new(HashMap::new()),
            events_refused: Mutex::new(HashMap::new()),
            parks_unrecorded: Mutex::new(HashSet::new()),
            metrics,
            crash_after_write,
        }
    }

    /// The ledger itself, for reads that need neither timing nor the up flag (drift,
    /// reconciliation, an event leaving Redis).
    pub(crate) fn reads(&self) -> &Ledger {
        &self.ledger
    }

    /// Whether the last call that tells (a write, a ping, the migrations) worked.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.ledger_up.set(if up { 1.0 } else { 0.0 });
    }

    /// Applies the migrations; the ledger is up once they are.
    pub(crate) async fn migrate(&self) -> Result<usize, LedgerError> {
        let result = self.ledger.migrate().await;
        self.set_up(result.is_ok());
        result
    }

    /// Whether the database answers.
    pub(crate) async fn ping(&self) -> Result<(), LedgerError> {
        let result = self.ledger.ping().await;
        self.set_up(result.is_ok());
        result
    }

    /// The ledger's decision counter for the event as this process last saw it (`None`: not
    /// since it started).
    pub(crate) fn recorded_version(&self, event: &EventId) -> Option<u64> {
        self.decisions.lock().unwrap_or_else(|p| p.into_inner()).get(event).copied()
    }

    /// Records the event's decision (what a reconciliation puts back into a Redis that lost
    /// it) unless the ledger holds a later one, and remembers the ledger's counter. A decision
    /// the ledger refuses (a row it cannot hold, written before the gateway checked what the
    /// ledger holds) is not an error here: it is remembered, and [`LedgerGate::record`] refuses
    /// the event's orders with the reason. An error is the ledger's being unavailable.
    pub(crate) async fn record_decision(
        &self,
        event: &EventId,
        decision: &Decision,
    ) -> Result<(), LedgerError> {
        match self.ledger.record_decision(event, decision).await {
            Ok(version) => {
                self.set_up(true);
                self.events_refused.lock().unwrap_or_else(|p| p.into_inner()).remove(event);
                let mut known = self.decisions.lock().unwrap_or_else(|p| p.into_inner());
                let entry = known.entry(event.clone()).or_default();
                *entry = (*entry).max(version);
                Ok(())
            }
            Err(LedgerError::Refused(reason)) => {
                self.set_up(true);
                let reason = format!("the ledger refused the event's configuration: {reason}");
                let mut refused = self.events_refused.lock().unwrap_or_else(|p| p.into_inner());
                // Counted and logged once per refusal, not at every retry (each batch and the
                // decision loop try the row again).
                if refused.insert(event.clone(), reason.clone()).is_none() {
                    self.metrics.ledger_refused(Refusal::Event);
                    tracing::error!(%event, %reason,
                        "the ledger refused the event's configuration; its orders are refused (and \
                         parked after MAX_DELIVERIES) until the row can be written");
                }
                Ok(())
            }
            Err(unavailable) => Err(unavailable),
        }
    }

    /// Why the ledger refused the event's configuration, if it did.
    fn event_refusal(&self, event: &EventId) -> Option<String> {
        self.events_refused.lock().unwrap_or_else(|p| p.into_inner()).get(event).cloned()
    }

    /// Records one event's rows, committed on return. A refusal of the whole statement is one
    /// order's doing: the rows are then written one by one to find the orders to blame, which
    /// come back as [`Refused`]. An error is the ledger's being unavailable.
    pub(crate) async fn record(
        &self,
        event: &EventId,
        rows: &[Recorded],
    ) -> Result<Vec<Refused>, LedgerError> {
        if let Some(reason) = self.event_refusal(event) {
            let refused: Vec<Refused> =
                rows.iter().map(|row| Refused { order_id: row.order_id, reason: reason.clone() }).collect();
            self.count_refused(event, &refused);
            return Ok(refused);
        }
        match self.write(event, rows).await {
            Ok(()) => {
                if self.crash_after_write && !rows.is_empty() {
                    tracing::error!("failpoint crash-after-ledger-write: aborting before Redis acknowledges");
                    std::process::abort();
                }
                Ok(Vec::new())
            }
            Err(LedgerError::Refused(_)) => {
                let mut refused = Vec::new();
                for row in rows {
                    match self.write(event, std::slice::from_ref(row)).await {
                        Ok(()) => {}
                        Err(LedgerError::Refused(reason)) => {
                            refused.push(Refused { order_id: row.order_id, reason });
                        }
                        Err(unavailable) => return Err(unavailable),
                    }
                }
                self.count_refused(event, &refused);
                Ok(refused)
            }
            Err(unavailable) => Err(unavailable),
        }
    }

    /// Records these orders as parked (`confirmed` rows become `parked`). When the database is
    /// down the event is remembered ([`LedgerGate::parks_unrecorded`]) and the error returned.
    pub(crate) async fn mark_parked(&self, event: &EventId, orders: &[OrderId]) -> Result<(), LedgerError> {
        let result = self.ledger.mark_parked(event, orders).await;
        let mut unrecorded = self.parks_unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                if !orders.is_empty() {
                    self.set_up(true);
                }
                unrecorded.remove(event);
            }
            Err(error) => {
                if matches!(error, LedgerError::Unavailable(_)) {
                    self.set_up(false);
                }
                unrecorded.insert(event.clone());
            }
        }
        result.map(|_| ())
    }

    /// Whether a park of the event still waits for its ledger update.
    pub(crate) fn parks_unrecorded(&self, event: &EventId) -> bool {
        self.parks_unrecorded.lock().unwrap_or_else(|p| p.into_inner()).contains(event)
    }

    /// Counts and logs the orders the ledger refused (each also fails its entry's attempt).
    fn count_refused(&self, event: &EventId, refused: &[Refused]) {
        for Refused { order_id, reason } in refused {
            self.metrics.ledger_refused(Refusal::Order);
            tracing::warn!(%event, order = %order_id, %reason,
                "the ledger refused an order; its entry's attempt fails (parked after MAX_DELIVERIES)");
        }
    }

    /// One write, timed; marks the ledger up or down.
    async fn write(&self, event: &EventId, rows: &[Recorded]) -> Result<(), LedgerError> {
        let started = Instant::now();
        let result = self.ledger.record(event, rows).await;
        match &result {
            Ok(_) => {
                self.metrics.ledger_write.record(started.elapsed().as_secs_f64());
                let now = OffsetDateTime::now_utc();
                for row in rows {
                    self.metrics.ledger_lag.record((now - row.created_at).as_seconds_f64().max(0.0));
                }
                self.set_up(true);
            }
            Err(LedgerError::Refused(_)) => self.set_up(true),
            Err(LedgerError::Unavailable(_)) => self.set_up(false),
        }
        result.map(|_| ())
    }
}
