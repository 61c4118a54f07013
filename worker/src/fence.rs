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
//!
//! The script cache follows the process, though, not the data: Redis keeps it through
//! `REPLICAOF` and a full resync. So on one node (`REDIS_URL`) the check also reads the node's
//! role and identity (`shared::scripts::FenceState`): a replica holding the purchase script
//! has it flushed (a promotion then starts fenced), and a primary whose `master_replid/run_id`
//! is not the one recorded at its last reconciliation (`fs:reconciled`, which replicates with
//! the data) is fenced and reconciled again: a promoted replica, or a former primary that
//! resynced from another node and was promoted back. In a cluster the same rule holds per
//! primary, with a marker in one of its own slots ([`check_cluster`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashsale_shared::connection::Shard;
use flashsale_shared::domain::to_unix_ms;
use flashsale_shared::event::{self, Restore};
use flashsale_shared::scripts::FenceState;
use flashsale_shared::{EventId, EventKeys, keys, scripts, stream};

use crate::context::Ctx;
use crate::failure::{Fault, Streak};

/// How often the fence is checked: the longest a restarted Redis waits before reconciliation
/// starts, and the shortest time a node must stay a replica for its script to be flushed
/// before a promotion (one node: `SCRIPT EXISTS`, `INFO server replication`, `GET`, pipelined;
/// a cluster: the same three in one round trip to each primary, `CLUSTER SLOTS` and
/// `CLUSTER NODES` on one node, `SCRIPT EXISTS` on each replica).
pub(crate) const FENCE_INTERVAL: Duration = Duration::from_millis(250);

/// Ledger orders restored per script call.
const RESTORE_CHUNK: usize = scripts::SCAN_CHUNK;

pub(crate) async fn fence_loop(ctx: Arc<Ctx>) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(FENCE_INTERVAL, ctx.stop.clone());
    let mut streak = Streak::new("fence");
    while ticker.tick().await {
        let result = if ctx.redis.is_cluster() { check_cluster(&ctx).await } else { check_node(&ctx).await };
        match result {
            Ok(()) => streak.succeeded(),
            // Without the ledger (or Redis) nobody can tell what Redis forgot: stay fenced.
            Err(fault) => streak.failed(&ctx, &fault).await,
        }
    }
}

/// One node (`REDIS_URL`): the fence follows the data, not the process (see
/// `shared::scripts::FenceState`). Three commands in one round trip per interval while all is
/// well; every step below is harmless when another worker does it at the same time (two
/// flushes, two reconciliations: more 503s for a moment, never a sale from stale data).
async fn check_node(ctx: &Ctx) -> Result<(), Fault> {
    let mut conn = ctx.redis.get();
    match scripts::fence_state(&mut conn).await? {
        FenceState::Open | FenceState::Replica { holds_purchase_script: false } => Ok(()),
        // A replica keeps its script cache through a promotion: flushed now, it will be
        // fenced from its first moment as a primary, whatever data it then holds. (A replica
        // that is promoted within one interval of becoming one is only caught at the next
        // check, after the promotion: see docs/guarantees.md.)
        FenceState::Replica { holds_purchase_script: true } => {
            scripts::raise_fence(&mut conn).await?;
            tracing::warn!(
                "Redis is a replica holding the purchase script: flushed it (fenced until reconciled)"
            );
            Ok(())
        }
        FenceState::Stale { identity, holds_purchase_script } => {
            if holds_purchase_script {
                // Promoted, or resynced elsewhere and promoted again: stop sales first.
                scripts::raise_fence(&mut conn).await?;
                tracing::warn!(%identity, "Redis holds data from elsewhere: sales fenced until reconciled");
            }
            let started = Instant::now();
            let (events, restored, corrected) = reconcile(ctx).await?;
            // The identity read before reconciling: if the node changed hands meanwhile, the
            // marker names the old one and the next check reconciles again (and the re-check
            // below fences at once).
            scripts::mark_reconciled(&mut conn, &identity).await?;
            scripts::lift_fence(&mut conn).await?;
            if scripts::fence_state(&mut conn).await? != FenceState::Open {
                scripts::raise_fence(&mut conn).await?;
                return Ok(());
            }
            reconciled(ctx, started, events, restored, corrected);
            Ok(())
        }
    }
}

