//! One event's batch of stream entries, top to bottom ([`execute`]): read the orders'
//! records from Redis (one `HMGET`), record them in the ledger (one statement, committed),
//! confirm and acknowledge them in Redis (one `lua/finalize.lua` call), and report what
//! happened as an [`ExecutionOutcome`]. Whoever got the entries (`consumer`: own pending, new
//! or claimed) hands them here.
//!
//! A crash between the commit and the acknowledgement means a redelivery whose write changes
//! nothing.
//!
//! A pending order is written `confirmed` before the script confirms it, so an entry the script
//! parks instead (its order stays pending, units held, until an operator decides) leaves a row
//! that says `confirmed`: merchants ship from the ledger, and a Redis rebuilt from it would
//! confirm the order. So the parked orders' rows are then marked `parked` ([`park`], one
//! statement). Writing every row of an entry that already failed as `parked` up front would
//! close the gap from the other side but cost a read of the attempts per batch and leave
//! confirmed orders `parked` after a crash, with nothing left to heal them; instead the gap is
//! healed from the dead letters (`dead_letter::parked_orders`): at the event's next batch when
//! the update failed here, and at every reconciliation (`fence::reconcile`) before Redis is
//! rebuilt from the ledger. The database being down is never held against an order: the batch stays in hand,
//! uncounted, until it can be written ([`Fault`]). An order the ledger refuses is that entry's
//! failed attempt, counted by the script.

use std::collections::HashMap;

use flashsale_ledger::Recorded;
use flashsale_shared::connection::Conn;
use flashsale_shared::dead_letter::PARKED_REASON;
use flashsale_shared::domain::from_unix_ms;
use flashsale_shared::order::{self, OrderRecord, OrderStatus, Stored};
use flashsale_shared::stream::{self, Entry, EntryOrder, EntryOutcome, FinalizedEntry, ToFinalize};
use flashsale_shared::{EventId, OrderId, event};
use time::OffsetDateTime;

use crate::context::{Ctx, EventStream};
use crate::failure::Fault;
use crate::ledger::Refused;

/// What a batch left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutionOutcome {
    /// Every entry is done (confirmed, already final, or dead-lettered).
    AllDone,
    /// Some entries failed in the script and stay pending for another attempt.
    SomeRetry,
}

/// Records the entries' orders in the ledger, then finalizes them in Redis, and reports what
/// happened. An error is Redis's or the ledger's being unavailable (the script catches what an
/// entry causes), so the entries stay pending, uncounted, for a retry. `entries` is not empty.
pub(crate) async fn execute(
    ctx: &Ctx,
    stream: &EventStream,
    entries: &[Entry],
) -> Result<ExecutionOutcome, Fault> {
    let mut conn = ctx.redis.get();
    record_decision(ctx, &mut conn, &stream.event).await?;
    if ctx.ledger.parks_unrecorded(&stream.event) {
        heal_parked(ctx, &mut conn, &stream.event).await?;
    }
    let (rows, mut refused) = read_orders(&mut conn, stream, entries).await?;
    refused.extend(ctx.ledger.record(&stream.event, &rows).await?);
    let done = confirm(ctx, &mut conn, stream, entries, &refused).await?;
    let outcome = report(ctx, stream, &done);
    park(ctx, stream, entries, &done).await?;
    Ok(outcome)
}

/// Marks the ledger rows of the orders the script just parked `parked` (they were written
/// `confirmed` before the call). The entries are acknowledged already, so a failure here is
/// not retried by a redelivery: the gate remembers the event and its next batch heals it.
async fn park(
    ctx: &Ctx,
    stream: &EventStream,
    entries: &[Entry],
    done: &[FinalizedEntry],
) -> Result<(), Fault> {
    let parked: Vec<OrderId> = done
        .iter()
        .filter(|entry| matches!(entry.outcome, EntryOutcome::Parked(_)))
        .filter_map(|finalized| entries.iter().find(|entry| entry.id == finalized.entry_id))
        .filter_map(|entry| match entry.order {
            EntryOrder::Id(id) => Some(id),
            _ => None,
        })
        .collect();
    if parked.is_empty() {
        return Ok(());
    }
    Ok(ctx.ledger.mark_parked(&stream.event, &parked).await?)
}

