//! [`AppState`]: what every handler shares, built once from the [`Config`] at start-up.
//!
//! Redis is reached only through [`AppState::redis`], which puts every call under the Redis
//! deadline and turns every failure into a problem; the call site says whether the call
//! writes what the request asked for ([`Mutation`]), which decides what a failure mid-call
//! means for the client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flashsale_shared::connection::{Conn, Fault, Redis};
use flashsale_shared::{EventId, OrderId, UserId};
use redis::RedisResult;
use tokio_util::sync::CancellationToken;

use crate::buyer::BuyerKeys;
use crate::config::{AdminToken, BuyerAuth, Config};
use crate::error::{ApiError, Limit, Mutation, Unavailable};
use crate::limit::{RateLimits, retry_after_secs};
use crate::metrics::ApiMetrics;
use crate::readiness::{MISS_CAPACITY, MISS_TTL, Readiness, RecentMisses};
use crate::redis_status::RedisStatus;
use crate::sold_out::SoldOutBoard;

/// What every handler shares. Cloning is one reference-count increment.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    redis: Redis,
    redis_status: Arc<RedisStatus>,
    /// The ledger, when `DATABASE_URL` is set: only for events that have left Redis.
    ledger: Option<flashsale_ledger::Ledger>,
    redis_timeout: Duration,
    request_timeout: Duration,
    body_timeout: Duration,
    /// Every admin token (`ADMIN_TOKEN` and `ADMIN_TOKENS`); empty: admin routes are closed.
    admin_tokens: Vec<AdminToken>,
    idempotency_retention: Duration,
    metrics: Arc<ApiMetrics>,
    sold_out: Arc<SoldOutBoard>,
    /// The keys buyer tokens are verified with; `None` with `BUYER_AUTH=none`.
    buyer_keys: Option<BuyerKeys>,
    limits: RateLimits,
    /// `/readyz`'s last verdict (one check per second however many probes ask).
    readiness: Readiness,
    /// Event and order ids the cold reads recently found in neither Redis nor the ledger.
    event_misses: RecentMisses<EventId>,
    order_misses: RecentMisses<(EventId, OrderId)>,
}

impl AppState {
    /// Errors name the setting at fault (a key file that does not load, say).
    pub fn new(config: &Config) -> Result<Self, String> {
        let redis = Redis::new(&config.redis).map_err(|e| format!("REDIS_URL: {e}"))?;
        let sold_out = Arc::new(SoldOutBoard::new(config, redis.clone()));
        let buyer_keys = match config.buyer_auth()? {
            BuyerAuth::Jwt => BuyerKeys::from_config(config)?,
            BuyerAuth::None => None,
        };
        let limits = RateLimits::new(config, buyer_keys.is_some());
        Ok(Self(Arc::new(Inner {
            redis,
            redis_status: Arc::new(RedisStatus::default()),
            ledger: match config.ledger.database_url {
                Some(_) => Some(
                    flashsale_ledger::Ledger::new(&config.ledger)
                        .map_err(|e| format!("DATABASE_URL: {e}"))?,
                ),
                None => None,
            },
            redis_timeout: config.redis.timeout(),
            request_timeout: config.request_timeout(),
            body_timeout: config.body_timeout(),
            admin_tokens: config.admin_tokens(),
            idempotency_retention: config.idempotency_retention(),
            metrics: Arc::new(ApiMetrics::new()),
            sold_out,
            buyer_keys,
            limits,
            readiness: Readiness::new(crate::readiness::MAX_AGE),
            event_misses: RecentMisses::new(MISS_TTL, MISS_CAPACITY),
            order_misses: RecentMisses::new(MISS_TTL, MISS_CAPACITY),
        })))
    }

    /// The buyer-token keys, when buyer routes need a token (`BUYER_AUTH=jwt`).
    pub fn buyer_keys(&self) -> Option<&BuyerKeys> {
        self.0.buyer_keys.as_ref()
    }

    pub fn limits(&self) -> &RateLimits {
        &self.0.limits
    }

    pub fn admin_tokens(&self) -> &[AdminToken] {
        &self.0.admin_tokens
    }

