//! flashsale's HTTP gateway.
//!
//! A purchase is one call of `lua/purchase.lua` on a shared multiplexed Redis connection:
//! the script checks and reserves atomically and enqueues the order on the event's stream,
//! and the gateway answers 202 at once; `flashsale-worker` finalizes orders asynchronously.
//!
//! # Layout
//! - [`run`] serves a bound listener until a shutdown future resolves (tests bind
//!   `127.0.0.1:0`); [`router`] lists every route.
//! - [`serve`]: the accept loop, HTTP/1.1 with bounded connections (count, header-read
//!   timeout, idle timeout) and the graceful drain.
//! - `routes/`: one module per resource (events, purchases, orders, health).
//! - [`error`]: the one error type and the error policy; every error is a problem document.
//! - [`extract`], [`auth`]: extractors that reject with problems; admin deny-by-default.
//! - [`buyer`]: who is buying: buyer tokens (JWT) verified against the merchant's keys.
//! - [`limit`]: rate limits per buyer and per client address, with bounded memory.
//! - [`metrics`]: the Prometheus series, by matched route.

pub mod auth;
pub mod buyer;
pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod limit;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod redis_status;
pub mod routes;
pub mod serve;
pub mod sold_out;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, header};
use axum::routing::get;
use flashsale_shared::connection::Conn;
use flashsale_shared::connection::{Fault, Redis};
use redis::RedisResult;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::buyer::BuyerKeys;
pub use crate::config::Config;
use crate::config::{AdminToken, BuyerAuth};
use crate::error::ApiError;
use crate::limit::{Limit, RateLimits};
use crate::metrics::ApiMetrics;
use crate::redis_status::RedisStatus;
use crate::sold_out::SoldOutBoard;

/// Request bodies above this size are refused with 413 before they are read.
pub const BODY_LIMIT: usize = 64 * 1024;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

    /// `Ok` when Redis may be sold on (see [`redis_status`]).
    pub async fn may_sell(&self) -> Result<(), ApiError> {
        self.0.redis_status.check(&self.0.redis, self.0.redis_timeout).await
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
            why: crate::error::Unavailable::Ledger,
            outcome_unknown: false,
            cause: error.to_string(),
        })
    }

    pub fn redis_status(&self) -> &RedisStatus {
        &self.0.redis_status
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

    /// Tells the sold-out board what a script answer revealed about an event's stock.
    pub fn observe_remaining(&self, event: &flashsale_shared::EventId, remaining: u64) {
        self.0.sold_out.observe(event, remaining);
    }

    /// Runs one Redis operation on the shared connection under the Redis deadline, mapping
    /// every failure to a problem. `mutating` marks operations whose outcome is unknown when
    /// they time out (see [`ApiError::redis`]). A failed connection makes the next purchase
    /// check the server again (a reconnect may reach another one); `READONLY` replaces the
    /// connection.
    pub async fn redis<T, F, Fut>(&self, mutating: bool, op: F) -> Result<T, ApiError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match tokio::time::timeout(self.0.redis_timeout, op(self.0.redis.get())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if self.0.redis.observe(&error) != Fault::Other {
                    self.0.redis_status.forget();
                }
                Err(ApiError::redis(error, mutating))
            }
            Err(_) => {
                self.0.redis_status.forget();
                Err(ApiError::timeout(mutating))
            }
        }
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything (one listener, `ADMIN_LISTEN_ADDR` unset).
    All,
    /// What buyers use: purchases, order and event reads, probes, the OpenAPI document.
    Public,
    /// What operators use: event writes, sale control, listings, dead letters, `/metrics`
    /// (and the probes).
    Admin,
}

/// The routes of `which`, behind the gateway's middleware (see [`observed`]). The OpenAPI
/// document (every route, whichever listener serves it) is generated from the same lists of
/// handlers and served at `/openapi.json`.
pub fn router_for(which: Routes, state: AppState) -> Router {
    let (_, mut openapi) = public_routes().merge(admin_routes()).split_for_parts();
    if state.buyer_keys().is_none() {
        openapi::buyer_routes_public(&mut openapi);
    }
    let document = openapi.to_pretty_json().unwrap_or_default();
    let routes = match which {
        Routes::All => public_routes().merge(admin_routes()),
        Routes::Public => public_routes(),
        Routes::Admin => admin_routes().merge(probe_routes()),
    };
    let (routes, _) = routes.split_for_parts();
    let routes = routes.route(
        "/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }),
    );
    observed(routes, state)
}

/// Every route on one listener.
pub fn router(state: AppState) -> Router {
    router_for(Routes::All, state)
}

/// `routes` with the middleware stack every request goes through (outermost first):
/// `observe` (request id, debug span, metrics, problem documents for every error and for a
/// panic, request timeout), then the body limit, and the problem-document fallback for
/// unknown routes. Public so that tests can put a route of their own (one that panics, say)
/// behind exactly the production stack.
pub fn observed(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::every_request))
        .with_state(state)
}

/// The routes buyers use: each handler's `#[utoipa::path]` gives its method and path.
fn public_routes() -> OpenApiRouter<AppState> {
    use routes::{events, orders, purchases};
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(events::get_event))
        .routes(routes!(purchases::create))
        .routes(routes!(orders::get_order))
        .merge(probe_routes())
}

