//! Whether the Redis behind this gateway may be sold on: a primary whose eviction policy
//! cannot evict a live event's keys.
//!
//! No key of an event has a TTL, so `noeviction` and `volatile-*` never evict one; an
//! `allkeys-*` policy may evict an idempotency entry, and the retry of a paid purchase would
//! then buy again. Under such a policy the gateway refuses to sell (503 naming the policy),
//! `/readyz` is not ready and an error is logged once. The policy is read from `INFO` (which
//! works where `CONFIG` is disabled) at start-up, every [`CHECK_INTERVAL`] and again before
//! the first purchase after the connection failed (a reconnect may reach another server).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use flashsale_shared::connection::{self, Redis, ServerInfo};
use flashsale_shared::shutdown::Ticker;
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, Mutation, Unavailable};

/// How often the server's role and policy are re-read.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

const UNKNOWN: u8 = 0;
const SAFE: u8 = 1;
const UNSAFE: u8 = 2;

#[derive(Debug)]
pub struct RedisStatus {
    state: AtomicU8,
    last: ArcSwap<ServerInfo>,
}

impl Default for RedisStatus {
    fn default() -> Self {
        Self { state: AtomicU8::new(UNKNOWN), last: ArcSwap::from_pointee(ServerInfo::default()) }
    }
}

impl RedisStatus {
    /// Records what `INFO` said; logs a change of verdict once.
    pub fn record(&self, info: ServerInfo) {
        let state = if info.may_evict_events() { UNSAFE } else { SAFE };
        let before = self.state.swap(state, Ordering::AcqRel);
        let previous = self.last.swap(Arc::new(info.clone()));
        if state == UNSAFE && (before != UNSAFE || previous.maxmemory_policy != info.maxmemory_policy) {
            tracing::error!(policy = %info.maxmemory_policy,
                "Redis maxmemory-policy could evict idempotency entries: refusing to sell until it is \
                 noeviction or volatile-* (CONFIG SET maxmemory-policy noeviction)");
        } else if state == SAFE && before == UNSAFE {
            tracing::info!(policy = %info.maxmemory_policy, "Redis maxmemory-policy is safe again: selling");
        }
        if !previous.run_id.is_empty() && previous.run_id != info.run_id {
            tracing::warn!(run_id = %info.run_id, "Redis restarted (its run_id changed)");
        }
    }

    /// After a failed call: the next purchase checks again before it sells.
    pub fn forget(&self) {
        let _ = self.state.compare_exchange(SAFE, UNKNOWN, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// `Ok` when selling is safe; reads `INFO` first if nothing is known. Requests that find
    /// the state unknown each read it, in parallel (a lock would queue them behind a slow
    /// Redis one deadline after another); that happens once per failure, and `INFO` is cheap.
    pub async fn check(&self, redis: &Redis, deadline: Duration) -> Result<(), ApiError> {
        if self.state.load(Ordering::Acquire) == UNKNOWN {
            let mut conn = redis.get();
            match tokio::time::timeout(deadline, connection::server_info(&mut conn)).await {
                Ok(Ok(info)) => self.record(info),
                Ok(Err(error)) => return Err(ApiError::redis(error, Mutation::Read)),
                Err(_) => return Err(ApiError::timeout(Mutation::Read)),
            }
        }
        self.verdict()
    }

    fn verdict(&self) -> Result<(), ApiError> {
        match self.state.load(Ordering::Acquire) {
            UNSAFE => Err(ApiError::Unavailable {
                why: Unavailable::EvictionPolicy(self.last.load().maxmemory_policy.clone()),
                outcome_unknown: false,
                cause: format!("maxmemory-policy {}", self.last.load().maxmemory_policy),
            }),
            _ => Ok(()),
        }
    }

    /// The last `INFO` read (for `/readyz`).
    pub fn last(&self) -> Arc<ServerInfo> {
        self.last.load_full()
    }

    /// Re-reads `INFO` every [`CHECK_INTERVAL`] until `stop`.
    pub async fn watch(self: Arc<Self>, redis: Redis, timeout: Duration, stop: CancellationToken) {
        let mut ticker = Ticker::new(CHECK_INTERVAL, stop);
        while ticker.tick().await {
            let mut conn = redis.get();
            match tokio::time::timeout(timeout, connection::server_info(&mut conn)).await {
                Ok(Ok(info)) => self.record(info),
                Ok(Err(error)) => {
                    redis.observe(&error);
                    self.forget();
                }
                Err(_) => self.forget(),
            }
        }
    }
}
