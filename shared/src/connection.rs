//! The one Redis connection a process shares for its non-blocking commands, and what a failed
//! call means.
//!
//! A `ConnectionManager` multiplexes every in-flight call over one socket (measured ~210k
//! EVALSHA/s here, against ~45k/s for a pool) and reconnects by itself after the socket
//! breaks. It does not reconnect when the socket stays up but the server behind it became a
//! replica after a failover (every write answers `READONLY`): [`Redis::reconnect`] replaces it,
//! resolving the host again, so a `REDIS_URL` that follows the primary reaches the new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult};

use crate::config::RedisArgs;

#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: ConnectionManagerConfig,
    current: ArcSwap<ConnectionManager>,
    /// When the connection was last replaced (ms since `epoch`), so that a burst of READONLY
    /// answers (every request in flight gets one) replaces it once, not once per request.
    replaced_ms: AtomicU64,
    epoch: Instant,
}

/// At most one replacement of the connection per this interval.
const MIN_RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects lazily, so a process starts (and reports not-ready) while Redis is down.
    pub fn new(args: &RedisArgs) -> RedisResult<Self> {
        let client = args.client()?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(args.timeout()))
            .set_connection_timeout(Some(args.timeout()))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        let inner = Inner {
            client,
            config,
            current: ArcSwap::from_pointee(manager),
            replaced_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The shared connection (a clone is a reference-count increment).
    pub fn get(&self) -> ConnectionManager {
        ConnectionManager::clone(&self.inner.current.load())
    }

    /// The client, for connections of their own (pub/sub, blocking reads).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Replaces the shared connection with a new one (at most every 500 ms). Calls in flight on
    /// the old one finish there; every later call goes to the new one.
    pub fn reconnect(&self) {
        let now = self.inner.epoch.elapsed().as_millis() as u64 + MIN_RECONNECT_INTERVAL.as_millis() as u64;
        let last = self.inner.replaced_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < MIN_RECONNECT_INTERVAL.as_millis() as u64
            || self
                .inner
                .replaced_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.inner.client.clone(), self.inner.config.clone()) {
            Ok(manager) => {
                self.inner.current.store(Arc::new(manager));
                tracing::info!("Redis connection replaced");
            }
            Err(error) => tracing::warn!(%error, "cannot replace the Redis connection"),
        }
    }

    /// What every caller does with a failed call: a server that refuses writes as a replica
    /// gets a new connection. Returns what the failure was.
    pub fn observe(&self, error: &RedisError) -> Fault {
        let fault = Fault::of(error);
        if fault == Fault::ReadOnly {
            self.reconnect();
        }
        fault
    }
}

/// Why a Redis call failed, as far as anyone outside Redis can fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No answer within the deadline: the command may have run.
    Timeout,
    /// `OOM`: Redis is full (maxmemory under noeviction) and refuses writes.
    OutOfMemory,
    /// `READONLY`: the server is a replica (a failover happened or is under way).
    ReadOnly,
    /// The connection was refused or could not be made: nothing was sent.
    Refused,
    /// The connection broke while the command was out: it may have run.
    ConnectionLost,
    /// `LOADING`, `BUSY`, `MISCONF`, `MASTERDOWN`, ...: Redis refused to run the command now.
    Unavailable,
    /// `NOSCRIPT` for the purchase script: Redis (re)started and is not reconciled with the
    /// ledger yet (the fence, see `shared::scripts`); nothing ran.
    Fenced,
    /// Anything else: the reply was not what our code expects (a bug).
    Other,
}

impl Fault {
    pub fn of(error: &RedisError) -> Self {
        match error.code() {
            Some("OOM") => return Self::OutOfMemory,
            Some("NOSCRIPT") => return Self::Fenced,
            Some("READONLY") => return Self::ReadOnly,
            Some(
                "LOADING" | "BUSY" | "MISCONF" | "MASTERDOWN" | "NOREPLICAS" | "CLUSTERDOWN" | "TRYAGAIN",
            ) => {
                return Self::Unavailable;
            }
            _ => {}
        }
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connection_refusal() {
            Self::Refused
        } else if error.is_io_error() || error.is_connection_dropped() {
            Self::ConnectionLost
        } else {
            Self::Other
        }
    }

