//! Background upkeep: gauges of every stream and event, trimming acknowledged history, and
//! purging the idempotency entries and user totals of events past their retention.

use std::sync::Arc;

use flashsale_shared::{event, stream};
use redis::RedisResult;

use crate::Ctx;
use crate::failure::Streak;

pub(crate) async fn stats_loop(ctx: Arc<Ctx>) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(
        crate::config::ms(ctx.config.stats_interval_ms),
        ctx.stop.clone(),
    );
    let mut streak = Streak::new("stats");
    while ticker.tick().await {
        match refresh_gauges(&ctx).await {
            Ok(()) => streak.succeeded(),
            Err(error) => streak.failed(&ctx, &error).await,
        }
        ctx.metrics.run_upkeep();
    }
}

/// The group's pending count and lag on every stream, every event's units and dead letters.
async fn refresh_gauges(ctx: &Ctx) -> RedisResult<()> {
    let streams = ctx.streams.borrow().clone();
    let mut conn = ctx.redis.get();
    let (mut pending, mut backlog) = (0i64, 0i64);
    for s in streams.iter() {
        if let Some(stats) = stream::group_stats(&mut conn, &s.keys).await? {
            pending += stats.pending;
            backlog += stats.lag.unwrap_or(0).max(0);
        }
        let gauges = ctx.metrics.event(&s.event);
        if let Some(snapshot) = event::load(&mut conn, &s.event).await? {
            gauges.stock.set(snapshot.config.stock as f64);
            gauges.remaining.set(snapshot.remaining as f64);
            gauges.confirmed.set(snapshot.confirmed as f64);
            let live = matches!(snapshot.state(), event::EventState::Live | event::EventState::SoldOut);
            gauges.live.set(if live { 1.0 } else { 0.0 });
        }
        gauges.dead_letters.set(flashsale_shared::dead_letter::count(&mut conn, &s.keys).await? as f64);
    }
    ctx.metrics.build_info();
    ctx.metrics.stream_pending.set(pending as f64);
    ctx.metrics.stream_backlog.set(backlog as f64);
    Ok(())
}

/// Keeps streams from growing forever (only acknowledged history goes, see `lua/trim.lua`)
/// and forgets idempotency entries and user totals once an event's retention has passed
/// (`lua/purge.lua`).
pub(crate) async fn trim_loop(ctx: Arc<Ctx>) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(
        crate::config::ms(ctx.config.trim_interval_ms),
        ctx.stop.clone(),
    );
    let mut streak = Streak::new("trim");
    while ticker.tick().await {
        match upkeep(&ctx).await {
            Ok(()) => streak.succeeded(),
            Err(error) => streak.failed(&ctx, &error).await,
        }
    }
}

async fn upkeep(ctx: &Ctx) -> RedisResult<()> {
    let streams = ctx.streams.borrow().clone();
    let mut conn = ctx.redis.get();
    for s in streams.iter() {
        ctx.metrics.trimmed.increment(stream::trim(&mut conn, &s.keys).await?);
        if event::purge(&mut conn, &s.keys).await? {
            ctx.metrics.purged.increment(1);
            tracing::info!(event = %s.event, "retention over: idempotency entries and user totals removed");
        }
        if event::is_purged(&mut conn, &s.keys).await? {
            leave_redis(ctx, &mut conn, &s.event).await?;
        }
    }
    Ok(())
}

/// An event past its retention leaves Redis once every one of its orders is in the ledger and
/// nothing waits (see `lua/remove_event.lua`): Redis does not grow with every sale ever held.
/// From then on the ledger alone answers for it (the gateway reads it there).
async fn leave_redis(
    ctx: &Ctx,
    conn: &mut flashsale_shared::connection::Conn,
    id: &flashsale_shared::EventId,
) -> RedisResult<()> {
    let ledger_orders = match ctx.ledger.count_orders(id).await {
        Ok(count) => count,
        // The ledger is down: the event simply stays until it answers.
        Err(_) => return Ok(()),
    };
    match event::remove(conn, id, ledger_orders).await? {
        event::Removal::Removed => {
            ctx.metrics.events_removed.increment(1);
            ctx.metrics.forget_event(id);
            if let Err(error) = ctx.ledger.mark_left_redis(id).await {
                tracing::warn!(%error, event = %id, "could not note in the ledger that the event left Redis");
            }
            tracing::info!(event = %id, ledger_orders, "sale over and recorded: the event left Redis");
        }
        event::Removal::Kept(why) => tracing::debug!(event = %id, why, "the event stays in Redis for now"),
    }
    Ok(())
}
