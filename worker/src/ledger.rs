//! The worker's side of the ledger: recording a batch before it is acknowledged, and the
//! loop that migrates, watches the database and measures drift.
//!
//! Order of a batch: read the orders' records from Redis (one `HMGET`), write them to the
//! ledger in one statement (committed), then confirm and acknowledge in Redis (one script).
//! A crash between the commit and the acknowledgement means a redelivery whose write changes
//! nothing. The database being down is never held against an order: the batch stays in hand,
//! uncounted, until it can be written.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flashsale_ledger::{LedgerError, Recorded, Status};
use flashsale_shared::domain::from_unix_ms;
use flashsale_shared::order::{self, OrderStatus};
use flashsale_shared::stream::Entry;
use flashsale_shared::{EventId, event};
use redis::RedisError;
use time::OffsetDateTime;

use crate::Ctx;
use crate::consumer::EventStream;
use crate::failure::Streak;

/// What stopped a batch from being finalized.
#[derive(Debug)]
pub(crate) enum Blocked {
    /// Redis failed: retry later.
    Redis(RedisError),
    /// The ledger is unavailable: hold the batch and retry it.
    Ledger(String),
}

impl From<RedisError> for Blocked {
    fn from(error: RedisError) -> Self {
        Self::Redis(error)
    }
}

/// Writes the orders the entries name to the ledger. Returns, per entry, the error the ledger
/// gave for that entry's order if it refused it (poison: counted as a failed attempt by the
/// finalize script); entries that name no order Redis knows are not written (the script
/// dead-letters them).
pub(crate) async fn record(
    ctx: &Ctx,
    stream: &EventStream,
    entries: &[Entry],
) -> Result<Vec<Option<String>>, Blocked> {
    let named: Vec<&str> = entries.iter().filter_map(|e| e.order_id.as_deref()).collect();
    let mut conn = ctx.redis.get();
    record_event_once(ctx, &mut conn, &stream.event).await?;
    let records = order::load_many(&mut conn, &stream.keys, &named).await?;
    let mut records = records.into_iter();
    let now = OffsetDateTime::now_utc();
    // Entries and their rows, in the same order.
    let mut rows: Vec<(usize, Recorded)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(order_id) = entry.order_id.as_deref() else { continue };
        let Some(record) = records.next().flatten() else { continue };
        let Ok(id) = uuid::Uuid::try_parse(order_id) else { continue };
        let status = match record.status {
            // Pending orders are confirmed by the script right after this write.
            OrderStatus::Pending | OrderStatus::Confirmed => Status::Confirmed,
            OrderStatus::Failed => Status::Failed,
        };
        rows.push((
            index,
            Recorded {
                order_id: id,
                user_id: record.user_id,
                quantity: record.quantity,
                status,
                created_at: from_unix_ms(record.created_ms),
                finalized_at: record.done_ms.map(from_unix_ms).unwrap_or(now),
                scope: entry.scope.clone(),
            },
        ));
    }
    let crash = |written: bool| {
        if written && ctx.config.failpoint == Some(crate::config::Failpoint::CrashAfterLedgerWrite) {
            tracing::error!("failpoint crash-after-ledger-write: aborting before Redis acknowledges");
            std::process::abort();
        }
    };
    let mut refused = vec![None; entries.len()];
    let batch: Vec<Recorded> = rows.iter().map(|(_, r)| r.clone()).collect();
    match write(ctx, &stream.event, &batch).await {
        Ok(()) => crash(!batch.is_empty()),
        Err(LedgerError::Refused(_)) => {
            // One order spoils the statement: write them one by one to find it.
            for (index, row) in &rows {
                match write(ctx, &stream.event, std::slice::from_ref(row)).await {
                    Ok(()) => {}
                    Err(LedgerError::Refused(why)) => refused[*index] = Some(why),
                    Err(LedgerError::Unavailable(why)) => return Err(Blocked::Ledger(why)),
                }
            }
        }
        Err(LedgerError::Unavailable(why)) => return Err(Blocked::Ledger(why)),
    }
    Ok(refused)
}

/// Writes the event's configuration to the ledger before its first order (once per process):
/// what a reconciliation needs to recreate the event in a Redis that forgot it.
async fn record_event_once(
    ctx: &Ctx,
    conn: &mut flashsale_shared::connection::Conn,
    id: &EventId,
) -> Result<(), Blocked> {
    if ctx.events_recorded.lock().unwrap_or_else(|p| p.into_inner()).contains(id) {
        return Ok(());
    }
    let Some(snapshot) = event::load(conn, id).await? else { return Ok(()) };
    match ctx.ledger.record_event(id, &snapshot.config, snapshot.purge_at_ms).await {
        Ok(()) => {
            ctx.events_recorded.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
            Ok(())
        }
        Err(error) => Err(Blocked::Ledger(error.to_string())),
    }
}

