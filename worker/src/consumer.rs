//! Reading the order streams and finalizing what was read.
//!
//! Three sources of entries, one way to finalize them ([`finalize_entries`], one atomic
//! `lua/finalize.lua` call per event and batch):
//! 1. this consumer's own pending entries, listed with `XPENDING`: at start-up, so a
//!    restarted worker first finishes what it held when it died, and again after any failure;
//! 2. new entries, with a blocking `XREADGROUP ... >` of one stream on a connection of its
//!    own, by one reader task per event (see [`consume_loop`]);
//! 3. entries idle longer than `CLAIM_MIN_IDLE_MS` in any consumer, taken with
//!    `XAUTOCLAIM ... JUSTID` (see [`claim_loop`]): how the work of a dead or stuck worker
//!    gets done.
//!
//! Only (2) counts a delivery, once per entry: re-reading, retrying and claiming during an
//! outage or a crash loop never make an entry look poison (see `shared::stream`). Whatever
//! races happen between them (a stopped worker waking up after its entries were claimed, two
//! workers finishing the same order), the script makes the second attempt a no-op, so an
//! order is never confirmed twice.

use std::sync::Arc;

use std::collections::HashMap;

use flashsale_shared::connection::Conn;
use flashsale_shared::dead_letter::PARKED_REASON;
use flashsale_shared::shutdown::Ticker;
use flashsale_shared::stream::{self, Delivered, Entry, EntryOutcome, ToFinalize};
use flashsale_shared::{EventId, EventKeys};
use redis::RedisResult;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::failure::Streak;
use crate::ledger::{self, Blocked};

/// One event's stream, as the loops need it.
#[derive(Debug, Clone)]
pub struct EventStream {
    pub event: EventId,
    pub keys: EventKeys,
}

/// What a read of new entries gave.
enum Read {
    Entries(Vec<Delivered>),
    /// The event left (it was removed from Redis) while the read blocked; the read was
    /// abandoned.
    EventGone,
}

/// What finalizing a batch left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finalized {
    /// Every entry is done (confirmed, already final, or dead-lettered).
    All,
    /// Some entries failed in the script and stay pending for another attempt.
    SomeRetry,
}

/// One reader task per event stream, started when discovery finds the event and stopped when
/// it leaves. Each reads its own stream only: no command ever spans two events, which a Redis
/// Cluster would refuse (`CROSSSLOT`), and a slow or unreachable shard holds up only its own
/// events.
pub(crate) async fn consume_loop(ctx: Arc<Ctx>) {
    let mut streams_changed = ctx.streams.clone();
    let mut readers: HashMap<EventId, CancellationToken> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut task_events: HashMap<tokio::task::Id, EventId> = HashMap::new();
    loop {
        let streams = streams_changed.borrow_and_update().clone();
        readers.retain(|event, gone| {
            let keep = streams.iter().any(|s| &s.event == event);
            if !keep {
                gone.cancel();
            }
            keep
        });
        for stream in streams.iter() {
            if !readers.contains_key(&stream.event) {
                let gone = CancellationToken::new();
                let handle = tasks.spawn(consume_event(ctx.clone(), stream.clone(), gone.clone()));
                task_events.insert(handle.id(), stream.event.clone());
                readers.insert(stream.event.clone(), gone);
            }
        }
        tokio::select! {
            () = ctx.stop.cancelled() => break,
            changed = streams_changed.changed() => if changed.is_err() { break },
            Some(joined) = tasks.join_next_with_id() => {
                // A reader ends only when its event leaves, or by a bug: then it is started
                // again at the top of the loop.
                let id = match &joined { Ok((id, ())) => *id, Err(error) => error.id() };
                if let Err(error) = joined {
                    tracing::error!(%error, "event reader panicked; starting it again");
                }
                if let Some(event) = task_events.remove(&id) {
                    readers.remove(&event);
                }
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "event reader panicked");
        }
    }
    tracing::info!("consumer loop stopped");
}