/// `/healthz` and `/readyz`, served on every listener.
fn probe_routes() -> OpenApiRouter<AppState> {
    use routes::health;
    OpenApiRouter::new().routes(routes!(health::healthz)).routes(routes!(health::readyz))
}

/// The routes operators use (every one but `/metrics` takes the admin token).
fn admin_routes() -> OpenApiRouter<AppState> {
    use routes::{control, dead_letters, events, health, orders};
    OpenApiRouter::new()
        .routes(routes!(events::put_event))
        .routes(routes!(events::list_events))
        .routes(routes!(control::pause))
        .routes(routes!(control::resume))
        .routes(routes!(control::end))
        .routes(routes!(orders::list_orders))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::redrive))
        .routes(routes!(dead_letters::fail))
        .routes(routes!(health::metrics))
}

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `SHUTDOWN_TIMEOUT_MS`, and returns. Connections are
/// bounded by [`serve`]: their number, their header-read time and their idle time.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admin = match config.admin_listen_addr {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot bind ADMIN_LISTEN_ADDR {addr}: {e}"))
        })?),
        None => None,
    };
    run_with_admin(listener, admin, config, shutdown).await
}

/// [`run`] with the admin listener bound by the caller (tests bind port 0): with one, admin
/// routes and `/metrics` are served only there and `listener` serves only public routes.
pub async fn run_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    config.validate().map_err(std::io::Error::other)?;
    let state = AppState::new(&config).map_err(std::io::Error::other)?;
    if config.admin_tokens().is_empty() {
        tracing::warn!("neither ADMIN_TOKEN nor ADMIN_TOKENS is set: every admin route answers 401");
    }
    match state.buyer_keys() {
        Some(keys) => tracing::info!(?keys, "buyer routes need a buyer token (BUYER_AUTH=jwt)"),
        None => tracing::warn!(
            "BUYER_AUTH=none: the buyer is whatever user_id a request's body says; only safe behind a \
             proxy that authenticates buyers and sets user_id itself"
        ),
    }
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    tracing::info!(
        addr = %listener.local_addr()?,
        admin = %admin_addr.map_or_else(|| "the same listener".to_owned(), |a| a.to_string()),
        redis = %config.redis.target(),
        ledger = %config.ledger.database_url.as_ref().map_or_else(|| "none".to_owned(), ToString::to_string),
        "flashsale-api listening"
    );

    let background = CancellationToken::new();
    tokio::spawn(warm_up_scripts(state.clone(), background.clone()));
    tokio::spawn(metrics_upkeep(state.clone(), background.clone()));
    tokio::spawn(state.0.redis_status.clone().watch(
        state.0.redis.clone(),
        state.0.redis_timeout,
        background.clone(),
    ));
    tokio::spawn(state.sold_out().clone().run(background.clone()));
    tokio::spawn(sweep_rate_limits(state.clone(), background.clone()));

    let limits = serve::Limits::new(&config);
    // Browsers reach the public routes; CORS applies wherever those are served.
    let cors = |app: Router| match &config.cors_allowed_origins {
        Some(origins) => app.layer(cors::layer(origins)),
        None => app,
    };
    match admin {
        None => serve::serve(listener, cors(router(state)), limits, shutdown).await,
        Some(admin) => {
            // One shutdown for both listeners.
            let stopping = CancellationToken::new();
            let trigger = stopping.clone();
            tokio::spawn(async move {
                shutdown.await;
                trigger.cancel();
            });
            let admin_app = router_for(Routes::Admin, state.clone());
            let admin_server = serve::serve(admin, admin_app, limits, stopping.clone().cancelled_owned());
            let public_app = cors(router_for(Routes::Public, state));
            let public_server = serve::serve(listener, public_app, limits, stopping.cancelled_owned());
            tokio::join!(admin_server, public_server);
        }
    }
    background.cancel();
    tracing::info!("flashsale-api stopped");
    Ok(())
}

/// Loads every script once Redis is reachable, so the first purchase needs one round trip.
/// Not required for correctness: EVALSHA falls back to loading on NOSCRIPT.
async fn warm_up_scripts(state: AppState, stop: CancellationToken) {
    loop {
        let loaded = state
            .redis(false, |mut conn| async move { flashsale_shared::scripts::load_all(&mut conn).await });
        if loaded.await.is_ok() {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Drops the rate limiters' stale entries every second (see [`limit`]), and reports what
/// they held.
async fn sweep_rate_limits(state: AppState, stop: CancellationToken) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(limit::SWEEP_INTERVAL, stop);
    while ticker.tick().await {
        let limits = state.limits();
        if let Some(buyer) = limits.buyer() {
            state.metrics().rate_limit_swept(Limit::Buyer, buyer.sweep(), buyer.overflowed());
        }
        if let Some(client) = limits.client() {
            state.metrics().rate_limit_swept(Limit::Client, client.sweep(), client.overflowed());
        }
    }
}

async fn metrics_upkeep(state: AppState, stop: CancellationToken) {
    let mut ticker = flashsale_shared::shutdown::Ticker::new(Duration::from_secs(5), stop);
    while ticker.tick().await {
        state.metrics().run_upkeep();
    }
}
