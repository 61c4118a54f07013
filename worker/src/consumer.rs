//! Reading the order streams and finalizing what was read.
//!
//! Three sources of entries, one way to finalize them ([`finalize_entries`], one atomic
//! `lua/finalize.lua` call per event and batch):
//! 1. this consumer's own pending entries (read with id `0`): at start-up, so a restarted
//!    worker first finishes what it held when it died, and again after any failed batch;
//! 2. new entries (id `>`), with a blocking read on a pooled connection of its own;
//! 3. entries idle longer than `CLAIM_MIN_IDLE_MS` in any consumer, taken with XAUTOCLAIM
//!    (see [`claim_loop`]): how the work of a dead or stuck worker gets done.
//!
//! Whatever races happen between them (a stopped worker waking up after its entries were
//! claimed, two workers finishing the same order), the script makes the second attempt a
//! no-op, so an order is never confirmed twice.

use std::sync::Arc;
use std::time::Duration;

use flashsale_shared::keys::CONSUMER_GROUP;
use flashsale_shared::shutdown::Ticker;
use flashsale_shared::stream::{self, EntryOutcome};
use flashsale_shared::{EventId, EventKeys};
use redis::{RedisError, RedisResult, Value};
use tokio::sync::watch;

use crate::Ctx;

/// One event's stream, as the loops need it.
#[derive(Debug, Clone)]
pub struct EventStream {
    pub event: EventId,
    pub keys: EventKeys,
}

/// Entry ids read from one stream.
type Batch = (usize, Vec<String>);

pub(crate) async fn consume_loop(ctx: Arc<Ctx>) {
    let mut streams_changed = ctx.streams.clone();
    let mut own_pending = true;
    let mut failures = 0u32;
    while !ctx.stop.is_cancelled() {
        let streams = streams_changed.borrow_and_update().clone();
        if streams.is_empty() {
            tokio::select! {
                () = ctx.stop.cancelled() => break,
                _ = streams_changed.changed() => continue,
            }
        }
        let read = if own_pending {
            read_own_pending(&ctx, &streams).await
        } else {
            match read_new(&ctx, &streams, &mut streams_changed).await {
                Ok(Some(batches)) => Ok(batches),
                Ok(None) => {
                    // Interrupted by a new event. Whatever the abandoned read delivered is in
                    // our pending list: read that first.
                    own_pending = true;
                    continue;
                }
                Err(error) => Err(error),
            }
        };
        let batches = match read {
            Ok(batches) => batches,
            Err(error) => {
                own_pending = true;
                failures += 1;
                on_redis_error(&ctx, &streams, &error, "reading the order streams").await;
                backoff(&ctx, failures).await;
                continue;
            }
        };
        if own_pending && batches.is_empty() {
            own_pending = false;
            continue;
        }
        let mut ok = true;
        for (index, ids) in batches {
            if let Err(error) = finalize_entries(&ctx, &streams[index], &ids).await {
                ok = false;
                on_redis_error(&ctx, &streams, &error, "finalizing entries").await;
            }
        }
        if ok {
            failures = 0;
        } else {
            // What failed stays in our pending list; pick it up again before anything new.
            own_pending = true;
            failures += 1;
            backoff(&ctx, failures).await;
        }
    }
    tracing::info!("consumer loop stopped");
}

async fn read_own_pending(ctx: &Ctx, streams: &[EventStream]) -> RedisResult<Vec<Batch>> {
    let mut conn = ctx.redis.clone();
    let reply: Value = xreadgroup(ctx, streams, "0", None).query_async(&mut conn).await?;
    Ok(entry_ids(reply, streams))
}

/// Blocks for new entries on a pooled connection of its own (a blocking read parks its
/// connection: never the shared multiplexed one). `None` when a new event appeared meanwhile:
/// its first orders must not wait out a read on the old streams, so the read is abandoned and
/// its connection, still blocked inside Redis, is discarded rather than reused.
async fn read_new(
    ctx: &Ctx,
    streams: &[EventStream],
    streams_changed: &mut watch::Receiver<Arc<Vec<EventStream>>>,
) -> RedisResult<Option<Vec<Batch>>> {
    let mut conn = ctx.blocking.get().await.map_err(|e| match e {
        bb8::RunError::User(e) => e,
        bb8::RunError::TimedOut => RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no blocking connection available in time",
        )),
    })?;
    let read = xreadgroup(ctx, streams, ">", Some(ctx.config.block_ms));
    tokio::select! {
        reply = read.query_async::<Value>(&mut conn.conn) => Ok(Some(entry_ids(reply?, streams))),
        _ = streams_changed.changed() => {
            conn.abandoned = true;
            Ok(None)
        }
    }
}

fn xreadgroup(ctx: &Ctx, streams: &[EventStream], id: &str, block_ms: Option<u64>) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(CONSUMER_GROUP).arg(&ctx.consumer).arg("COUNT").arg(ctx.config.batch_size);
    if let Some(block) = block_ms {
        cmd.arg("BLOCK").arg(block);
    }
    cmd.arg("STREAMS");
    for s in streams {
        cmd.arg(&s.keys.stream);
    }
    for _ in streams {
        cmd.arg(id);
    }
    cmd
}