/// Reads and finalizes one event's stream until the worker stops or the event leaves.
async fn consume_event(ctx: Arc<Ctx>, stream: EventStream, gone: CancellationToken) {
    let streams = std::slice::from_ref(&stream);
    let mut reader = Reader::default();
    let mut own_pending = true;
    let mut streak = Streak::new("consume");
    while !ctx.stop.is_cancelled() && !gone.is_cancelled() {
        let read = if own_pending {
            read_own_pending(&ctx, streams).await
        } else {
            match read_new(&ctx, &stream, &mut reader, &gone).await {
                Ok(Read::Entries(batches)) => Ok(batches),
                Ok(Read::EventGone) => break,
                Err(error) => Err(error),
            }
        };
        let batches = match read {
            Ok(batches) => batches,
            Err(error) => {
                own_pending = true;
                streak.failed(&ctx, &error).await;
                streak.pause(&ctx).await;
                continue;
            }
        };
        if own_pending && batches.is_empty() {
            own_pending = false;
            streak.succeeded();
            continue;
        }
        // Finalize what was read. While the ledger cannot be written the batch stays in hand:
        // nothing new is read, the entries are kept from claimers, and the write is retried
        // with a capped backoff for as long as it takes.
        let mut ledger_down = Streak::new("ledger");
        let mut kept_at = std::time::Instant::now();
        loop {
            match finalize_all(&ctx, streams, &batches).await {
                Ok(Finalized::All) => {
                    streak.succeeded();
                    ledger_down.succeeded();
                }
                Ok(Finalized::SomeRetry) => {
                    streak.succeeded();
                    ledger_down.succeeded();
                    // An entry broke the script (its attempt is counted): try it again shortly,
                    // without spinning.
                    own_pending = true;
                    tokio::select! {
                        () = ctx.stop.cancelled() => {}
                        () = tokio::time::sleep(crate::failure::backoff(1)) => {}
                    }
                }
                Err(Blocked::Redis(error)) => {
                    // What failed stays in our pending list; pick it up again before anything new.
                    own_pending = true;
                    streak.failed(&ctx, &error).await;
                    streak.pause(&ctx).await;
                }
                Err(Blocked::Ledger(why)) => {
                    ledger_down.ledger_failed(&ctx, &why);
                    // Never wait longer than the keep interval, or a claimer could take them.
                    let wait = ledger_down.backoff().min(keep_interval(&ctx));
                    tokio::select! {
                        () = ctx.stop.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                    if ctx.stop.is_cancelled() {
                        break;
                    }
                    if kept_at.elapsed() >= keep_interval(&ctx) {
                        keep_held(&ctx, streams, &batches).await;
                        kept_at = std::time::Instant::now();
                    }
                    continue;
                }
            }
            break;
        }
    }
}

/// The connection a reader blocks on: its own (a blocking read parks its connection, so never
/// the shared multiplexed one), made on first use and dropped after a failed or abandoned
/// read, so the next one is made afresh (after a failover, to the new primary; a connection
/// still blocked inside Redis would stall the next command sent on it).
#[derive(Debug, Default)]
struct Reader {
    conn: Option<Conn>,
}

/// Up to a batch of this consumer's own pending entries per stream (`XPENDING`: counts no
/// delivery).
async fn read_own_pending(ctx: &Ctx, streams: &[EventStream]) -> RedisResult<Vec<Delivered>> {
    let mut conn = ctx.redis.get();
    let mut batches = Vec::new();
    for (index, s) in streams.iter().enumerate() {
        let ids = stream::own_pending(&mut conn, &s.keys, &ctx.consumer, ctx.config.batch_size).await?;
        if !ids.is_empty() {
            let entries = stream::describe(&mut conn, &s.keys, &ids).await?;
            batches.push(Delivered { stream: index, entries });
        }
    }
    Ok(batches)
}

/// Finalizes every batch; stops at the first one that is blocked (the rest are retried with
/// it, which changes nothing for those already done).
async fn finalize_all(
    ctx: &Ctx,
    streams: &[EventStream],
    batches: &[Delivered],
) -> Result<Finalized, Blocked> {
    let mut result = Finalized::All;
    for batch in batches {
        if finalize_entries(ctx, &streams[batch.stream], &batch.entries).await? == Finalized::SomeRetry {
            result = Finalized::SomeRetry;
        }
    }
    Ok(result)
}

/// Held entries are re-claimed by their holder this often, well within `CLAIM_MIN_IDLE_MS`.
fn keep_interval(ctx: &Ctx) -> std::time::Duration {
    crate::config::ms(ctx.config.claim_min_idle_ms / 3)
}

/// Resets the idle time of every entry in hand, so no other worker claims them meanwhile.
async fn keep_held(ctx: &Ctx, streams: &[EventStream], batches: &[Delivered]) {
    let mut conn = ctx.redis.get();
    for batch in batches {
        let ids: Vec<String> = batch.entries.iter().map(|e| e.id.clone()).collect();
        if let Err(error) = stream::keep(&mut conn, &streams[batch.stream].keys, &ctx.consumer, &ids).await {
            tracing::debug!(%error, "could not keep held entries; a claimer may take them (harmless)");
        }
    }
}

/// Blocks for new entries of one event (up to `BLOCK_MS`) on the reader's own connection.
/// Abandoned when the event leaves meanwhile.
async fn read_new(
    ctx: &Ctx,
    stream: &EventStream,
    reader: &mut Reader,
    gone: &CancellationToken,
) -> RedisResult<Read> {
    let mut conn = match reader.conn.take() {
        Some(conn) => conn,
        None => ctx.redis.dedicated(ctx.config.block() + ctx.config.redis.timeout()).await?,
    };
    let (batch, block) = (ctx.config.batch_size, ctx.config.block_ms);
    let keys = [&stream.keys];
    tokio::select! {
        read = stream::read_new(&mut conn, &keys, &ctx.consumer, batch, block) => {
            let batches = read?;
            reader.conn = Some(conn);
            Ok(Read::Entries(batches))
        }
        () = gone.cancelled() => Ok(Read::EventGone),
    }
}

/// Records the entries' orders in the ledger, then finalizes them in Redis, and records what
/// happened. An error is Redis's or the ledger's being unavailable (the script catches what an
/// entry causes; an order the ledger refuses is passed on as that entry's failed attempt), so
/// the entries stay pending, uncounted, for a retry.
pub(crate) async fn finalize_entries(
    ctx: &Ctx,
    stream: &EventStream,
    entries: &[Entry],
) -> Result<Finalized, Blocked> {
    let refused = ledger::record(ctx, stream, entries).await?;
    let items: Vec<ToFinalize<'_>> = entries
        .iter()
        .zip(&refused)
        .map(|(entry, refused)| ToFinalize { ledger_error: refused.as_deref(), ..ToFinalize::of(entry) })
        .collect();
    let mut conn = ctx.redis.get();
    let done = stream::finalize(&mut conn, &stream.keys, &items, ctx.config.max_deliveries).await?;
    Ok(record(ctx, stream, &done))
}

fn record(ctx: &Ctx, stream: &EventStream, done: &[stream::FinalizedEntry]) -> Finalized {
    let m = &ctx.metrics;
    let mut result = Finalized::All;
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
                result = Finalized::SomeRetry;
                m.finalize_failures.increment(1);
                tracing::warn!(event = %stream.event, entry = %entry.entry_id, %error,
                    "finalizing an entry failed; it stays pending and is retried");
            }
        }
    }
    result
}

