//! The Redis side of the local sold-out flags: the board the purchase handler asks, the
//! snapshot that sets a flag, the refresh loop that re-validates and retires flags, and the
//! pub/sub listener that drops them. Every Redis read goes through `flashsale_shared::sold_out`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use flashsale_shared::connection::Conn;
use flashsale_shared::connection::Redis;
use flashsale_shared::keys::STOCK_RETURNED_CHANNEL;
use flashsale_shared::shutdown::Ticker;
use flashsale_shared::sold_out::{self as reads, Counters, Rules, ScanCursor};
use flashsale_shared::{EventId, EventKeys};
use redis::RedisResult;
use tokio_util::sync::CancellationToken;

use super::{Flag, Now, answers, retire};
use crate::config::Config;

/// How long the verdict "too many scopes for a flag" is remembered. Units returning forget it
/// sooner (the only way `accepted` can change while an event is sold out); the event can
/// only grow, so this merely bounds how long the memo outlives its event.
pub const VERDICT_TTL_MS: u64 = 60_000;

/// A snapshot whose counters moved during the scan is retried this many times in all; then
/// the event is evidently not settled, and the next sold-out answer tries again.
const SNAPSHOT_ATTEMPTS: usize = 3;

/// Generous: at the default cap a snapshot is ~200 `HSCAN` round trips, tens of ms.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the board holds for an event; cheap to clone (the map is copied on write: a few
/// entries, a few writes per sale).
#[derive(Debug, Clone)]
enum Entry {
    Flag(Arc<Flag>),
    /// The event has more scopes than `max_scopes`: no flag, and no new size check until
    /// units return or [`VERDICT_TTL_MS`] has passed.
    TooLarge {
        judged_ms: u64,
    },
}

/// What a snapshot found.
#[derive(Debug)]
enum Snapshot {
    /// Sold out, and every scope read while the counters stood still.
    SoldOut {
        counters: Counters,
        rules: Rules,
        scopes: HashSet<String>,
        validated_ms: u64,
    },
    TooLarge {
        scopes: u64,
    },
    /// Stock left, or no such event.
    NotSoldOut,
    /// The counters moved during every attempt.
    Unsettled,
}

#[derive(Debug)]
pub struct SoldOutBoard {
    /// Read on every purchase of a flagged event, written a few times per sale: `ArcSwap`
    /// makes the read a lock-free load.
    entries: ArcSwap<HashMap<String, Entry>>,
    /// Events whose snapshot is under way, so that a burst of sold-out answers starts one.
    loading: Mutex<HashSet<String>>,
    /// The gateway's shared connection (taken anew for each use, so a replaced connection is
    /// followed), for the snapshot and the refresh loop; its client for the pub/sub listener.
    redis: Redis,
    epoch: Instant,
    refresh: Duration,
    max_scopes: u64,
    enabled: bool,
}

impl SoldOutBoard {
    pub fn new(config: &Config, redis: Redis) -> Self {
        Self {
            entries: ArcSwap::from_pointee(HashMap::new()),
            loading: Mutex::new(HashSet::new()),
            redis,
            epoch: Instant::now(),
            refresh: Duration::from_millis(config.sold_out_refresh_ms),
            max_scopes: config.sold_out_max_scopes,
            enabled: config.sold_out_cache,
        }
    }

    /// A flag older than this is not trusted: four refresh periods, at most 100 ms.
    pub fn max_age(&self) -> Duration {
        (self.refresh * 4).min(Duration::from_millis(100))
    }

    fn mono_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn now(&self) -> Now {
        let wall_ms = flashsale_shared::domain::to_unix_ms(time::OffsetDateTime::now_utc());
        Now { wall_ms, mono_ms: self.mono_ms() }
    }