/// Marks `parked` every ledger row still `confirmed` of an order parked in the event's
/// dead-letter stream: what a park whose ledger update was lost leaves behind. Also run by a
/// reconciliation, before Redis is rebuilt from the ledger.
pub(crate) async fn heal_parked(ctx: &Ctx, conn: &mut Conn, event: &EventId) -> Result<(), Fault> {
    let keys = flashsale_shared::EventKeys::new(event);
    let parked = flashsale_shared::dead_letter::parked_orders(conn, &keys).await?;
    for chunk in parked.chunks(1000) {
        ctx.ledger.mark_parked(event, chunk).await?;
    }
    if parked.is_empty() {
        // Nothing to heal: forget the event.
        ctx.ledger.mark_parked(event, &[]).await?;
    }
    Ok(())
}

/// Records the event's decision in the ledger when Redis's decision counter is above the one
/// the ledger had when this process last looked: before every batch, so an order never reaches
/// the ledger before the configuration it was sold under (once the ledger holds an order its
/// configuration is final), and from the decision loop (`maintenance::decision_loop`), so a
/// pause or an end is recorded even when nothing sells. One `HGET` when nothing changed.
pub(crate) async fn record_decision(ctx: &Ctx, conn: &mut Conn, id: &EventId) -> Result<(), Fault> {
    let keys = flashsale_shared::EventKeys::new(id);
    let Some(version) = event::version(conn, &keys).await? else { return Ok(()) };
    if ctx.ledger.recorded_version(id).is_some_and(|recorded| version <= recorded) {
        return Ok(());
    }
    let Some(snapshot) = event::load(conn, id).await? else { return Ok(()) };
    // The ledger keeps the later decision whatever this one is (a stale read loses there).
    ctx.ledger.record_decision(id, &snapshot.decision()).await?;
    Ok(())
}

/// Parks again every order the ledger records `parked` that a reconciliation brought back
/// pending without its dead letter (Redis lost both): otherwise no operator could decide it and
/// its units would stay held forever. Run by `fence::reconcile` after the orders are restored.
/// Returns how many were parked again.
pub(crate) async fn repark_restored(ctx: &Ctx, conn: &mut Conn, event: &EventId) -> Result<u64, Fault> {
    let keys = flashsale_shared::EventKeys::new(event);
    let known: std::collections::HashSet<OrderId> =
        flashsale_shared::dead_letter::parked_orders(conn, &keys).await?.into_iter().collect();
    let (mut after, mut parked) = (None, 0);
    loop {
        let page = ctx
            .ledger
            .reads()
            .page_with_status(event, OrderStatus::Pending, after, flashsale_ledger::PAGE)
            .await?;
        let ids: Vec<String> = page.iter().map(|o| o.order_id.to_string()).collect();
        let named: Vec<&str> = ids.iter().map(String::as_str).collect();
        let records = order::load_many(conn, &keys, &named).await?;
        for (row, record) in page.iter().zip(records) {
            let pending = matches!(record, Stored::Record(r) if r.status == OrderStatus::Pending);
            if pending && !known.contains(&row.order_id) {
                flashsale_shared::dead_letter::park_again(conn, &keys, &row.order_id, &row.scope).await?;
                parked += 1;
            }
        }
        if page.len() < flashsale_ledger::PAGE as usize {
            break;
        }
        after = page.last().map(|o| o.order_id);
    }
    if parked > 0 {
        tracing::warn!(%event, parked, "parked orders Redis had forgotten are parked again: an operator decides them");
    }
    Ok(parked)
}

/// The ledger rows of the orders the entries name (one `HMGET` of every order text they
/// name). Entries that name no order Redis knows get no row: the script dead-letters them. A
/// record that cannot be read (a user id out of the domain, say, which no script writes) is
/// refused here, as the ledger would refuse it: never confirmed without a row.
async fn read_orders(
    conn: &mut Conn,
    stream: &EventStream,
    entries: &[Entry],
) -> Result<(Vec<Recorded>, Vec<Refused>), Fault> {
    let named: Vec<_> = entries.iter().filter_map(|e| e.order.as_text()).collect();
    let named: Vec<&str> = named.iter().map(|text| text.as_ref()).collect();
    let records = order::load_many(conn, &stream.keys, &named).await?;
    let mut records = records.into_iter();
    let now = OffsetDateTime::now_utc();
    let (mut rows, mut refused) = (Vec::new(), Vec::new());
    for entry in entries {
        let (order_id, record) = match &entry.order {
            EntryOrder::Unread => continue,
            EntryOrder::Malformed(_) => {
                records.next();
                continue;
            }
            EntryOrder::Id(id) => match records.next() {
                Some(Stored::Record(record)) => (*id, record),
                // finalize.lua would confirm a record of this shape: it must not be confirmed
                // without a ledger row, so it is refused, as the ledger would refuse it.
                Some(Stored::Unreadable(text)) if OrderRecord::has_shape(&text) => {
                    let reason = format!("the order's record cannot be read: {text:?}");
                    refused.push(Refused { order_id: *id, reason });
                    continue;
                }
                // No order, or no record at all: the script dead-letters the entry at once
                // (unknown_order, corrupt_order).
                Some(Stored::Absent | Stored::Unreadable(_)) | None => continue,
            },
        };
        rows.push(row_of(order_id, record, &entry.scope, now));
    }
    Ok((rows, refused))
}