    pub fn request_timeout(&self) -> Duration {
        self.0.request_timeout
    }

    /// How long a request body may take to arrive.
    pub fn body_timeout(&self) -> Duration {
        self.0.body_timeout
    }

    pub fn idempotency_retention(&self) -> Duration {
        self.0.idempotency_retention
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.0.metrics
    }

    pub fn sold_out(&self) -> &Arc<SoldOutBoard> {
        &self.0.sold_out
    }

    pub fn redis_status(&self) -> &RedisStatus {
        &self.0.redis_status
    }

    pub fn readiness(&self) -> &Readiness {
        &self.0.readiness
    }

    /// Events a `GET` recently found in neither Redis nor the ledger.
    pub fn event_misses(&self) -> &RecentMisses<EventId> {
        &self.0.event_misses
    }

    /// Orders a `GET` recently found in neither Redis nor the ledger.
    pub fn order_misses(&self) -> &RecentMisses<(EventId, OrderId)> {
        &self.0.order_misses
    }

    /// Tells the sold-out board what a script answer revealed about an event's stock (and
    /// `/readyz` that Redis answered a purchase).
    pub fn observe_remaining(&self, event: &EventId, remaining: u64) {
        self.0.sold_out.observe(event, remaining);
        // The purchase script answered: Redis may be sold on, whatever `/readyz` last found.
        self.0.readiness.vouch();
    }

    /// `Ok` when Redis may be sold on (see [`crate::redis_status`]).
    pub async fn may_sell(&self) -> Result<(), ApiError> {
        self.0.redis_status.check(&self.0.redis, self.0.redis_timeout).await
    }

    /// Re-reads the server's role and eviction policy until `stop` (a background loop).
    pub fn watch_redis(&self, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        self.0.redis_status.clone().watch(self.0.redis.clone(), self.0.redis_timeout, stop)
    }

    /// Runs one Redis operation on the shared connection under the Redis deadline, mapping
    /// every failure to a problem. A [`Mutation::Write`] whose call fails after it may have
    /// reached Redis has an unknown outcome (see [`ApiError::redis`]). A failed connection makes the next purchase check the server
    /// again (a reconnect may reach another one); `READONLY` replaces the connection.
    pub async fn redis<T, F, Fut>(&self, mutation: Mutation, op: F) -> Result<T, ApiError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(self.0.redis_timeout, op(self.0.redis.get())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if self.0.redis.observe(&error) != Fault::Other {
                    self.0.redis_status.forget();
                    self.0.readiness.distrust();
                }
                Err(ApiError::redis(error, mutation))
            }
            Err(_) => {
                self.0.redis_status.forget();
                self.0.readiness.distrust();
                Err(ApiError::timeout(mutation))
            }
        }
    }

    /// Runs one ledger read, if a ledger is configured (`None` otherwise), mapping its failure
    /// to a 503.
    pub async fn ledger<T, F, Fut>(&self, op: F) -> Result<Option<T>, ApiError>
    where
        F: FnOnce(flashsale_ledger::Ledger) -> Fut,
        Fut: Future<Output = flashsale_ledger::Result<T>>,
    {
        let Some(ledger) = self.0.ledger.clone() else { return Ok(None) };
        op(ledger).await.map(Some).map_err(|error| ApiError::Unavailable {
            why: Unavailable::Ledger,
            outcome_unknown: false,
            cause: error.to_string(),
        })
    }

    /// Charges one request to `buyer`'s limit (a verified buyer: see [`RateLimits::new`]).
    pub fn limit_buyer(&self, buyer: &UserId) -> Result<(), ApiError> {
        let Some(limiter) = self.limits().buyer() else { return Ok(()) };
        // The lookup borrows; only a new entry clones the id.
        limiter.check(buyer).map_err(|wait| self.rate_limited(Limit::Buyer, wait))
    }

    /// The 429 of a request `limit` refused, counted in the metrics.
    pub(crate) fn rate_limited(&self, limit: Limit, wait: Duration) -> ApiError {
        self.metrics().rate_limited(limit);
        ApiError::RateLimited { limit, retry_after_secs: retry_after_secs(wait) }
    }
}
