//! The books-balance invariant of an event. Tests run it at the end of every fault scenario;
//! operators run it as `flashsale-worker check --event E`, also during incidents.
//!
//! For every event, at every moment: `remaining + units in pending or confirmed orders ==
//! stock` (failed orders have given their units back), the confirmed counter equals the
//! confirmed units, every accepted order exists exactly once, every user's total equals the
//! units of their live orders and every idempotency entry names a real order. Once the worker
//! has drained, no order is pending (except parked ones, which wait for an operator) and no
//! stream entry waits.
//!
//! The walk is chunked (`HSCAN`/`XRANGE` of [`CHUNK`] elements per call) so that no single
//! Redis call takes long, whatever the size of the event: Redis keeps serving the sale while
//! an operator checks it. A chunked walk is not a snapshot, so the event's counters are read
//! before and after; a walk during which they moved is repeated, and reported as not
//! consistent if the event never held still (a live sale): [`Audit::consistent`].

use std::collections::{HashMap, HashSet};

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};
use serde::Serialize;

use crate::dead_letter;
use crate::domain::{EventId, OrderId};
use crate::keys::EventKeys;
use crate::order::{OrderRecord, OrderStatus};
use crate::reply::{text, unexpected};
use crate::schema::{EventField, EventHash};
use crate::stream;

/// Elements per Redis call of the walk.
pub const CHUNK: usize = crate::scripts::SCAN_CHUNK;

/// Walks repeated before the audit gives up on a consistent result.
const ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub stock: i64,
    pub remaining: i64,
    pub confirmed_counter: i64,
    pub accepted_counter: i64,
    pub orders_pending: i64,
    pub orders_confirmed: i64,
    pub orders_failed: i64,
    pub units_pending: i64,
    pub units_confirmed: i64,
    pub units_failed: i64,
    pub corrupt_orders: i64,
    /// Pending orders whose entry is parked in the dead-letter stream, waiting for an operator.
    pub orders_parked: i64,
    pub units_parked: i64,
    /// Every dead letter, parked or not.
    pub dead_letters: i64,
    /// False once the idempotency entries and user totals were purged after retention.
    pub user_totals_checked: bool,
    pub user_total_mismatches: i64,
    pub idempotency_dangling: i64,
    pub stream_pending: i64,
    /// Entries not yet delivered to the group; -1 when Redis cannot tell.
    pub stream_lag: i64,
    /// False when the event kept changing during every walk (a live sale): the counts are
    /// then approximate, and a violation may be one that resolved itself mid-walk.
    pub consistent: bool,
}

impl Audit {
    /// Every way the books fail to balance, in words; empty when they balance. With
    /// `drained`, also requires that the worker has finished every order it can: nothing
    /// pending but parked orders, no entry waiting.
    pub fn violations(&self, drained: bool) -> Vec<String> {
        let mut found = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                found.push(what);
            }
        };
        check(self.consistent, "the event changed during every walk; run the check again".into());
        let held = self.units_pending + self.units_confirmed;
        check(
            self.remaining + held == self.stock,
            format!("remaining {} + held units {held} != stock {}", self.remaining, self.stock),
        );
        check(self.remaining >= 0, format!("remaining {} is negative", self.remaining));
        check(
            self.confirmed_counter == self.units_confirmed,
            format!(
                "confirmed counter {} != confirmed units {}",
                self.confirmed_counter, self.units_confirmed
            ),
        );
        let orders = self.orders_pending + self.orders_confirmed + self.orders_failed;
        check(
            orders == self.accepted_counter,
            format!("{orders} orders stored but {} accepted", self.accepted_counter),
        );
        check(self.corrupt_orders == 0, format!("{} order records unreadable", self.corrupt_orders));
        check(
            self.user_total_mismatches == 0,
            format!("{} user totals differ from their orders", self.user_total_mismatches),
        );
        check(
            self.idempotency_dangling == 0,
            format!("{} idempotency entries name no order", self.idempotency_dangling),
        );
        if drained {
            let waiting = self.orders_pending - self.orders_parked;
            check(waiting == 0, format!("{waiting} orders still pending (not counting parked ones)"));
            check(self.stream_pending == 0, format!("{} stream entries unacknowledged", self.stream_pending));
            check(self.stream_lag == 0, format!("{} stream entries never delivered (lag)", self.stream_lag));
        }
        found
    }
}

