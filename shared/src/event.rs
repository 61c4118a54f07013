//! Events (sales): their configuration, their live counters and their state.

use std::time::Duration;

use redis::RedisResult;
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::domain::{EventId, OrderId, UserId};
use crate::keys::CONSUMER_GROUP;
use crate::keys::{self, EventKeys};
use crate::reply;
use crate::schema::{EventField, EventHash, EventStateMark, OrderStatus};
use crate::scripts::{CONTROL, PURGE, PUT_EVENT, REMOVE_EVENT, RESTORE_ORDERS};

/// What an operator sets with `PUT /v1/events/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    pub stock: u64,
    pub per_user_limit: u32,
    pub name: Option<String>,
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The same configuration was already there.
    Unchanged,
    /// A different configuration replaced one that never had a sale.
    Replaced,
    /// The event has sales and the configuration differs: nothing changed.
    Conflict,
}

/// Stores the configuration (see `lua/put_event.lua` for the rules) and registers the event
/// so workers start consuming its stream. `retention` is how long after `ends_at` the
/// idempotency entries and per-user totals are kept.
pub async fn put(
    conn: &mut impl ConnectionLike,
    id: &EventId,
    config: &EventConfig,
    retention: Duration,
) -> RedisResult<PutOutcome> {
    let keys = EventKeys::new(id);
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let purge_at = match config.ends_at_ms {
        None => None,
        // Checked, never a wrapping cast: a purge time in the past would forget every
        // idempotency entry at once (settings and times are range-checked before this).
        Some(ends) => Some(
            i64::try_from(retention.as_millis())
                .ok()
                .and_then(|retention| ends.checked_add(retention))
                .ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "ends_at plus the idempotency retention is out of range",
                    ))
                })?,
        ),
    };
    // Registered before the event exists, never after: `fs:events` lives in another Cluster
    // slot, so the two cannot be one script, and a crash between them must not leave an event
    // that sells while no worker consumes it. A registration whose event does not exist (the
    // script then failed, refused, or never ran) is harmless: discovery creates the group on
    // the stream, consumers read nothing, `lua/ensure_group.lua` and the gauges skip it, and
    // `remove` (or the fence's reconciliation) drops it. Re-adding on every PUT, a conflict
    // included, costs one SADD and heals any registration lost before.
    register(conn, id).await?;
    let outcome: String = PUT_EVENT
        .key(&keys.event)
        .arg(config.stock)
        .arg(config.per_user_limit)
        .arg(config.name.as_deref().unwrap_or(""))
        .arg(opt(config.starts_at_ms))
        .arg(opt(config.ends_at_ms))
        .arg(opt(purge_at))
        .invoke_async(conn)
        .await?;
    let outcome = match outcome.as_str() {
        "created" => PutOutcome::Created,
        "unchanged" => PutOutcome::Unchanged,
        "replaced" => PutOutcome::Replaced,
        "conflict" => PutOutcome::Conflict,
        other => {
            return Err(reply::unexpected("a put_event outcome", &redis::Value::SimpleString(other.into())));
        }
    };
    Ok(outcome)
}

/// One page of registered event ids (`SSCAN` of `fs:events` from `cursor`, 0 to start; the
/// walk is over when the returned cursor is 0).
pub async fn scan(
    conn: &mut impl ConnectionLike,
    cursor: u64,
    count: usize,
) -> RedisResult<(u64, Vec<EventId>)> {
    let (next, ids): (u64, Vec<String>) =
        redis::cmd("SSCAN").arg(keys::EVENTS).arg(cursor).arg("COUNT").arg(count).query_async(conn).await?;
    Ok((next, ids.into_iter().filter_map(|id| EventId::parse(id).ok()).collect()))
}

