//! Background upkeep: gauges of every stream and event, and trimming acknowledged history.

use std::sync::Arc;

use flashsale_shared::keys::CONSUMER_GROUP;
use flashsale_shared::shutdown::Ticker;
use flashsale_shared::stream;
use redis::{RedisResult, Value};

use crate::Ctx;

pub(crate) async fn stats_loop(ctx: Arc<Ctx>) {
    let mut ticker = Ticker::new(crate::config::ms(ctx.config.stats_interval_ms), ctx.stop.clone());
    while ticker.tick().await {
        if let Err(error) = refresh_gauges(&ctx).await {
            tracing::debug!(%error, "gauge refresh failed");
        }
        ctx.metrics.run_upkeep();
    }
}

/// One pipelined round trip: the group's pending count and lag on every stream, and every
/// event's stock counters.
async fn refresh_gauges(ctx: &Ctx) -> RedisResult<()> {
    let streams = ctx.streams.borrow().clone();
    if streams.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for s in streams.iter() {
        pipe.cmd("XINFO").arg("GROUPS").arg(&s.keys.stream);
        pipe.cmd("HMGET").arg(&s.keys.event).arg("stock").arg("remaining").arg("confirmed");
    }
    let mut conn = ctx.redis.clone();
    let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
    let (mut pending, mut backlog) = (0i64, 0i64);
    for (s, pair) in streams.iter().zip(replies.chunks(2)) {
        if let Some((p, lag)) = group_info(&pair[0]) {
            pending += p;
            backlog += lag.max(0);
        }
        if let Value::Array(values) = &pair[1] {
            let num = |i: usize| match values.get(i) {
                Some(Value::BulkString(b)) => std::str::from_utf8(b).ok().and_then(|t| t.parse::<f64>().ok()),
                _ => None,
            };
            let gauges = ctx.metrics.event(&s.event);
            if let (Some(stock), Some(remaining), Some(confirmed)) = (num(0), num(1), num(2)) {
                gauges.stock.set(stock);
                gauges.remaining.set(remaining);
                gauges.confirmed.set(confirmed);
            }
        }
    }
    ctx.metrics.stream_pending.set(pending as f64);
    ctx.metrics.stream_backlog.set(backlog as f64);
    Ok(())
}

/// (pending, lag) of our group in an XINFO GROUPS reply; lag is -1 when Redis cannot tell.
fn group_info(reply: &Value) -> Option<(i64, i64)> {
    let Value::Array(groups) = reply else { return None };
    for group in groups {
        let Value::Array(fields) = group else { continue };
        let get = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| matches!(&kv[0], Value::BulkString(b) if b == name.as_bytes()))
                .map(|kv| &kv[1])
        };
        if !matches!(get("name"), Some(Value::BulkString(b)) if b == CONSUMER_GROUP.as_bytes()) {
            continue;
        }
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        return Some((int(get("pending")).unwrap_or(0), int(get("lag")).unwrap_or(-1)));
    }
    None
}

/// Keeps streams from growing forever: only acknowledged history goes (see `lua/trim.lua`).
pub(crate) async fn trim_loop(ctx: Arc<Ctx>) {
    let mut ticker = Ticker::new(crate::config::ms(ctx.config.trim_interval_ms), ctx.stop.clone());
    while ticker.tick().await {
        let streams = ctx.streams.borrow().clone();
        let mut conn = ctx.redis.clone();
        for s in streams.iter() {
            match stream::trim(&mut conn, &s.keys).await {
                Ok(n) => ctx.metrics.trimmed.increment(n),
                Err(error) => {
                    ctx.metrics.redis_errors.increment(1);
                    tracing::debug!(%error, event = %s.event, "trim failed");
                }
            }
        }
    }
}