    /// Whether a command that failed this way may still have taken effect.
    pub fn outcome_unknown(self) -> bool {
        matches!(self, Self::Timeout | Self::ConnectionLost)
    }

    /// Whether this is Redis being unavailable (as opposed to a bug of ours).
    pub fn is_infrastructure(self) -> bool {
        self != Self::Other
    }
}

/// What `INFO` says about the server that matters for selling safely. `INFO` works where
/// `CONFIG` is disabled (managed Redis).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// `master` or `slave`.
    pub role: String,
    pub maxmemory_policy: String,
    /// Changes at every restart of the server.
    pub run_id: String,
}

impl ServerInfo {
    pub fn parse(info: &str) -> Self {
        let mut parsed = Self::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim_end().split_once(':') else { continue };
            match name {
                "role" => parsed.role = value.to_owned(),
                "maxmemory_policy" => parsed.maxmemory_policy = value.to_owned(),
                "run_id" => parsed.run_id = value.to_owned(),
                _ => {}
            }
        }
        parsed
    }

    /// Whether the eviction policy could evict keys of a live event. None of them has a TTL
    /// (`shared::keys`), so `noeviction` and the `volatile-*` policies never touch them; the
    /// `allkeys-*` policies may evict anything, an idempotency entry included.
    pub fn may_evict_events(&self) -> bool {
        self.maxmemory_policy.starts_with("allkeys-")
    }

    /// Whether the server accepts writes as a primary (a replica answers READONLY, or worse,
    /// accepts writes it will lose).
    pub fn is_primary(&self) -> bool {
        self.role == "master"
    }
}

/// Reads [`ServerInfo`] (`INFO` with its default sections: a few KB, well under a millisecond).
pub async fn server_info(conn: &mut impl redis::aio::ConnectionLike) -> RedisResult<ServerInfo> {
    let text: String = redis::cmd("INFO").query_async(conn).await?;
    Ok(ServerInfo::parse(&text))
}

/// One small write, to learn whether Redis accepts writes now: a full Redis (`OOM`), a
/// replica (`READONLY`) or one that cannot persist (`MISCONF`) refuses it.
pub async fn probe_write(conn: &mut impl redis::aio::ConnectionLike) -> RedisResult<()> {
    redis::cmd("SET").arg(crate::keys::WRITE_PROBE).arg(1).arg("PX").arg(10_000).exec_async(conn).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_allkeys_policies_can_evict_an_event() {
        let info = |policy: &str| {
            ServerInfo::parse(&format!("# Memory\r\nmaxmemory_policy:{policy}\r\nrole:master\r\n"))
        };
        for safe in ["noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"] {
            assert!(!info(safe).may_evict_events(), "{safe}");
        }
        for unsafe_ in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert!(info(unsafe_).may_evict_events(), "{unsafe_}");
        }
        assert!(info("noeviction").is_primary());
        assert!(!ServerInfo::parse("role:slave\r\n").is_primary());
    }

    use super::*;

    #[test]
    fn server_refusals_are_known_not_to_have_run() {
        assert!(!Fault::OutOfMemory.outcome_unknown());
        assert!(!Fault::ReadOnly.outcome_unknown());
        assert!(!Fault::Refused.outcome_unknown());
        assert!(Fault::Timeout.outcome_unknown());
        assert!(Fault::ConnectionLost.outcome_unknown());
        let timeout = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(Fault::of(&timeout), Fault::Timeout);
        let refused = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"));
        assert_eq!(Fault::of(&refused), Fault::Refused);
    }
}
