//! Background upkeep: gauges of every stream and event, trimming acknowledged history,
//! purging the idempotency entries and user totals of events past their retention, the
//! ledger's own loop (migrations, a ping, each event's drift between Redis and the ledger),
//! and the decision loop (every event's configuration, pause, end and retention recorded in
//! the ledger soon after Redis took it).

use std::sync::Arc;
use std::time::Duration;

use flashsale_shared::{event, scripts, stream};
use redis::RedisResult;

use crate::context::{Ctx, EventStream};
use crate::failure::{Fault, Streak};

pub(crate) async fn stats_loop(ctx: Arc<Ctx>) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(
        crate::config::ms(ctx.config.stats_interval_ms),
        ctx.stop.clone(),
    );
    let mut streak = Streak::new("stats");
    while ticker.tick().await {
        match refresh_gauges(&ctx).await {
            Ok(()) => streak.succeeded(),
            Err(error) => streak.failed(&ctx, &error.into()).await,
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
            Err(error) => streak.failed(&ctx, &error.into()).await,
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
///
/// The ledger is marked first, then Redis removes: a crash, a database blip or a re-sent
/// script between the steps leaves an event the ledger says left while Redis still has it
/// (ended, purged: it sells nothing), which the next round removes again, never the reverse
/// (an event gone from Redis the ledger does not know left, answering 404 forever, its id free
/// to be created again and a later reconciliation bringing it back live). Every step is safe to
/// repeat: the check changes nothing, the mark keeps its first time, the removal of keys that
/// are gone is 'unknown'.
async fn leave_redis(
    ctx: &Ctx,
    conn: &mut flashsale_shared::connection::Conn,
    id: &flashsale_shared::EventId,
) -> RedisResult<()> {
    let ledger_orders = match ctx.ledger.reads().count_orders(id).await {
        Ok(count) => count,
        // The ledger is down: the event simply stays until it answers.
        Err(_) => return Ok(()),
    };
    // Nothing of an ended, purged, drained sale whose orders are all in the ledger changes any
    // more (nothing can be bought, nothing is pending), so the check still holds when the
    // removal below runs; if a restored snapshot changes Redis in between, the removal's own
    // checks keep the event and the fence's reconciliation removes it (`fence::remove_left`).
    match event::remove(conn, id, ledger_orders, event::Leaving::Check).await? {
        event::Removal::Ready => {}
        event::Removal::Removed => return Ok(()),
        event::Removal::Kept(why) => {
            tracing::debug!(event = %id, why, "the event stays in Redis for now");
            return Ok(());
        }
    }
    match ctx.ledger.reads().mark_left_redis(id).await {
        Ok(true) => {}
        // The ledger has not recorded the event's row or its end of retention yet (the
        // decision loop does within a round): nothing removed, the next round tries again.
        Ok(false) => {
            tracing::debug!(event = %id, "the ledger does not hold the event's end yet: it stays in Redis for now");
            return Ok(());
        }
        Err(error) => {
            tracing::warn!(%error, event = %id, "could not note in the ledger that the event leaves Redis; retrying");
            return Ok(());
        }
    }
    if ctx.config.failpoint == Some(crate::config::Failpoint::CrashAfterLedgerLeaveMark) {
        tracing::error!(event = %id, "failpoint crash-after-ledger-leave-mark: aborting before Redis removes the event");
        std::process::abort();
    }
    match event::remove(conn, id, ledger_orders, event::Leaving::Remove).await? {
        event::Removal::Removed => {
            if ctx.config.failpoint == Some(crate::config::Failpoint::CrashAfterRedisRemoval) {
                tracing::error!(event = %id, "failpoint crash-after-redis-removal: aborting after Redis removed the event");
                std::process::abort();
            }
            ctx.metrics.events_removed.increment(1);
            ctx.metrics.forget_event(id);
            tracing::info!(event = %id, ledger_orders, "sale over and recorded: the event left Redis");
        }
        event::Removal::Ready => {}
        event::Removal::Kept(why) => {
            tracing::warn!(event = %id, why, "the ledger says the event left, Redis keeps it for now; retrying");
        }
    }
    Ok(())
}

/// How often the ledger loop pings, records new events and measures drift.
const LEDGER_INTERVAL: Duration = Duration::from_secs(2);

/// Applies the migrations (retrying until the database answers), then every
/// [`LEDGER_INTERVAL`]: pings the database, records events it has not seen, and sets each
/// event's drift (Redis's confirmed units minus the ledger's).
pub(crate) async fn ledger_loop(ctx: Arc<Ctx>) {
    let mut streak = Streak::new("ledger");
    loop {
        match ctx.ledger.migrate().await {
            Ok(_) => {
                streak.succeeded();
                break;
            }
            Err(error) => {
                streak.failed(&ctx, &error.into()).await;
                streak.pause(&ctx).await;
                if ctx.stop.is_cancelled() {
                    return;
                }
            }
        }
    }
    let mut ticker = flashsale_shared::shutdown::Ticker::new(LEDGER_INTERVAL, ctx.stop.clone());
    let mut drift_streak = Streak::new("ledger drift");
    while ticker.tick().await {
        if let Err(error) = ctx.ledger.ping().await {
            streak.failed(&ctx, &error.into()).await;
            continue;
        }
        streak.succeeded();
        let streams = ctx.streams.borrow().clone();
        for s in streams.iter() {
            match drift(&ctx, s).await {
                Ok(()) => drift_streak.succeeded(),
                Err(fault @ Fault::Redis(_)) => drift_streak.failed(&ctx, &fault).await,
                // The ledger's failures stay in the ledger's streak: one warning per outage.
                Err(fault @ Fault::Ledger(_)) => streak.failed(&ctx, &fault).await,
            }
        }
    }
}

/// Sets the event's drift gauge: Redis's confirmed units minus the ledger's.
async fn drift(ctx: &Ctx, s: &EventStream) -> Result<(), Fault> {
    let mut conn = ctx.redis.get();
    // Redis first: a batch confirmed between the two reads makes the drift briefly negative,
    // never falsely positive.
    let Some(units) = event::units(&mut conn, &s.keys).await? else { return Ok(()) };
    let ledger = ctx.ledger.reads().confirmed_units(&s.event).await?;
    ctx.metrics.event(&s.event).drift.set(units.confirmed as f64 - ledger as f64);
    Ok(())
}

/// How often the decision loop compares each event's decision counter with the ledger's: the
/// longest an operator's pause or end (taken at once in Redis) waits to become durable when no
/// batch records it first. Each round is one `SCRIPT EXISTS` and one `HGET` per event.
const DECISION_INTERVAL: Duration = Duration::from_millis(200);

/// Records every event's decision in the ledger once Redis's decision counter is above the
/// ledger's (`batch::record_decision`), so a pause or an end made while nothing sells is as
/// durable as an order, well under a second after it was acknowledged.
pub(crate) async fn decision_loop(ctx: Arc<Ctx>) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(DECISION_INTERVAL, ctx.stop.clone());
    let mut streak = Streak::new("decisions");
    while ticker.tick().await {
        // Down, or its migrations not applied yet: the ledger loop tells when it is back.
        if !ctx.ledger.is_up() {
            continue;
        }
        match record_decisions(&ctx).await {
            Ok(()) => streak.succeeded(),
            Err(fault) => streak.failed(&ctx, &fault).await,
        }
    }
}

async fn record_decisions(ctx: &Ctx) -> Result<(), Fault> {
    let mut conn = ctx.redis.get();
    // A Redis that restarted and is not reconciled yet may hold an older decision, or a new one
    // taken on top of what it forgot: only the reconciliation (the fence) compares it with the
    // ledger. (The ledger refuses a lower counter anyway; this keeps a forgetful Redis's equal
    // or higher counter out too.)
    if scripts::is_fenced(&mut conn).await? {
        return Ok(());
    }
    let streams = ctx.streams.borrow().clone();
    for s in streams.iter() {
        crate::batch::record_decision(ctx, &mut conn, &s.event).await?;
    }
    Ok(())
}