/// The ids of an XREADGROUP reply, per stream (by index into `streams`). Parsed by hand:
/// an entry deleted while pending comes back with nil fields, which typed parsing rejects,
/// and only the ids matter here (the script reads the entry itself).
fn entry_ids(reply: Value, streams: &[EventStream]) -> Vec<Batch> {
    let Value::Array(per_stream) = reply else { return Vec::new() };
    let mut batches = Vec::new();
    for item in per_stream {
        let Value::Array(mut pair) = item else { continue };
        if pair.len() != 2 {
            continue;
        }
        let entries = pair.pop();
        let key = pair.pop().and_then(|k| as_string(&k));
        let Some(index) = key.and_then(|k| streams.iter().position(|s| s.keys.stream == k)) else { continue };
        let ids = ids_of(entries);
        if !ids.is_empty() {
            batches.push((index, ids));
        }
    }
    batches
}

fn ids_of(entries: Option<Value>) -> Vec<String> {
    let Some(Value::Array(entries)) = entries else { return Vec::new() };
    entries
        .iter()
        .filter_map(|entry| match entry {
            Value::Array(parts) => parts.first().and_then(as_string),
            _ => None,
        })
        .collect()
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Finalizes entries of one stream and records what happened. A script error that is not a
/// connection problem is retried entry by entry, so one entry that breaks the script cannot
/// hold back the rest of its batch (it stays pending and is dead-lettered once redelivered
/// more than `MAX_DELIVERIES` times).
pub(crate) async fn finalize_entries(ctx: &Ctx, stream: &EventStream, ids: &[String]) -> RedisResult<()> {
    let mut conn = ctx.redis.clone();
    let max = ctx.config.max_deliveries;
    match stream::finalize(&mut conn, &stream.event, &stream.keys, ids, max).await {
        Ok(done) => {
            record(ctx, stream, &done);
            Ok(())
        }
        Err(error) if ids.len() > 1 && is_script_error(&error) => {
            tracing::warn!(%error, event = %stream.event, "batch failed in the script; retrying entry by entry");
            let mut last = Ok(());
            for id in ids {
                match stream::finalize(&mut conn, &stream.event, &stream.keys, std::slice::from_ref(id), max)
                    .await
                {
                    Ok(done) => record(ctx, stream, &done),
                    Err(e) => last = Err(e),
                }
            }
            last
        }
        Err(error) => Err(error),
    }
}

fn is_script_error(error: &RedisError) -> bool {
    !(error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal())
}

fn record(ctx: &Ctx, stream: &EventStream, done: &[stream::FinalizedEntry]) {
    let m = &ctx.metrics;
    for entry in done {
        match &entry.outcome {
            EntryOutcome::Confirmed => {
                m.finalized.increment(1);
                let lag_ms = (entry.done_ms - entry.created_ms).max(0);
                m.finalize_lag.record(lag_ms as f64 / 1000.0);
            }
            EntryOutcome::Duplicate | EntryOutcome::Skipped => m.skipped.increment(1),
            EntryOutcome::DeadLettered(reason) => {
                m.dead_lettered.increment(1);
                tracing::warn!(event = %stream.event, entry = %entry.entry_id, %reason, "entry dead-lettered");
            }
        }
    }
}

/// Takes over entries that sat unacknowledged longer than `CLAIM_MIN_IDLE_MS` in any
/// consumer's pending list, whatever happened to that consumer.
pub(crate) async fn claim_loop(ctx: Arc<Ctx>) {
    let mut ticker = Ticker::new(crate::config::ms(ctx.config.claim_interval_ms), ctx.stop.clone());
    while ticker.tick().await {
        let streams = ctx.streams.borrow().clone();
        for stream in streams.iter() {
            if let Err(error) = claim_stream(&ctx, stream).await {
                on_redis_error(&ctx, &streams, &error, "claiming idle entries").await;
            }
        }
    }
    tracing::info!("claim loop stopped");
}

async fn claim_stream(ctx: &Ctx, stream: &EventStream) -> RedisResult<()> {
    let mut conn = ctx.redis.clone();
    let mut cursor = "0-0".to_owned();
    loop {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&stream.keys.stream)
            .arg(CONSUMER_GROUP)
            .arg(&ctx.consumer)
            .arg(ctx.config.claim_min_idle_ms)
            .arg(&cursor)
            .arg("COUNT")
            .arg(ctx.config.batch_size)
            .query_async(&mut conn)
            .await?;
        let Value::Array(mut parts) = reply else { return Ok(()) };
        if parts.len() < 2 {
            return Ok(());
        }
        let ids = ids_of(Some(parts.remove(1)));
        let next = as_string(&parts[0]).unwrap_or_else(|| "0-0".into());
        if !ids.is_empty() {
            ctx.metrics.claimed.increment(ids.len() as u64);
            tracing::info!(event = %stream.event, count = ids.len(), "claimed idle entries");
            finalize_entries(ctx, stream, &ids).await?;
        }
        if next == "0-0" || ctx.stop.is_cancelled() {
            return Ok(());
        }
        cursor = next;
    }
}

async fn on_redis_error(ctx: &Ctx, streams: &[EventStream], error: &RedisError, doing: &str) {
    ctx.metrics.redis_errors.increment(1);
    tracing::warn!(%error, "Redis error while {doing}; retrying");
    if error.code() == Some("NOGROUP") {
        // The group vanished (a Redis that restarted empty, a flush): recreate it.
        let mut conn = ctx.redis.clone();
        for s in streams {
            let _ = stream::ensure_group(&mut conn, &s.keys).await;
        }
    }
}

async fn backoff(ctx: &Ctx, failures: u32) {
    let delay = Duration::from_millis(50u64.saturating_mul(1 << failures.min(6)).min(2_000));
    tokio::select! {
        () = ctx.stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}
