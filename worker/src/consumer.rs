//! Reading the order streams, and handing what was read to `batch` (one event's batch:
//! ledger write, then one atomic `lua/finalize.lua` call).
//!
//! Three sources of entries:
//! 1. this consumer's own pending entries, listed with `XPENDING`: at start-up, so a
//!    restarted worker first finishes what it held when it died, and again after any failure;
//! 2. new entries, with a blocking `XREADGROUP ... >` of one stream on a connection of its
//!    own, by one reader task per event (see [`consume_loop`]);
//! 3. entries idle longer than `CLAIM_MIN_IDLE_MS` in any consumer, taken with
//!    `XAUTOCLAIM ... JUSTID` (see [`claim_loop`]): how the work of a dead or stuck worker
//!    gets done.
//!
//! While the ledger cannot be written, a reader keeps the batch in hand (and from claimers)
//! for at most `LEDGER_HOLD_MS` per outage, then lets go and reads nothing, not even its own
//! pending entries, until the ledger answers a ping: a worker that lost only its database
//! hands its entries to the healthy workers' (3) instead of holding them as long as it lives.
//!
//! Only (2) counts a delivery, once per entry: re-reading, retrying and claiming during an
//! outage or a crash loop never make an entry look poison (see `shared::stream`). Whatever
//! races happen between them (a stopped worker waking up after its entries were claimed, two
//! workers finishing the same order), the script makes the second attempt a no-op, so an
//! order is never confirmed twice.

use std::collections::HashMap;
use std::sync::Arc;

use flashsale_shared::EventId;
use flashsale_shared::connection::Conn;
use flashsale_shared::shutdown::Ticker;
use flashsale_shared::stream::{self, Entry};
use redis::RedisResult;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::{self, ExecutionOutcome};
use crate::context::{Ctx, EventStream};
use crate::failure::{Fault, Streak};

/// What a read of new entries gave.
enum Read {
    Entries(Vec<Entry>),
    /// The event left (it was removed from Redis) while the read blocked; the read was
    /// abandoned.
    EventGone,
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
    let mut reader = Reader::default();
    let mut own_pending = true;
    let mut streak = Streak::new("consume");
    // The ledger's failures, and since when writes have failed: the hold is counted once per
    // outage (which a successful batch ends), so a ledger that answers pings but refuses
    // writes (a revoked grant) does not make the worker take its entries back every time.
    let mut ledger_down = Streak::new("consume");
    let mut failing_since: Option<std::time::Instant> = None;
    while !ctx.stop.is_cancelled() && !gone.is_cancelled() {
        if !ctx.ledger.is_up() {
            // Nothing read could be recorded: read nothing, not even our own pending entries
            // (whatever this worker let go of is for the healthy workers to claim meanwhile).
            wait_for_ledger(&ctx, &gone).await;
            own_pending = true;
            continue;
        }
        let read = if own_pending {
            read_own_pending(&ctx, &stream).await
        } else {
            match read_new(&ctx, &stream, &mut reader, &gone).await {
                Ok(Read::Entries(entries)) => Ok(entries),
                Ok(Read::EventGone) => break,
                Err(error) => Err(error),
            }
        };
        let entries = match read {
            Ok(entries) => entries,
            Err(error) => {
                own_pending = true;
                streak.failed(&ctx, &error.into()).await;
                streak.pause(&ctx).await;
                continue;
            }
        };
        if entries.is_empty() {
            own_pending = false;
            streak.succeeded();
            continue;
        }
        // Finalize what was read. While the ledger cannot be written the batch stays in hand
        // for up to LEDGER_HOLD_MS: nothing new is read, the entries are kept from claimers,
        // and the write is retried with a capped backoff. Past that the worker lets go (see
        // `LEDGER_HOLD_MS`): a database outage every worker sees is ridden out, a worker that
        // lost only its own database does not keep its buyers waiting as long as it lives.
        let mut kept_at = std::time::Instant::now();
        loop {
            match batch::execute(&ctx, &stream, &entries).await {
                Ok(ExecutionOutcome::AllDone) => {
                    streak.succeeded();
                    ledger_down.succeeded();
                    failing_since = None;
                }
                Ok(ExecutionOutcome::SomeRetry) => {
                    streak.succeeded();
                    ledger_down.succeeded();
                    failing_since = None;
                    // An entry broke the script (its attempt is counted): try it again shortly,
                    // without spinning.
                    own_pending = true;
                    tokio::select! {
                        () = ctx.stop.cancelled() => {}
                        () = tokio::time::sleep(crate::failure::backoff(1)) => {}
                    }
                }
                Err(fault @ Fault::Redis(_)) => {
                    // What failed stays in our pending list; pick it up again before anything new.
                    own_pending = true;
                    streak.failed(&ctx, &fault).await;
                    streak.pause(&ctx).await;
                }
                Err(fault @ Fault::Ledger(_)) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    ledger_down.failed(&ctx, &fault).await;
                    // Never wait longer than the keep interval, or a claimer could take them.
                    ledger_down.pause_at_most(&ctx, keep_interval(&ctx)).await;
                    if ctx.stop.is_cancelled() {
                        break;
                    }
                    if since.elapsed() >= crate::config::ms(ctx.config.ledger_hold_ms) {
                        // Logged at each let-go: at most one per batch read, paced by the
                        // ledger's backoff.
                        tracing::warn!(event = %stream.event, entries = entries.len(),
                            failing_ms = since.elapsed().as_millis() as u64,
                            "the ledger is still down: letting go of the batch (other workers claim \
                             it after CLAIM_MIN_IDLE_MS); reading nothing until the ledger answers");
                        own_pending = true;
                        break;
                    }
                    if kept_at.elapsed() >= keep_interval(&ctx) {
                        keep_held(&ctx, &stream, &entries).await;
                        kept_at = std::time::Instant::now();
                    }
                    continue;
                }
            }
            break;
        }
    }
}