/// The ledger's row for an order read from Redis.
fn row_of(order_id: OrderId, record: OrderRecord, scope: &str, now: OffsetDateTime) -> Recorded {
    // Pending orders are confirmed by the script right after this write.
    let status = if record.status == OrderStatus::Pending { OrderStatus::Confirmed } else { record.status };
    Recorded {
        order_id,
        user_id: record.user_id,
        quantity: record.quantity,
        status,
        created_at: from_unix_ms(record.created_ms),
        finalized_at: record.done_ms.map(from_unix_ms).unwrap_or(now),
        scope: scope.to_owned(),
    }
}

/// Confirms and acknowledges the entries in one script call; each entry naming a refused
/// order carries the refusal, which counts as its failed attempt.
async fn confirm(
    ctx: &Ctx,
    conn: &mut Conn,
    stream: &EventStream,
    entries: &[Entry],
    refused: &[Refused],
) -> Result<Vec<FinalizedEntry>, Fault> {
    let refusals: HashMap<OrderId, &str> = refused.iter().map(|r| (r.order_id, r.reason.as_str())).collect();
    let items: Vec<ToFinalize<'_>> = entries
        .iter()
        .map(|entry| {
            let refusal = match &entry.order {
                EntryOrder::Id(id) => refusals.get(id).copied(),
                _ => None,
            };
            ToFinalize { refusal, ..ToFinalize::of(entry) }
        })
        .collect();
    Ok(stream::finalize(conn, &stream.keys, &items, ctx.config.max_deliveries).await?)
}

/// Counts and logs what the script did with each entry.
fn report(ctx: &Ctx, stream: &EventStream, done: &[FinalizedEntry]) -> ExecutionOutcome {
    let m = &ctx.metrics;
    let mut result = ExecutionOutcome::AllDone;
    for entry in done {
        match &entry.outcome {
            EntryOutcome::Confirmed => {
                m.finalized.increment(1);
                m.finalize_lag.record(entry.lag_ms() as f64 / 1000.0);
            }
            EntryOutcome::Duplicate | EntryOutcome::Skipped => m.skipped.increment(1),
            EntryOutcome::DeadLettered(reason) => {
                m.dead_lettered(reason);
                tracing::warn!(event = %stream.event, entry = %entry.entry_id, %reason,
                    "entry dead-lettered (it names no order that could be held)");
            }
            EntryOutcome::Parked(reason) => {
                m.dead_lettered(reason);
                tracing::error!(event = %stream.event, entry = %entry.entry_id, reason = PARKED_REASON,
                    "entry parked: its order stays pending, units held, until an operator runs \
                     `flashsale-worker dead-letters redrive` or `fail`");
            }
            EntryOutcome::Retry(error) => {
                result = ExecutionOutcome::SomeRetry;
                m.finalize_failures.increment(1);
                tracing::warn!(event = %stream.event, entry = %entry.entry_id, %error,
                    "finalizing an entry failed; it stays pending and is retried");
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use flashsale_shared::UserId;

    use super::*;

    fn record(status: OrderStatus, user_id: &str) -> OrderRecord {
        let user_id = UserId::parse(user_id).unwrap();
        OrderRecord { status, quantity: 2, created_ms: 1_000, done_ms: None, user_id }
    }

    #[test]
    fn a_pending_order_is_recorded_as_confirmed_and_a_failed_one_as_failed() {
        let (id, now) = (OrderId::random(), OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(5));
        let row = row_of(id, record(OrderStatus::Pending, "alice"), "alice", now);
        assert_eq!((row.order_id, row.user_id.as_str(), row.status), (id, "alice", OrderStatus::Confirmed));
        assert_eq!((row.created_at, row.finalized_at), (from_unix_ms(1_000), now));
        let failed = row_of(id, record(OrderStatus::Failed, "bob"), "", now);
        assert_eq!(failed.status, OrderStatus::Failed);
    }
}