/// Audits the event; `None` when it does not exist.
pub async fn audit(conn: &mut impl ConnectionLike, event: &EventId) -> RedisResult<Option<Audit>> {
    let keys = EventKeys::new(event);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let Some(before) = counters(conn, &keys).await? else { return Ok(None) };
        let mut audit = walk(conn, &keys, &before).await?;
        let after = counters(conn, &keys).await?;
        audit.consistent = after.as_ref() == Some(&before);
        if audit.consistent {
            return Ok(Some(audit));
        }
        last = Some(audit);
    }
    Ok(last)
}

/// What moves while a sale is live; equal before and after a walk means nothing happened.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counters {
    hash: EventHash,
    pending: i64,
    lag: Option<i64>,
    dead_letters: i64,
}

impl Counters {
    fn num(&self, field: EventField) -> i64 {
        self.hash.int(field).unwrap_or(0)
    }
}

async fn counters(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<Option<Counters>> {
    const FIELDS: [EventField; 5] = [
        EventField::Stock,
        EventField::Remaining,
        EventField::Confirmed,
        EventField::Accepted,
        EventField::Purged,
    ];
    let Some(hash) = EventHash::read(conn, keys, &FIELDS).await? else { return Ok(None) };
    let dead_letters: i64 = redis::cmd("XLEN").arg(&keys.dead).query_async(conn).await?;
    let (pending, lag) = match stream::group_stats(conn, keys).await? {
        Some(stats) => (stats.pending, stats.lag),
        // No group yet: every entry of the stream is undelivered.
        None => (0, Some(redis::cmd("XLEN").arg(&keys.stream).query_async(conn).await?)),
    };
    Ok(Some(Counters { hash, pending, lag, dead_letters }))
}

async fn walk(conn: &mut impl ConnectionLike, keys: &EventKeys, counters: &Counters) -> RedisResult<Audit> {
    let mut audit = Audit {
        stock: counters.num(EventField::Stock),
        remaining: counters.num(EventField::Remaining),
        confirmed_counter: counters.num(EventField::Confirmed),
        accepted_counter: counters.num(EventField::Accepted),
        stream_pending: counters.pending,
        stream_lag: counters.lag.unwrap_or(-1),
        dead_letters: counters.dead_letters,
        ..Audit::default()
    };
    // Orders: counts, units, what each user holds and which orders exist.
    let mut held: HashMap<String, i64> = HashMap::new();
    let mut orders: HashMap<OrderId, OrderStatus> = HashMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, pairs) = hscan(conn, &keys.orders, cursor).await?;
        for pair in pairs.chunks_exact(2) {
            let (Some(id), Some(record)) = (text(&pair[0]), text(&pair[1])) else {
                audit.corrupt_orders += 1;
                continue;
            };
            let Some(record) = OrderRecord::parse(record) else {
                audit.corrupt_orders += 1;
                continue;
            };
            // HSCAN may return an element twice; count each order once.
            let Some(id) = OrderId::parse(id) else {
                audit.corrupt_orders += 1;
                continue;
            };
            if orders.insert(id, record.status).is_some() {
                continue;
            }
            let qty = i64::from(record.quantity);
            let (count, units) = match record.status {
                OrderStatus::Pending => (&mut audit.orders_pending, &mut audit.units_pending),
                OrderStatus::Confirmed => (&mut audit.orders_confirmed, &mut audit.units_confirmed),
                OrderStatus::Failed => (&mut audit.orders_failed, &mut audit.units_failed),
            };
            *count += 1;
            *units += qty;
            if record.status != OrderStatus::Failed {
                *held.entry(record.user_id.to_string()).or_default() += qty;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }

    // User totals and idempotency entries are purged after the event's retention
    // (`purged`); an event from before purging existed had them expire instead: units held
    // but both hashes gone (the idempotency hash is never emptied while orders exist).
    let users_exist: bool = redis::cmd("EXISTS").arg(&keys.users).query_async(conn).await?;
    let idem_exists: bool = redis::cmd("EXISTS").arg(&keys.idem).query_async(conn).await?;
    let purged = counters.hash.has(EventField::Purged)
        || (!users_exist && !idem_exists && audit.units_pending + audit.units_confirmed > 0);
    if !purged {
        audit.user_totals_checked = true;
        let mut seen = HashSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, pairs) = hscan(conn, &keys.users, cursor).await?;
            for pair in pairs.chunks_exact(2) {
                let user = text(&pair[0]).unwrap_or_default();
                if !seen.insert(user.to_owned()) {
                    continue;
                }
                let total: Option<i64> = text(&pair[1]).and_then(|t| t.parse().ok());
                if total != Some(held.get(user).copied().unwrap_or(0)) {
                    audit.user_total_mismatches += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        audit.user_total_mismatches +=
            held.iter().filter(|(user, units)| **units > 0 && !seen.contains(user.as_str())).count() as i64;

        let mut cursor = 0u64;
        loop {
            let (next, pairs) = hscan(conn, &keys.idem, cursor).await?;
            for pair in pairs.chunks_exact(2) {
                let named = text(&pair[1]).and_then(OrderId::parse);
                if !named.is_some_and(|id| orders.contains_key(&id)) {
                    audit.idempotency_dangling += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }

    // Parked orders: pending orders named by a dead letter.
    let mut after: Option<String> = None;
    let mut parked = HashSet::new();
    loop {
        let page = dead_letter::list(conn, keys, after.as_deref(), CHUNK).await?;
        for letter in &page {
            let id = letter.order_id.as_deref().and_then(OrderId::parse);
            if let Some(id) = id
                && orders.get(&id) == Some(&OrderStatus::Pending)
                && parked.insert(id)
            {
                audit.orders_parked += 1;
            }
        }
        if page.len() < CHUNK {
            break;
        }
        after = page.last().map(|l| l.id.clone());
    }
    audit.units_parked = 0;
    if !parked.is_empty() {
        // Units of parked orders, from a second, narrow pass over just those records.
        let ids: Vec<String> = parked.iter().map(ToString::to_string).collect();
        for chunk in ids.chunks(CHUNK) {
            let records: Vec<Option<String>> =
                redis::cmd("HMGET").arg(&keys.orders).arg(chunk).query_async(conn).await?;
            audit.units_parked += records
                .iter()
                .flatten()
                .filter_map(|r| OrderRecord::parse(r))
                .map(|r| i64::from(r.quantity))
                .sum::<i64>();
        }
    }
    Ok(audit)
}

/// One `HSCAN key cursor COUNT CHUNK`: the next cursor and the flat field/value list.
async fn hscan(conn: &mut impl ConnectionLike, key: &str, cursor: u64) -> RedisResult<(u64, Vec<Value>)> {
    let reply: Value =
        redis::cmd("HSCAN").arg(key).arg(cursor).arg("COUNT").arg(CHUNK).query_async(conn).await?;
    match reply {
        Value::Array(mut parts) if parts.len() == 2 => {
            let pairs = match parts.pop() {
                Some(Value::Array(pairs)) => pairs,
                other => return Err(unexpected("HSCAN pairs", &other.unwrap_or(Value::Nil))),
            };
            let next = parts.first().and_then(text).and_then(|c| c.parse().ok()).unwrap_or(0);
            Ok((next, pairs))
        }
        other => Err(unexpected("an HSCAN reply", &other)),
    }
}
