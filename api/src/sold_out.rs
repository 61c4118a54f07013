//! Local sold-out flags: once an event is sold out, most of a flash sale's traffic is buyers
//! who will be told `sold_out`. A gateway answers them from memory, without a Redis round
//! trip, and correctness comes first:
//!
//! - A flag is set only from Redis itself: an atomic snapshot (MULTI) taken when the script
//!   reports `remaining == 0`, holding the event's window, limit, accepted-order count and
//!   every idempotency scope (at most one per accepted order).
//! - Only requests that cannot be replays are answered locally: a request whose scope is in
//!   the snapshot goes to the script and gets its order back, in every state of the event.
//!   Requests the script would answer differently (quantity over the limit, a window edge
//!   within a second) also go to the script.
//! - Units come back only when a worker fails an order; `finalize.lua` publishes the event id
//!   on `fs:stock-returned` in the same atomic step, and every gateway drops its flag on that
//!   message. As a backstop, each flag is re-validated (remaining still 0, no new order) every
//!   `SOLD_OUT_REFRESH_MS`, and a flag that was not validated within
//!   [`SoldOutBoard::max_age`] is ignored; a gateway that cannot reach Redis therefore stops
//!   using its flags within that bound, and never answers `sold_out` for free units for longer.
//! - A flag never accepts anything: purchases always go through the script.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use flashsale_shared::connection::Redis;
use flashsale_shared::keys::STOCK_RETURNED_CHANNEL;
use flashsale_shared::shutdown::Ticker;
use flashsale_shared::{EventId, EventKeys};
use redis::RedisResult;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// Flags for events with more accepted orders than this are not kept: the snapshot of their
/// scopes would cost more memory and load time than the round trips it saves.
const MAX_SCOPES: u64 = 200_000;

/// A window edge closer than this (gateway clock against Redis clock) sends the request to
/// the script, which decides with Redis time.
const CLOCK_MARGIN_MS: i64 = 1_000;

#[derive(Debug)]
struct Flag {
    /// The event's hash, re-read to validate the flag.
    event_key: String,
    scopes: HashSet<String>,
    accepted: u64,
    per_user_limit: u32,
    starts_ms: Option<i64>,
    ends_ms: Option<i64>,
    /// When Redis last confirmed the flag, in ms since the board's epoch.
    validated_ms: AtomicU64,
}

#[derive(Debug)]
pub struct SoldOutBoard {
    /// Read on every purchase of a flagged event, written a few times per sale: `ArcSwap`
    /// makes the read a lock-free load.
    flags: ArcSwap<HashMap<String, Arc<Flag>>>,
    loading: Mutex<HashSet<String>>,
    epoch: Instant,
    refresh: Duration,
    enabled: bool,
}

impl SoldOutBoard {
    pub fn new(enabled: bool, refresh: Duration) -> Self {
        Self {
            flags: ArcSwap::from_pointee(HashMap::new()),
            loading: Mutex::new(HashSet::new()),
            epoch: Instant::now(),
            refresh,
            enabled,
        }
    }