/// Waits, pinging the ledger with a capped backoff, until it answers (or the worker stops, or
/// the event leaves). Touches no stream entry, so entries this worker let go of grow idle and
/// are claimed by the others.
async fn wait_for_ledger(ctx: &Ctx, gone: &CancellationToken) {
    let mut down = Streak::new("consume");
    while !ctx.stop.is_cancelled() && !gone.is_cancelled() {
        match ctx.ledger.ping().await {
            Ok(()) => {
                down.succeeded();
                return;
            }
            Err(error) => {
                down.failed(ctx, &error.into()).await;
                down.pause(ctx).await;
            }
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

/// Up to a batch of this consumer's own pending entries (`XPENDING`: counts no delivery).
async fn read_own_pending(ctx: &Ctx, stream: &EventStream) -> RedisResult<Vec<Entry>> {
    let mut conn = ctx.redis.get();
    let ids = stream::own_pending(&mut conn, &stream.keys, &ctx.consumer, ctx.config.batch_size).await?;
    stream::describe(&mut conn, &stream.keys, &ids).await
}

/// Held entries are re-claimed by their holder this often, well within `CLAIM_MIN_IDLE_MS`.
fn keep_interval(ctx: &Ctx) -> std::time::Duration {
    crate::config::ms(ctx.config.claim_min_idle_ms / 3)
}

/// Resets the idle time of every entry in hand, so no other worker claims them meanwhile.
async fn keep_held(ctx: &Ctx, stream: &EventStream, entries: &[Entry]) {
    let mut conn = ctx.redis.get();
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    if let Err(error) = stream::keep(&mut conn, &stream.keys, &ctx.consumer, &ids).await {
        tracing::debug!(%error, "could not keep held entries; a claimer may take them (harmless)");
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
    tokio::select! {
        read = stream::read_new(&mut conn, &stream.keys, &ctx.consumer, batch, block) => {
            let entries = read?;
            reader.conn = Some(conn);
            Ok(Read::Entries(entries))
        }
        () = gone.cancelled() => Ok(Read::EventGone),
    }
}

/// Takes over entries that sat unacknowledged longer than `CLAIM_MIN_IDLE_MS` in any
/// consumer's pending list, whatever happened to that consumer.
pub(crate) async fn claim_loop(ctx: Arc<Ctx>) {
    let mut ticker = Ticker::new(crate::config::ms(ctx.config.claim_interval_ms), ctx.stop.clone());
    let mut streak = Streak::new("claim");
    while ticker.tick().await {
        if !ctx.ledger.is_up() {
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
            Err(fault) => streak.failed(&ctx, &fault).await,
        }
    }
    tracing::info!("claim loop stopped");
}

/// Claims and finalizes the stream's idle entries. Entries that fail here are ours now: they
/// are claimed again once idle.
async fn claim_stream(ctx: &Ctx, stream: &EventStream) -> Result<(), Fault> {
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
            batch::execute(ctx, stream, &entries).await?;
        }
        match claimed.next {
            Some(next) if !ctx.stop.is_cancelled() => cursor = next,
            _ => return Ok(()),
        }
    }
}