/// Every registered event (what workers consume).
pub async fn list(conn: &mut impl ConnectionLike) -> RedisResult<Vec<EventId>> {
    let ids: Vec<String> = redis::cmd("SMEMBERS").arg(keys::EVENTS).query_async(conn).await?;
    Ok(ids.into_iter().filter_map(|id| EventId::parse(id).ok()).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Upcoming,
    Live,
    SoldOut,
    /// An operator paused the sale; it may be resumed.
    Paused,
    Ended,
}

/// The sale window is half-open, `[starts_at, ends_at)`, exactly as `lua/purchase.lua`
/// checks it.
pub fn window_state(starts_at_ms: Option<i64>, ends_at_ms: Option<i64>, now_ms: i64) -> Option<EventState> {
    if ends_at_ms.is_some_and(|ends| now_ms >= ends) {
        Some(EventState::Ended)
    } else if starts_at_ms.is_some_and(|starts| now_ms < starts) {
        Some(EventState::Upcoming)
    } else {
        None
    }
}

/// An event's configuration and counters, read at one moment of Redis time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSnapshot {
    pub config: EventConfig,
    pub remaining: u64,
    /// Units in orders the worker has finalized.
    pub confirmed: u64,
    /// Orders ever accepted (a configuration is frozen once this is above zero).
    pub accepted: u64,
    /// When the idempotency entries and user totals go (`ends_at` + retention).
    pub purge_at_ms: Option<i64>,
    /// What an operator decided (`lua/control.lua`), if anything.
    pub control: Option<EventStateMark>,
    /// When the sale was paused (only while paused) and ended (only once ended), Unix ms.
    pub paused_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// When the configuration in force was written, Unix ms.
    pub configured_ms: Option<i64>,
    /// The decision counter ([`EventField::Version`]; 0 for a hash written before it existed).
    pub version: u64,
    /// Redis server time when the snapshot was read.
    pub now_ms: i64,
}

impl EventSnapshot {
    /// What of the snapshot decides who may buy: what the ledger records.
    pub fn decision(&self) -> Decision {
        Decision {
            config: self.config.clone(),
            purge_at_ms: self.purge_at_ms,
            control: self.control,
            paused_at_ms: self.paused_at_ms,
            ended_at_ms: self.ended_at_ms,
            configured_ms: self.configured_ms,
            version: self.version,
        }
    }

    pub fn state(&self) -> EventState {
        match self.control {
            Some(EventStateMark::Ended) => return EventState::Ended,
            Some(EventStateMark::Paused) => return EventState::Paused,
            None => {}
        }
        window_state(self.config.starts_at_ms, self.config.ends_at_ms, self.now_ms)
            .unwrap_or(if self.remaining == 0 { EventState::SoldOut } else { EventState::Live })
    }
}

/// What an operator asks of a live sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Pause,
    Resume,
    End,
}

/// What [`control`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlOutcome {
    Paused,
    Resumed,
    Ended,
    /// It already was in the state asked for.
    Unchanged,
    NotFound,
    /// Pause or resume of an ended sale: an end is final.
    EndedAlready,
    /// Resume of a sale that is not paused.
    NotPaused,
}

/// Pauses, resumes or ends a sale atomically (`lua/control.lua`) and tells every gateway.
/// After an end the idempotency entries go `retention` from now (or earlier, as planned).
pub async fn control(
    conn: &mut impl ConnectionLike,
    id: &EventId,
    action: ControlAction,
    retention: Duration,
) -> RedisResult<ControlOutcome> {
    let keys = EventKeys::new(id);
    let action_arg = match action {
        ControlAction::Pause => "pause",
        ControlAction::Resume => "resume",
        ControlAction::End => "end",
    };
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    let outcome: String = CONTROL
        .key(&keys.event)
        .arg(action_arg)
        .arg(id.as_str())
        .arg(keys::STOCK_RETURNED_CHANNEL)
        .arg(retention_ms)
        .invoke_async(conn)
        .await?;
    Ok(match outcome.as_str() {
        "paused" => ControlOutcome::Paused,
        "resumed" => ControlOutcome::Resumed,
        "ended" => ControlOutcome::Ended,
        "unchanged" => ControlOutcome::Unchanged,
        "not_found" => ControlOutcome::NotFound,
        "ended_already" => ControlOutcome::EndedAlready,
        "not_paused" => ControlOutcome::NotPaused,
        other => {
            return Err(reply::unexpected("a control outcome", &redis::Value::SimpleString(other.into())));
        }
    })
}

