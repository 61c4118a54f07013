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
use flashsale_shared::event::EventSnapshot;
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
    /// Events whose configuration this process has written to the ledger (before any order).
    events_recorded: Mutex<HashSet<EventId>>,
    /// Events whose configuration the ledger refused (a row it cannot hold, written before the
    /// gateway checked what the ledger holds), with why: their orders are refused with that
    /// reason (each entry's failed attempt, parked after `MAX_DELIVERIES`) rather than the
    /// refusal being taken for an outage that holds the batch, and every batch after it,
    /// forever. Tried again at each batch, so a corrected row lets the orders through.
    events_refused: Mutex<HashMap<EventId, String>>,
    metrics: Arc<WorkerMetrics>,
    /// The `crash-after-ledger-write` failpoint (tests only).
    crash_after_write: bool,
}

impl LedgerGate {
    pub(crate) fn new(ledger: Ledger, metrics: Arc<WorkerMetrics>, crash_after_write: bool) -> Self {
        Self {
            ledger,
            up: AtomicBool::new(false),
            events_recorded: Mutex::new(HashSet::new()),
            events_refused: Mutex::new(HashMap::new()),
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

    /// Whether this process already wrote the event's configuration.
    pub(crate) fn has_event(&self, event: &EventId) -> bool {
        self.events_recorded.lock().unwrap_or_else(|p| p.into_inner()).contains(event)
    }

    /// Writes the event's configuration (what a reconciliation needs to recreate the event in a
    /// Redis that forgot it); remembered, so once per process. A configuration the ledger
    /// refuses is not an error here: it is remembered, and [`LedgerGate::record`] refuses the
    /// event's orders with the reason. An error is the ledger's being unavailable.
    pub(crate) async fn record_event(
        &self,
        event: &EventId,
        snapshot: &EventSnapshot,
    ) -> Result<(), LedgerError> {
        match self.ledger.record_event(event, &snapshot.config, snapshot.purge_at_ms).await {
            Ok(()) => {
                self.set_up(true);
                self.events_refused.lock().unwrap_or_else(|p| p.into_inner()).remove(event);
                self.events_recorded.lock().unwrap_or_else(|p| p.into_inner()).insert(event.clone());
                Ok(())
            }
            Err(LedgerError::Refused(reason)) => {
                self.set_up(true);
                self.metrics.ledger_refused(Refusal::Event);
                let reason = format!("the ledger refused the event's configuration: {reason}");
                let mut refused = self.events_refused.lock().unwrap_or_else(|p| p.into_inner());
                if refused.insert(event.clone(), reason.clone()).is_none() {
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
