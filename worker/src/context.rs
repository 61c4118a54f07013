//! What the worker's loops share: one [`Ctx`] built by `run`, and the list of event streams
//! that discovery publishes and the loops follow.

use std::sync::Arc;

use flashsale_shared::connection::Redis;
use flashsale_shared::{EventId, EventKeys};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ledger::LedgerGate;
use crate::metrics::WorkerMetrics;

/// What the worker's loops share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) consumer: String,
    /// The shared multiplexed connection, for every non-blocking command.
    pub(crate) redis: Redis,
    /// The system of record: every order is written here before Redis acknowledges it.
    pub(crate) ledger: LedgerGate,
    pub(crate) metrics: Arc<WorkerMetrics>,
    pub(crate) streams: watch::Receiver<Arc<Vec<EventStream>>>,
    pub(crate) stop: CancellationToken,
}

/// One event's stream, as the loops need it.
#[derive(Debug, Clone)]
pub(crate) struct EventStream {
    pub(crate) event: EventId,
    pub(crate) keys: EventKeys,
}