/// The event, or `None` when it was never created.
pub async fn load(conn: &mut impl ConnectionLike, id: &EventId) -> RedisResult<Option<EventSnapshot>> {
    // The fields a snapshot reads, named rather than HGETALL: no read takes more than it needs.
    const FIELDS: [EventField; 14] = [
        EventField::Stock,
        EventField::Limit,
        EventField::Name,
        EventField::Starts,
        EventField::Ends,
        EventField::Remaining,
        EventField::Confirmed,
        EventField::Accepted,
        EventField::PurgeAt,
        EventField::State,
        EventField::PausedAt,
        EventField::EndedAt,
        EventField::Created,
        EventField::Version,
    ];
    let keys = EventKeys::new(id);
    let (values, (secs, micros)): (Vec<Option<String>>, (i64, i64)) =
        redis::pipe().add_command(EventHash::command(&keys, &FIELDS)).cmd("TIME").query_async(conn).await?;
    let Some(hash) = EventHash::from_reply(&FIELDS, values) else { return Ok(None) };
    let config = EventConfig {
        stock: hash.count(EventField::Stock),
        per_user_limit: hash.int(EventField::Limit).and_then(|limit| u32::try_from(limit).ok()).unwrap_or(1),
        name: hash.text(EventField::Name).map(str::to_owned),
        starts_at_ms: hash.int(EventField::Starts),
        ends_at_ms: hash.int(EventField::Ends),
    };
    Ok(Some(EventSnapshot {
        config,
        remaining: hash.count(EventField::Remaining),
        confirmed: hash.count(EventField::Confirmed),
        accepted: hash.count(EventField::Accepted),
        purge_at_ms: hash.int(EventField::PurgeAt),
        control: hash.state_mark(),
        paused_at_ms: hash.int(EventField::PausedAt),
        ended_at_ms: hash.int(EventField::EndedAt),
        configured_ms: hash.int(EventField::Created),
        version: hash.count(EventField::Version),
        now_ms: secs * 1000 + micros / 1000,
    }))
}

/// Everything that decides who may buy, beyond the live counters: the configuration, the
/// retention, an operator's pause or end, and the decision counter that orders them. The
/// worker records it in the ledger whenever Redis's counter is above the ledger's; a
/// reconciliation puts the ledger's back ([`restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub config: EventConfig,
    pub purge_at_ms: Option<i64>,
    pub control: Option<EventStateMark>,
    pub paused_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    /// When the configuration in force was written (`None`: unknown, a row from before the
    /// ledger kept it).
    pub configured_ms: Option<i64>,
    pub version: u64,
}

/// The event's decision counter (cheap: one `HGET`, what the worker compares with the
/// ledger's before every batch); `None` when the event is gone.
pub async fn version(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<Option<u64>> {
    const FIELDS: [EventField; 2] = [EventField::Stock, EventField::Version];
    Ok(EventHash::read(conn, keys, &FIELDS).await?.map(|hash| hash.count(EventField::Version)))
}

/// An event's units, as the worker's gauges show them; `None` when the event is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Units {
    pub stock: u64,
    pub remaining: u64,
    pub confirmed: u64,
}