    /// Whether this request can be answered `sold_out` without asking Redis. The hot path of a
    /// sold-out sale: one lock-free load, a hash lookup or two, two clock reads.
    pub fn answers_sold_out(&self, event: &EventId, scope: &str, quantity: u32) -> bool {
        if !self.enabled {
            return false;
        }
        let entries = self.entries.load();
        let Some(Entry::Flag(flag)) = entries.get(event.as_str()) else { return false };
        let now = self.now();
        flag.hit(now.mono_ms);
        answers(flag, scope, quantity, now)
    }

    /// Called with what the script said about the stock: 0 means sold out, so take a
    /// snapshot (once, in the background) unless a flag or a recent verdict exists; anything
    /// else drops what the board held for the event.
    pub fn observe(self: &Arc<Self>, event: &EventId, remaining: u64) {
        if !self.enabled {
            return;
        }
        if remaining > 0 {
            self.clear(event.as_str());
            return;
        }
        match self.entries.load().get(event.as_str()) {
            Some(Entry::Flag(_)) => return,
            Some(Entry::TooLarge { judged_ms })
                if self.mono_ms().saturating_sub(*judged_ms) < VERDICT_TTL_MS =>
            {
                return;
            }
            _ => {}
        }
        {
            let Ok(mut loading) = self.loading.lock() else { return };
            if !loading.insert(event.to_string()) {
                return;
            }
        }
        let board = self.clone();
        let event = event.clone();
        tokio::spawn(async move {
            let keys = EventKeys::new(&event);
            let mut conn = board.redis.get();
            let found = tokio::time::timeout(SNAPSHOT_TIMEOUT, board.snapshot(&mut conn, &keys)).await;
            match found {
                Ok(Ok(Snapshot::SoldOut { counters, rules, scopes, validated_ms })) => {
                    let max_age_ms = board.max_age().as_millis() as u64;
                    let flag = Flag::new(keys, counters, rules, scopes, max_age_ms, validated_ms);
                    tracing::info!(%event, scopes = flag.scopes(), "event sold out: answering locally");
                    board.insert(&event, Entry::Flag(Arc::new(flag)));
                }
                Ok(Ok(Snapshot::TooLarge { scopes })) => {
                    tracing::info!(%event, scopes, max = board.max_scopes, "event sold out, too large to answer locally");
                    board.insert(&event, Entry::TooLarge { judged_ms: board.mono_ms() });
                }
                Ok(Ok(Snapshot::NotSoldOut)) => {}
                Ok(Ok(Snapshot::Unsettled)) => {
                    tracing::debug!(%event, "sold-out snapshot: counters kept moving")
                }
                Ok(Err(error)) => tracing::debug!(%error, %event, "sold-out snapshot failed"),
                Err(_) => tracing::debug!(%event, "sold-out snapshot timed out"),
            }
            // After the insert, so that no sold-out answer in between starts another.
            if let Ok(mut loading) = board.loading.lock() {
                loading.remove(event.as_str());
            }
        });
    }