/// A cluster: a replica holding the purchase script has it flushed (so a failback starts
/// fenced), and each primary is checked on its own as [`check_node`] checks one node
/// ([`check_shard`]): its identity against its own marker (`shared::keys::node_reconciled`,
/// a key in a slot it serves, so it replicates with that shard's data). A primary whose data
/// may have come from elsewhere (a promoted replica, a failback, a restart, a flush) is
/// fenced, the events of its own slots reconciled, its identity recorded and its script
/// loaded again; the other shards are never touched. One shard that cannot be reached (its
/// primary gone) fails only its own check: the others are checked and reconciled anyway.
async fn check_cluster(ctx: &Ctx) -> Result<(), Fault> {
    let mut conn = ctx.redis.get();
    // Best effort and apart from the check below: a cluster that cannot list its nodes must
    // not keep any shard fenced (nor unfence one).
    match scripts::flush_replicas(&mut conn).await {
        Ok(0) => {}
        Ok(flushed) => {
            tracing::warn!(
                flushed,
                "cluster replicas held the purchase script: flushed (fenced until reconciled)"
            )
        }
        Err(error) => tracing::debug!(%error, "cannot list the cluster's replicas to flush their scripts"),
    }
    // One after the other: a shard whose primary does not answer costs the others up to one
    // `REDIS_TIMEOUT_MS` of delay per interval, never their check.
    let mut first_fault = None;
    for shard in conn.shards().await? {
        if let Err(fault) = check_shard(ctx, &shard).await {
            tracing::debug!(host = %shard.host, port = shard.port, ?fault, "cannot check a cluster primary's fence");
            first_fault.get_or_insert(fault);
        }
    }
    first_fault.map_or(Ok(()), Err)
}

fn reconciled(ctx: &Ctx, started: Instant, events: usize, restored: u64, corrected: u64) {
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

/// Restores every event that has not left Redis; returns (events, orders restored, corrected).
/// Each event's decision (state, configuration, retention) comes back first, as the ledger has
/// it where Redis lost it, so its orders are restored into the configuration they were sold
/// under and nothing sells again in a sale the ledger says is paused or over.
async fn reconcile(ctx: &Ctx) -> Result<(usize, u64, u64), Fault> {
    // First what must not be here at all: before this returns nothing sells, so an event a
    // restored snapshot brought back never sells again.
    remove_left(ctx, |_| true).await?;
    let events = ctx.ledger.reads().events_in_redis().await?;
    let mut conn = ctx.redis.get();
    let (mut restored, mut corrected) = (0, 0);
    for recorded in &events {
        event::register(&mut conn, &recorded.event_id).await?;
        let (r, c) = reconcile_event(ctx, &mut conn, recorded).await?;
        restored += r;
        corrected += c;
    }
    Ok((events.len(), restored, corrected))
}

/// Puts one event back as the ledger has it: its decision (an event with no order yet needs
/// its hash back too), then every order, then its consumer group; returns (restored,
/// corrected). Shared by the whole-node [`reconcile`] and a cluster primary's [`reconcile_slots`].
async fn reconcile_event(
    ctx: &Ctx,
    conn: &mut flashsale_shared::connection::Conn,
    recorded: &flashsale_ledger::LedgerEvent,
) -> Result<(u64, u64), Fault> {
    let id = &recorded.event_id;
    let keys = EventKeys::new(id);
    let decision = recorded.decision();
    let put_back = event::restore(conn, &keys, &decision, recorded.sold, &[]).await?;
    if put_back.decided {
        log_decision_restored(id, &decision);
    }
    // An order parked in Redis whose row still says `confirmed` (see `batch::park`) is
    // marked parked first, so it is restored pending, its units held, never confirmed.
    crate::batch::heal_parked(ctx, conn, id).await?;
    let (mut restored, mut corrected) = (0, 0);
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
                    finalized_ms: o.finalized_at.map(to_unix_ms).unwrap_or_else(|| to_unix_ms(o.created_at)),
                    user_id: &o.user_id,
                    scope: &o.scope,
                })
                .collect();
            let done = event::restore(conn, &keys, &decision, recorded.sold, &orders).await?;
            restored += done.restored;
            corrected += done.corrected;
        }
    }
    // Parked orders restored without their dead letter get one back (an operator decides).
    crate::batch::repark_restored(ctx, conn, id).await?;
    stream::ensure_group(conn, &keys).await?;
    Ok((restored, corrected))
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

