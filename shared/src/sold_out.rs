//! The reads behind a gateway's local sold-out flag (`api/src/sold_out/`): an event's counters
//! and sale rules from its hash, and its idempotency scopes, read in chunks so that no single
//! command blocks Redis on a large event.
//!
//! Why chunks: one `HKEYS` of the idempotency hash of an event with 200,000 orders kept Redis
//! busy for 65-150 ms (measured here, on a loaded 2-core machine), stalling every purchase
//! behind it; one `HSCAN ... COUNT 1000` of the same hash took ~1.4 ms (median), and the scan
//! goes [`crate::scripts::SCAN_CHUNK`] at a time, so its calls interleave with other clients.
//! `HLEN` is O(1). A scan is not a snapshot, so the caller reads [`Counters`] before and after it: a
//! scope is only ever added by `lua/purchase.lua` together with an increment of `accepted`,
//! and `HSCAN` returns every element present for the whole scan, so unchanged counters mean
//! the scan saw every scope.

use std::collections::HashSet;

use redis::RedisResult;
use redis::aio::ConnectionLike;

use crate::connection::Conn;
use crate::keys::EventKeys;
use crate::schema::{EventField, EventHash};

/// Scopes per `HSCAN` call: a hint to Redis, which may return a few more or fewer.
pub const SCAN_COUNT: usize = crate::scripts::SCAN_CHUNK;

/// What says whether an event is still sold out, and whether it sold anything since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub remaining: u64,
    /// Orders ever accepted: one idempotency scope each.
    pub accepted: u64,
}

/// The rules a purchase of the event is judged by, besides the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub per_user_limit: u32,
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
}

/// The event's counters and rules in one `HMGET`; `None` when the event does not exist.
pub async fn counters_and_rules(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
) -> RedisResult<Option<(Counters, Rules)>> {
    const FIELDS: [EventField; 7] = [
        EventField::Stock,
        EventField::Remaining,
        EventField::Accepted,
        EventField::Limit,
        EventField::Starts,
        EventField::Ends,
        // Set while an operator paused or ended the sale: then no flag may answer for it.
        EventField::State,
    ];
    let Some(hash) = EventHash::read(conn, keys, &FIELDS).await? else { return Ok(None) };
    if hash.has(EventField::State) {
        // Paused or ended: purchases get the script's answer, never a local sold_out.
        return Ok(None);
    }
    let (Some(remaining), Some(accepted), Some(limit)) =
        (hash.int(EventField::Remaining), hash.int(EventField::Accepted), hash.int(EventField::Limit))
    else {
        return Ok(None);
    };
    let counters = Counters { remaining: remaining.max(0) as u64, accepted: accepted.max(0) as u64 };
    let rules = Rules {
        per_user_limit: u32::try_from(limit).unwrap_or(u32::MAX),
        starts_ms: hash.int(EventField::Starts),
        ends_ms: hash.int(EventField::Ends),
    };
    Ok(Some((counters, rules)))
}

/// The counters of several events, in order; `None` for an event that no longer exists or that
/// an operator paused or ended. One `HMGET` per event, all in flight at once (the multiplexed
/// connection pipelines them on one node; in a cluster each goes to its event's node, where
/// one pipeline spanning two events would be refused).
pub async fn counters<'a>(
    conn: &Conn,
    events: impl IntoIterator<Item = &'a EventKeys>,
) -> RedisResult<Vec<Option<Counters>>> {
    let reads = events.into_iter().map(|keys| {
        let mut conn = conn.clone();
        async move {
            const FIELDS: [EventField; 4] =
                [EventField::Stock, EventField::Remaining, EventField::Accepted, EventField::State];
            let hash = EventHash::read(&mut conn, keys, &FIELDS).await?;
            RedisResult::Ok(hash.and_then(|hash| {
                // A paused or ended sale holds no sold-out flag: `None`, as for a gone event.
                if hash.has(EventField::State) {
                    return None;
                }
                Some(Counters {
                    remaining: u64::try_from(hash.int(EventField::Remaining)?).ok()?,
                    accepted: u64::try_from(hash.int(EventField::Accepted)?).ok()?,
                })
            }))
        }
    });
    futures_util::future::try_join_all(reads).await
}

/// How many idempotency scopes the event has (`HLEN`, O(1)).
pub async fn scope_count(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<u64> {
    redis::cmd("HLEN").arg(&keys.idem).query_async(conn).await
}

/// Where an `HSCAN` of the idempotency scopes goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanCursor(u64);

impl ScanCursor {
    pub const START: Self = Self(0);
}

/// One step of a scan of the event's idempotency scopes (`HSCAN ... COUNT SCAN_COUNT`): adds the
/// scopes it returned to `scopes` (the order ids are dropped) and says where to go on, or
/// `None` once the scan is complete. Redis may return a scope twice; a set absorbs that.
pub async fn scan_scopes(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    from: ScanCursor,
    scopes: &mut HashSet<String>,
) -> RedisResult<Option<ScanCursor>> {
    let (next, pairs): (u64, Vec<String>) = redis::cmd("HSCAN")
        .arg(&keys.idem)
        .arg(from.0)
        .arg("COUNT")
        .arg(SCAN_COUNT)
        .query_async(conn)
        .await?;
    // Field, value, field, value...: `NOVALUES` needs Redis 7.4.
    scopes.extend(pairs.into_iter().step_by(2));
    Ok((next != 0).then_some(ScanCursor(next)))
}