/// One ledger write, timed and counted; marks the ledger up or down.
async fn write(ctx: &Ctx, event: &EventId, rows: &[Recorded]) -> Result<(), LedgerError> {
    let started = Instant::now();
    let result = ctx.ledger.record(event, rows).await;
    match &result {
        Ok(_) => {
            ctx.metrics.ledger_write.record(started.elapsed().as_secs_f64());
            let now = OffsetDateTime::now_utc();
            for row in rows {
                ctx.metrics.ledger_lag.record((now - row.created_at).as_seconds_f64().max(0.0));
            }
            set_up(ctx, true);
        }
        Err(LedgerError::Refused(_)) => set_up(ctx, true),
        Err(LedgerError::Unavailable(_)) => {
            ctx.metrics.ledger_errors.increment(1);
            set_up(ctx, false);
        }
    }
    result.map(|_| ())
}

fn set_up(ctx: &Ctx, up: bool) {
    ctx.ledger_up.store(up, Ordering::Release);
    ctx.metrics.ledger_up.set(if up { 1.0 } else { 0.0 });
}

/// How often the ledger loop pings, records new events and measures drift.
const LEDGER_INTERVAL: Duration = Duration::from_secs(2);

/// Applies the migrations (retrying until the database answers), then every
/// [`LEDGER_INTERVAL`]: pings the database, records events it has not seen, and sets each
/// event's drift (Redis's confirmed units minus the ledger's).
pub(crate) async fn ledger_loop(ctx: Arc<Ctx>) {
    let mut streak = LedgerStreak::new();
    loop {
        match ctx.ledger.migrate().await {
            Ok(_) => {
                streak.succeeded();
                set_up(&ctx, true);
                break;
            }
            Err(error) => {
                set_up(&ctx, false);
                streak.failed(&ctx, &error);
                tokio::select! {
                    () = ctx.stop.cancelled() => return,
                    () = tokio::time::sleep(crate::failure::backoff(streak.failures)) => {}
                }
            }
        }
    }
    let mut ticker = flashsale_shared::shutdown::Ticker::new(LEDGER_INTERVAL, ctx.stop.clone());
    let mut redis = Streak::new("ledger drift");
    while ticker.tick().await {
        if let Err(error) = ctx.ledger.ping().await {
            set_up(&ctx, false);
            streak.failed(&ctx, &error);
            continue;
        }
        set_up(&ctx, true);
        streak.succeeded();
        let streams = ctx.streams.borrow().clone();
        for s in streams.iter() {
            match drift(&ctx, s).await {
                Ok(()) => redis.succeeded(),
                Err(Blocked::Redis(error)) => redis.failed(&ctx, &error).await,
                Err(Blocked::Ledger(why)) => streak.failed(&ctx, &LedgerError::Unavailable(why)),
            }
        }
    }
}

/// Sets the event's drift gauge: Redis's confirmed units minus the ledger's.
async fn drift(ctx: &Ctx, s: &EventStream) -> Result<(), Blocked> {
    let mut conn = ctx.redis.get();
    record_event_once(ctx, &mut conn, &s.event).await?;
    // Redis first: a batch confirmed between the two reads makes the drift briefly negative,
    // never falsely positive.
    let Some(units) = event::units(&mut conn, &s.keys).await? else { return Ok(()) };
    let ledger = ctx.ledger.confirmed_units(&s.event).await.map_err(|e| Blocked::Ledger(e.to_string()))?;
    ctx.metrics.event(&s.event).drift.set(units.confirmed as f64 - ledger as f64);
    Ok(())
}

/// The ledger's failure streak: the same policy as Redis's (one counter, one warn per streak,
/// one info on recovery).
struct LedgerStreak {
    failures: u32,
}

impl LedgerStreak {
    fn new() -> Self {
        Self { failures: 0 }
    }

    fn failed(&mut self, ctx: &Ctx, error: &LedgerError) {
        self.failures = self.failures.saturating_add(1);
        ctx.metrics.ledger_errors.increment(1);
        if self.failures == 1 {
            tracing::warn!(%error, "ledger call failed; orders stay pending in Redis until it works");
        } else {
            tracing::debug!(%error, failures = self.failures, "ledger still failing");
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "the ledger answers again");
            self.failures = 0;
        }
    }
}