/// Removes from Redis every event the ledger says left it: a Redis restored from a snapshot
/// taken before the removal has it back, selling or with pending orders, and a removal
/// interrupted after the ledger's mark left it behind. The ledger holds every order such an
/// event ever accepted (it was marked only once it did), so its older copy goes whatever it
/// holds (`lua/remove_event.lua`, mode 'left'), and its registration with it. A copy that
/// accepted more orders than the ledger holds cannot come from the past: it gets the ledger's
/// decision back (the sale is over, so it sells nothing) and stays, loudly, for an operator.
async fn remove_left(ctx: &Ctx, here: impl Fn(&EventId) -> bool) -> Result<(), Fault> {
    let left = ctx.ledger.reads().events_left_redis().await?;
    let mut conn = ctx.redis.get();
    for (id, ledger_orders) in left.iter().filter(|(id, _)| here(id)) {
        match event::remove(&mut conn, id, *ledger_orders, event::Leaving::Left).await? {
            event::Removal::Removed | event::Removal::Ready => {}
            event::Removal::Kept(why) => {
                if let Some(recorded) = ctx.ledger.reads().event(id).await? {
                    let keys = EventKeys::new(id);
                    event::restore(&mut conn, &keys, &recorded.decision(), recorded.sold, &[]).await?;
                }
                tracing::error!(event = %id, why, ledger_orders,
                    "the ledger says the event left Redis, yet Redis holds more of its orders: kept, ended");
            }
        }
    }
    Ok(())
}

/// One cluster primary (by the address the slot map gives): [`check_node`]'s rule, with the
/// marker in one of its own slots and only the events of its slots reconciled. Every step is
/// sent to that node only, and each is harmless when another worker does it at the same time.
async fn check_shard(ctx: &Ctx, shard: &Shard) -> Result<(), Fault> {
    let Some(marker) = keys::node_reconciled(&shard.slots) else { return Ok(()) };
    let mut conn = ctx.redis.get();
    let node = format!("{}:{}", shard.host, shard.port);
    match scripts::fence_state_on(&mut conn, shard, &marker).await? {
        FenceState::Open | FenceState::Replica { holds_purchase_script: false } => Ok(()),
        // The slot map named a node that is a replica by its own word (a failover under way):
        // the replica rule.
        FenceState::Replica { holds_purchase_script: true } => {
            scripts::raise_fence_on(&mut conn, shard).await?;
            tracing::warn!(%node, "a cluster replica held the purchase script: flushed it");
            Ok(())
        }
        FenceState::Stale { identity, holds_purchase_script } => {
            if holds_purchase_script {
                // Promoted before a worker flushed it, or failed back onto older data: stop
                // this shard's sales first.
                scripts::raise_fence_on(&mut conn, shard).await?;
                tracing::warn!(%node, %identity, "cluster primary holds data from elsewhere: its sales fenced until reconciled");
            }
            let started = Instant::now();
            let (events, restored, corrected) = reconcile_slots(ctx, &shard.slots).await?;
            scripts::mark_reconciled_on(&mut conn, shard, &marker, &identity).await?;
            scripts::lift_fence_on(&mut conn, shard).await?;
            // Changed hands while it was reconciled: fenced again at once (the marker names
            // the identity read before, so the next check reconciles again).
            if scripts::fence_state_on(&mut conn, shard, &marker).await? != FenceState::Open {
                scripts::raise_fence_on(&mut conn, shard).await?;
                return Ok(());
            }
            tracing::info!(%node, "cluster primary reconciled");
            reconciled(ctx, started, events, restored, corrected);
            Ok(())
        }
    }
}

/// [`reconcile`] of the events whose slot is in `slots` (one cluster primary's): a shard
/// reconciled never waits for another shard's node. The node holding `fs:events` also gets
/// every event's id back (it may have lost them; registering an event is a write to that
/// node only).
async fn reconcile_slots(ctx: &Ctx, slots: &[(u16, u16)]) -> Result<(usize, u64, u64), Fault> {
    let owns = |key: &str| {
        let slot = keys::slot_of(key);
        slots.iter().any(|(start, end)| (*start..=*end).contains(&slot))
    };
    // As in `reconcile`: what left goes before this shard sells again (its events only).
    remove_left(ctx, |id| owns(&EventKeys::new(id).event)).await?;
    let events = ctx.ledger.reads().events_in_redis().await?;
    let mut conn = ctx.redis.get();
    let (mut count, mut restored, mut corrected) = (0, 0, 0);
    let holds_registry = owns(keys::EVENTS);
    for recorded in &events {
        if holds_registry {
            event::register(&mut conn, &recorded.event_id).await?;
        }
        if !owns(&EventKeys::new(&recorded.event_id).event) {
            continue;
        }
        count += 1;
        let (r, c) = reconcile_event(ctx, &mut conn, recorded).await?;
        restored += r;
        corrected += c;
    }
    Ok((count, restored, corrected))
}