    /// Reads what a flag needs without blocking Redis: the counters, the size (`HLEN`, and
    /// nothing more above the cap), the scopes in `HSCAN` chunks, the counters again. Equal
    /// counters mean no scope was added during the scan (see `flashsale_shared::sold_out`).
    async fn snapshot(&self, conn: &mut Conn, keys: &EventKeys) -> RedisResult<Snapshot> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let Some((before, rules)) = reads::counters_and_rules(conn, keys).await? else {
                return Ok(Snapshot::NotSoldOut);
            };
            if before.remaining != 0 {
                return Ok(Snapshot::NotSoldOut);
            }
            let count = reads::scope_count(conn, keys).await?;
            if count > self.max_scopes {
                return Ok(Snapshot::TooLarge { scopes: count });
            }
            let mut scopes = HashSet::with_capacity(count as usize);
            let mut cursor = Some(ScanCursor::START);
            while let Some(from) = cursor {
                cursor = reads::scan_scopes(conn, keys, from, &mut scopes).await?;
            }
            // The flag is validated as of when this last read was sent.
            let validated_ms = self.mono_ms();
            let after = reads::counters(conn, [keys]).await?.pop().flatten();
            if after == Some(before) {
                return Ok(Snapshot::SoldOut { counters: before, rules, scopes, validated_ms });
            }
        }
        Ok(Snapshot::Unsettled)
    }

    fn insert(&self, event: &EventId, entry: Entry) {
        self.entries.rcu(|entries| {
            let mut entries = HashMap::clone(entries);
            entries.insert(event.to_string(), entry.clone());
            entries
        });
    }

    /// Units came back to `event` (or may have): drop its flag or verdict.
    pub fn clear(&self, event: &str) {
        // The common case (a purchase accepted, nothing held) is one lock-free lookup.
        let Some(was_flag) = self.entries.load().get(event).map(|e| matches!(e, Entry::Flag(_))) else {
            return;
        };
        self.remove_if(event, |_| true);
        if was_flag {
            tracing::info!(%event, "sold-out flag dropped");
        }
    }

    /// Removes `event`'s entry if `which` says so, atomically against concurrent changes.
    fn remove_if(&self, event: &str, which: impl Fn(&Entry) -> bool) {
        self.entries.rcu(|entries| {
            let mut entries = HashMap::clone(entries);
            if entries.get(event).is_some_and(&which) {
                entries.remove(event);
            }
            entries
        });
    }

    /// Runs the refresh loop and the pub/sub listener until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if !self.enabled {
            return;
        }
        tokio::join!(self.clone().refresh_loop(stop.clone()), self.listen_loop(stop));
    }

    /// Every `refresh` period: retires flags whose work is done and forgets old verdicts, then
    /// re-validates the other flags with one pipelined round trip.
    async fn refresh_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = Ticker::new(self.refresh, stop);
        while ticker.tick().await {
            let conn = self.redis.get();
            let entries = self.entries.load_full();
            if entries.is_empty() {
                continue;
            }
            let now = self.now();
            let mut live = Vec::new();
            for (event, entry) in entries.iter() {
                match entry {
                    Entry::Flag(flag) if retire(flag, now) => {
                        tracing::info!(%event, "sold-out flag retired: the event ended or nobody asks");
                        self.remove_if(event, |e| matches!(e, Entry::Flag(f) if Arc::ptr_eq(f, flag)));
                    }
                    Entry::Flag(flag) => live.push((event, flag)),
                    Entry::TooLarge { judged_ms }
                        if now.mono_ms.saturating_sub(*judged_ms) >= VERDICT_TTL_MS =>
                    {
                        self.remove_if(event, |e| matches!(e, Entry::TooLarge { .. }));
                    }
                    Entry::TooLarge { .. } => {}
                }
            }
            if live.is_empty() {
                continue;
            }
            let sent_ms = self.mono_ms();
            let read = reads::counters(&conn, live.iter().map(|(_, flag)| flag.keys()));
            let Ok(Ok(rows)) = tokio::time::timeout(self.max_age(), read).await else { continue };
            for ((event, flag), row) in live.into_iter().zip(rows) {
                if flag.still_holds(row) {
                    flag.validated(sent_ms);
                } else {
                    tracing::info!(%event, "sold-out flag dropped");
                    self.remove_if(event, |e| matches!(e, Entry::Flag(f) if Arc::ptr_eq(f, flag)));
                }
            }
        }
    }

    /// Drops a flag the moment a worker returns units to its event (`finalize.lua` publishes
    /// on `fs:stock-returned`). Reconnects by itself; the refresh loop covers any gap.
    async fn listen_loop(self: Arc<Self>, stop: CancellationToken) {
        use tokio_stream::StreamExt;
        // In a cluster each attempt tries the next seed node: one that failed is not retried
        // until the others were.
        let mut attempt = 0;
        loop {
            let session = async {
                let mut pubsub = self.redis.pubsub(attempt).await?;
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
                    attempt = attempt.wrapping_add(1);
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
