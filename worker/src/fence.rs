//! The sales fence: after Redis restarts (or fails over, or is flushed), nothing sells until a
//! worker has put back every order the ledger has and Redis may have forgotten.
//!
//! Redis's script cache is the one state a restart never brings back, so the purchase script
//! being loaded is the fence (see `shared::scripts`): the gateway only ever runs it with
//! EVALSHA and answers 503 on NOSCRIPT. Every [`FENCE_INTERVAL`] a worker asks whether it is
//! loaded; if not, it reconciles every event that has not left Redis from the ledger
//! (`lua/restore_orders.lua`: forgotten orders come back with their idempotency entry, buyer's
//! total and units; pending ones the ledger has finalized take its status), re-registers the
//! events, and only then loads the purchase script. Any number of workers may do it at once:
//! each step changes nothing the second time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_shared::domain::to_unix_ms;
use flashsale_shared::event::{self, Restore};
use flashsale_shared::{EventId, EventKeys, scripts, stream};

use crate::context::Ctx;
use crate::failure::{Fault, Streak};

/// How often the fence is checked: the longest a restarted Redis waits before reconciliation
/// starts (one cheap `SCRIPT EXISTS`).
pub(crate) const FENCE_INTERVAL: Duration = Duration::from_millis(250);

/// Ledger orders restored per script call.
const RESTORE_CHUNK: usize = scripts::SCAN_CHUNK;

pub(crate) async fn fence_loop(ctx: Arc<Ctx>) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(FENCE_INTERVAL, ctx.stop.clone());
    let mut streak = Streak::new("fence");
    while ticker.tick().await {
        let mut conn = ctx.redis.get();
        match scripts::is_fenced(&mut conn).await {
            Ok(false) => {
                streak.succeeded();
                continue;
            }
            Ok(true) => {}
            Err(error) => {
                streak.failed(&ctx, &error.into()).await;
                continue;
            }
        }
        let started = Instant::now();
        match reconcile(&ctx).await {
            Ok((events, restored, corrected)) => {
                if let Err(error) = scripts::lift_fence(&mut conn).await {
                    streak.failed(&ctx, &error.into()).await;
                    continue;
                }
                streak.succeeded();
                ctx.metrics.reconciliations.increment(1);
                ctx.metrics.orders_restored.increment(restored);
                tracing::info!(
                    events,
                    restored,
                    corrected,
                    took_ms = started.elapsed().as_millis() as u64,
                    "Redis reconciled with the ledger: sales may resume"
                );
            }
            // Without the ledger nobody can tell what Redis forgot: stay fenced.
            Err(fault) => streak.failed(&ctx, &fault).await,
        }
    }
}

/// Restores every event that has not left Redis; returns (events, orders restored, corrected).
/// Each event's decision (state, configuration, retention) comes back first, as the ledger has
/// it where Redis lost it, so its orders are restored into the configuration they were sold
/// under and nothing sells again in a sale the ledger says is paused or over.
async fn reconcile(ctx: &Ctx) -> Result<(usize, u64, u64), Fault> {
    let events = ctx.ledger.reads().events_in_redis().await?;
    let mut conn = ctx.redis.get();
    let (mut restored, mut corrected) = (0, 0);
    for recorded in &events {
        let id = &recorded.event_id;
        let keys = EventKeys::new(id);
        let decision = recorded.decision();
        // Also an event with no order yet needs its hash back (created after the snapshot).
        let put_back = event::restore(&mut conn, &keys, &decision, recorded.sold, &[]).await?;
        if put_back.decided {
            log_decision_restored(id, &decision);
        }
        let mut pages = ctx.ledger.reads().pages(id);
        while let Some(page) = pages.next_page().await? {
            for chunk in page.chunks(RESTORE_CHUNK) {
                let orders: Vec<Restore<'_>> = chunk
                    .iter()
                    .map(|o| Restore {
                        order_id: o.order_id,
                        status: o.status,
                        quantity: o.quantity,
                        created_ms: to_unix_ms(o.created_at),
                        finalized_ms: o
                            .finalized_at
                            .map(to_unix_ms)
                            .unwrap_or_else(|| to_unix_ms(o.created_at)),
                        user_id: &o.user_id,
                        scope: &o.scope,
                    })
                    .collect();
                let done = event::restore(&mut conn, &keys, &decision, recorded.sold, &orders).await?;
                restored += done.restored;
                corrected += done.corrected;
            }
        }
        event::register(&mut conn, id).await?;
        stream::ensure_group(&mut conn, &keys).await?;
    }
    Ok((events.len(), restored, corrected))
}

/// Says that Redis had lost an event's decision and got the ledger's back.
fn log_decision_restored(id: &EventId, decision: &event::Decision) {
    tracing::info!(
        event = %id,
        version = decision.version,
        state = decision.control.map_or("selling", |mark| mark.value()),
        stock = decision.config.stock,
        "Redis had lost the event's decision: the ledger's is back"
    );
}
