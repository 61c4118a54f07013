//! Start-up: validate the configuration, build the [`AppState`], start the background loops,
//! serve one or two listeners until shutdown, then stop the loops.
//!
//! The background loops, each until the gateway stops: the script warm-up (once Redis
//! answers), the Redis status watch ([`crate::redis_status`]), the sold-out board's refresh
//! ([`crate::sold_out`]), the rate limiters' sweep ([`crate::limit`]) and the metrics upkeep.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use flashsale_shared::shutdown::Ticker;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{Limit, Mutation};
use crate::router::{Routes, router, router_for};
use crate::state::AppState;
use crate::{cors, limit, serve};

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
    tokio::spawn(state.watch_redis(background.clone()));
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
        let loaded = state.redis(Mutation::Read, |mut conn| async move {
            flashsale_shared::scripts::load_all(&mut conn).await
        });
        if loaded.await.is_ok() {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Drops the rate limiters' stale entries every second (see [`crate::limit`]), and reports what
/// they held.
async fn sweep_rate_limits(state: AppState, stop: CancellationToken) {
    let mut ticker = Ticker::new(limit::SWEEP_INTERVAL, stop);
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
    let mut ticker = Ticker::new(Duration::from_secs(5), stop);
    while ticker.tick().await {
        state.metrics().run_upkeep();
    }
}