/// Takes over entries that sat unacknowledged longer than `CLAIM_MIN_IDLE_MS` in any
/// consumer's pending list, whatever happened to that consumer.
pub(crate) async fn claim_loop(ctx: Arc<Ctx>) {
    let mut ticker = Ticker::new(crate::config::ms(ctx.config.claim_interval_ms), ctx.stop.clone());
    let mut streak = Streak::new("claim");
    while ticker.tick().await {
        if !ctx.ledger_up.load(std::sync::atomic::Ordering::Acquire) {
            // Claimed entries could not be recorded either: leave them where they are.
            continue;
        }
        let streams = ctx.streams.borrow().clone();
        let mut result = Ok(());
        for stream in streams.iter() {
            result = claim_stream(&ctx, stream).await;
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => streak.succeeded(),
            Err(error) => streak.failed(&ctx, &error).await,
        }
    }
    tracing::info!("claim loop stopped");
}

async fn claim_stream(ctx: &Ctx, stream: &EventStream) -> RedisResult<()> {
    let mut conn = ctx.redis.get();
    let mut cursor = "0-0".to_owned();
    loop {
        let claimed = stream::claim_idle(
            &mut conn,
            &stream.keys,
            &ctx.consumer,
            ctx.config.claim_min_idle_ms,
            &cursor,
            ctx.config.batch_size,
        )
        .await?;
        if !claimed.ids.is_empty() {
            ctx.metrics.claimed.increment(claimed.ids.len() as u64);
            tracing::info!(event = %stream.event, count = claimed.ids.len(), "claimed idle entries");
            let entries = stream::describe(&mut conn, &stream.keys, &claimed.ids).await?;
            // Entries that fail here are ours now: they are claimed again once idle.
            match finalize_entries(ctx, stream, &entries).await {
                Ok(_) => {}
                Err(Blocked::Redis(error)) => return Err(error),
                Err(Blocked::Ledger(_)) => return Ok(()),
            }
        }
        match claimed.next {
            Some(next) if !ctx.stop.is_cancelled() => cursor = next,
            _ => return Ok(()),
        }
    }
}