pub async fn units(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<Option<Units>> {
    const FIELDS: [EventField; 3] = [EventField::Stock, EventField::Remaining, EventField::Confirmed];
    Ok(EventHash::read(conn, keys, &FIELDS).await?.and_then(|hash| {
        Some(Units {
            stock: u64::try_from(hash.int(EventField::Stock)?).ok()?,
            remaining: u64::try_from(hash.int(EventField::Remaining)?).ok()?,
            confirmed: u64::try_from(hash.int(EventField::Confirmed)?).ok()?,
        })
    }))
}

/// Removes the event's idempotency entries and user totals once `ends_at` plus the retention
/// has passed (`lua/purge.lua`); `true` when it did so now.
pub async fn purge(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<bool> {
    let purged: i64 = PURGE.key(&keys.event).key(&keys.idem).key(&keys.users).invoke_async(conn).await?;
    Ok(purged == 1)
}

/// Whether the event's retention has passed and its idempotency entries were purged: the
/// only events that may leave Redis.
pub async fn is_purged(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<bool> {
    redis::cmd("HEXISTS").arg(&keys.event).arg(EventField::Purged.name()).query_async(conn).await
}

/// Why an event stays in Redis, or that it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Asked with [`Leaving::Check`]: every check holds, the event may leave.
    Ready,
    /// Not yet: the reason `lua/remove_event.lua` gave.
    Kept(&'static str),
}

/// What [`remove`] is asked, in the order the worker asks it (`lua/remove_event.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// Whether the event may leave: every check, nothing removed.
    Check,
    /// Every check again, then the removal.
    Remove,
    /// The ledger already says the event left: this copy came back (a restored snapshot) or a
    /// removal was interrupted. It goes unless Redis accepted more orders than the ledger holds.
    Left,
}

/// Removes every key of an ended, purged, drained event whose `ledger_orders` (the ledger's
/// count of its orders) equals the orders it ever accepted (`lua/remove_event.lua`), then its
/// registration, so workers stop polling it. Each call is safe to repeat.
pub async fn remove(
    conn: &mut impl ConnectionLike,
    id: &EventId,
    ledger_orders: u64,
    leaving: Leaving,
) -> RedisResult<Removal> {
    let keys = EventKeys::new(id);
    let mode = match leaving {
        Leaving::Check => "check",
        Leaving::Remove => "remove",
        Leaving::Left => "left",
    };
    let outcome: String = REMOVE_EVENT
        .key(&keys.event)
        .key(&keys.orders)
        .key(&keys.idem)
        .key(&keys.users)
        .key(&keys.stream)
        .key(&keys.dead)
        .key(&keys.attempts)
        .arg(CONSUMER_GROUP)
        .arg(ledger_orders)
        .arg(mode)
        .invoke_async(conn)
        .await?;
    let kept = match outcome.as_str() {
        "removed" => {
            unregister(conn, id).await?;
            return Ok(Removal::Removed);
        }
        "ready" => return Ok(Removal::Ready),
        "unknown" => "unknown",
        "not_purged" => "not_purged",
        "dead_letters" => "dead_letters",
        "not_drained" => "not_drained",
        "ledger_behind" => "ledger_behind",
        other => {
            return Err(reply::unexpected("a removal outcome", &redis::Value::SimpleString(other.into())));
        }
    };
    Ok(Removal::Kept(kept))
}

/// Drops the event's registration (its keys are gone, or it never existed): workers stop
/// polling it.
pub async fn unregister(conn: &mut impl ConnectionLike, id: &EventId) -> RedisResult<()> {
    redis::cmd("SREM").arg(keys::EVENTS).arg(id.as_str()).exec_async(conn).await
}

/// An order as the ledger recorded it, to be restored into Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore<'a> {
    pub order_id: OrderId,
    /// What the ledger holds: a decided status, or `Pending` for a parked order (it stays
    /// pending, its units held, until an operator decides).
    pub status: OrderStatus,
    pub quantity: u32,
    pub created_ms: i64,
    pub finalized_ms: i64,
    pub user_id: &'a UserId,
    pub scope: &'a str,
}

/// What one [`restore`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Orders Redis had forgotten, put back.
    pub restored: u64,
    /// Pending orders that took the ledger's final status.
    pub corrected: u64,
    /// Whether Redis had lost the ledger's decision (the hash was gone or its counter below
    /// the ledger's) and it was put back.
    pub decided: bool,
}

/// Puts back the ledger's `decision` where Redis lost it, and orders Redis may have lost
/// (`lua/restore_orders.lua`, whose header gives the rules). `sold`: the ledger holds an
/// order of the event, so its configuration is final.
pub async fn restore(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    decision: &Decision,
    sold: bool,
    orders: &[Restore<'_>],
) -> RedisResult<Restored> {
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let config = &decision.config;
    let mut invocation = RESTORE_ORDERS.prepare_invoke();
    invocation
        .key(&keys.event)
        .key(&keys.orders)
        .key(&keys.idem)
        .key(&keys.users)
        .arg(config.stock)
        .arg(config.per_user_limit)
        .arg(config.name.as_deref().unwrap_or(""))
        .arg(opt(config.starts_at_ms))
        .arg(opt(config.ends_at_ms))
        .arg(opt(decision.purge_at_ms))
        .arg(opt(decision.configured_ms))
        .arg(decision.control.map_or("", EventStateMark::value))
        .arg(opt(decision.paused_at_ms))
        .arg(opt(decision.ended_at_ms))
        .arg(decision.version)
        .arg(if sold { "1" } else { "0" });
    for o in orders {
        invocation
            .arg(o.order_id.to_string())
            .arg(o.status.letter())
            .arg(o.quantity)
            .arg(o.created_ms)
            .arg(o.finalized_ms)
            .arg(o.user_id.as_str())
            .arg(o.scope);
    }
    let (restored, corrected, decided): (u64, u64, u64) = invocation.invoke_async(conn).await?;
    Ok(Restored { restored, corrected, decided: decided == 1 })
}

/// Whether the event's hash is in Redis (a registration may name an event not created yet).
pub async fn exists(conn: &mut impl ConnectionLike, id: &EventId) -> RedisResult<bool> {
    redis::cmd("EXISTS").arg(&EventKeys::new(id).event).query_async(conn).await
}

/// Registers the event so workers consume it (again, after a restore).
pub async fn register(conn: &mut impl ConnectionLike, id: &EventId) -> RedisResult<()> {
    redis::cmd("SADD").arg(keys::EVENTS).arg(id.as_str()).exec_async(conn).await
}