    /// A flag older than this is not trusted: four refresh periods, at most 100 ms.
    pub fn max_age(&self) -> Duration {
        (self.refresh * 4).min(Duration::from_millis(100))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether this request can be answered `sold_out` without asking Redis.
    pub fn answers_sold_out(&self, event: &EventId, scope: &str, quantity: u32) -> bool {
        if !self.enabled {
            return false;
        }
        let flags = self.flags.load();
        let Some(flag) = flags.get(event.as_str()) else { return false };
        let fresh = self.now_ms().saturating_sub(flag.validated_ms.load(Ordering::Acquire))
            <= self.max_age().as_millis() as u64;
        if !fresh || quantity > flag.per_user_limit || flag.scopes.contains(scope) {
            return false;
        }
        let wall_ms = flashsale_shared::domain::to_unix_ms(time::OffsetDateTime::now_utc());
        // Near a window edge the script decides, with Redis time.
        flag.starts_ms.is_none_or(|s| wall_ms >= s + CLOCK_MARGIN_MS)
            && flag.ends_ms.is_none_or(|e| wall_ms < e - CLOCK_MARGIN_MS)
    }

    /// Called with what the script said about the stock: 0 means sold out, so take a
    /// snapshot (once, in the background); anything else drops a stale flag.
    pub fn observe(self: &Arc<Self>, redis: &Redis, event: &EventId, remaining: u64) {
        if !self.enabled {
            return;
        }
        if remaining > 0 {
            self.clear(event.as_str());
            return;
        }
        if self.flags.load().contains_key(event.as_str()) {
            return;
        }
        {
            let Ok(mut loading) = self.loading.lock() else { return };
            if !loading.insert(event.to_string()) {
                return;
            }
        }
        let board = self.clone();
        let mut conn = redis.get();
        let event = event.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(2), snapshot(&mut conn, &event)).await {
                Ok(Ok(Some(flag))) => {
                    flag.validated_ms.store(board.now_ms(), Ordering::Release);
                    tracing::info!(%event, scopes = flag.scopes.len(), "event sold out: answering locally");
                    let flag = Arc::new(flag);
                    board.flags.rcu(|flags| {
                        let mut flags = HashMap::clone(flags);
                        flags.insert(event.to_string(), flag.clone());
                        flags
                    });
                }
                Ok(Ok(None)) => {}
                Ok(Err(error)) => tracing::debug!(%error, %event, "sold-out snapshot failed"),
                Err(_) => tracing::debug!(%event, "sold-out snapshot timed out"),
            }
            if let Ok(mut loading) = board.loading.lock() {
                loading.remove(event.as_str());
            }
        });
    }

    pub fn clear(&self, event: &str) {
        if !self.flags.load().contains_key(event) {
            return;
        }
        self.flags.rcu(|flags| {
            let mut flags = HashMap::clone(flags);
            flags.remove(event);
            flags
        });
        tracing::info!(%event, "sold-out flag dropped");
    }

    /// Re-validates every flag each `refresh` period with one pipelined round trip.
    pub async fn refresh_loop(self: Arc<Self>, redis: Redis, stop: CancellationToken) {
        if !self.enabled {
            return;
        }
        let mut ticker = Ticker::new(self.refresh, stop);
        while ticker.tick().await {
            let flags = self.flags.load_full();
            if flags.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for flag in flags.values() {
                pipe.cmd("HMGET").arg(&flag.event_key).arg("remaining").arg("accepted");
            }
            let mut conn = redis.get();
            let reply =
                tokio::time::timeout(self.max_age(), pipe.query_async::<Vec<Vec<Option<u64>>>>(&mut conn));
            let Ok(Ok(rows)) = reply.await else { continue };
            let now = self.now_ms();
            for ((event, flag), row) in flags.iter().zip(rows) {
                match row.as_slice() {
                    [Some(0), Some(accepted)] if *accepted == flag.accepted => {
                        flag.validated_ms.store(now, Ordering::Release);
                    }
                    _ => self.clear(event),
                }
            }
        }
    }

    /// Drops a flag the moment a worker returns units to its event (`finalize.lua` publishes
    /// on `fs:stock-returned`). Reconnects by itself; the refresh loop covers any gap.
    pub async fn listen_loop(self: Arc<Self>, client: redis::Client, stop: CancellationToken) {
        use tokio_stream::StreamExt;
        if !self.enabled {
            return;
        }
        loop {
            let session = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(STOCK_RETURNED_CHANNEL).await?;
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(event) = std::str::from_utf8(message.get_payload_bytes()) {
                        self.clear(event);
                    }
                }
                RedisResult::Ok(())
            };
            tokio::select! {
                () = stop.cancelled() => return,
                result = session => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "stock-returned subscription lost; resubscribing");
                    }
                }
            }
            // Whatever was missed while disconnected, the refresh loop catches.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// One atomic read of what a flag needs; `None` unless the event is sold out (and not too
/// large to keep).
async fn snapshot(conn: &mut ConnectionManager, event: &EventId) -> RedisResult<Option<Flag>> {
    let keys = EventKeys::new(event);
    let (fields, scopes): (Vec<Option<String>>, Vec<String>) = redis::pipe()
        .atomic()
        .cmd("HMGET")
        .arg(&keys.event)
        .arg("remaining")
        .arg("accepted")
        .arg("limit")
        .arg("starts")
        .arg("ends")
        .cmd("HKEYS")
        .arg(&keys.idem)
        .query_async(conn)
        .await?;
    let num = |i: usize| fields.get(i).and_then(|v| v.as_deref()).and_then(|v| v.parse::<i64>().ok());
    let (Some(0), Some(accepted), Some(limit)) = (num(0), num(1), num(2)) else { return Ok(None) };
    if accepted as u64 > MAX_SCOPES {
        return Ok(None);
    }
    Ok(Some(Flag {
        event_key: keys.event,
        scopes: scopes.into_iter().collect(),
        accepted: accepted as u64,
        per_user_limit: limit as u32,
        starts_ms: num(3),
        ends_ms: num(4),
        validated_ms: AtomicU64::new(0),
    }))
}
