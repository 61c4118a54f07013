//! flashsale's order worker.
//!
//! Every accepted purchase is an entry `{order = id}` on its event's stream. Workers share
//! one consumer group per stream; each entry is finalized (pending -> confirmed) and
//! acknowledged in one atomic script, so crashes, redeliveries and racing workers never
//! count an order twice. Entries a dead worker held are claimed after `CLAIM_MIN_IDLE_MS`.
//! No infrastructure fault fails an order: retries, re-reads and claims never count as
//! deliveries. Entries that cannot be understood are dead-lettered; an entry whose order is
//! pending but that failed in the script more than `MAX_DELIVERIES` times is parked, its order
//! left pending with its units held until an operator resolves it (`dead-letters`).
//!
//! # Layout
//! - [`run`]: starts the loops and the metrics server, stops them on shutdown.
//! - `context`: what the loops share (`Ctx`) and the event streams they follow.
//! - [`consumer`]: getting entries (own pending, new, claimed), one reader task per event.
//! - `batch`: one event's batch, top to bottom: read the orders, record them in the ledger,
//!   confirm them in Redis, report an `ExecutionOutcome`.
//! - `ledger`: the gate every ledger call goes through (timing, the up/down flag, refusals
//!   per order); it reads nothing from Redis.
//! - [`discovery`]: new events are picked up without a restart.
//! - `fence`: after a Redis restart, nothing sells until the ledger's orders are back.
//! - `maintenance`: gauges, trimming of acknowledged history, the ledger's migrations, ping
//!   and drift, and the decision loop (each event's configuration, pause, end and retention
//!   recorded in the ledger soon after Redis took it).
//! - `failure`: the one failure policy of every loop, for Redis and the ledger alike (count,
//!   log once, capped backoff).
//! - [`check`], [`dead_letters`], [`export`]: the operator commands (books-balance invariant;
//!   listing, redriving and failing dead letters; the ledger's orders as CSV or JSON lines).
//! - [`operator`]: what those commands share (their connection, "or exit 2", `migrate`).
//! - [`metrics`]: the worker's Prometheus series.
//! - [`config`]: the command line and environment.

mod batch;
pub mod check;
pub mod config;
pub mod consumer;
mod context;
pub mod dead_letters;
pub mod discovery;
pub mod export;
mod failure;
mod fence;
mod ledger;
mod maintenance;
pub mod metrics;
pub mod operator;

use std::future::Future;
use std::sync::Arc;

use flashsale_shared::connection::Redis;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::context::Ctx;
use crate::ledger::LedgerGate;
use crate::metrics::WorkerMetrics;

/// Runs the worker until `shutdown` resolves: then it stops reading, finishes the batch in
/// hand (a blocking read lasts at most `BLOCK_MS`), and returns. Entries read but not
/// finished stay in this consumer's pending list for its successor or a claimer.
pub async fn run(
    config: Config,
    metrics_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if config.ledger.database_url.is_none() {
        return Err(std::io::Error::other(
            "DATABASE_URL is required: the worker records every order in the ledger before acknowledging it",
        ));
    }
    let consumer = config.consumer();
    let redis = Redis::new(&config.redis).map_err(std::io::Error::other)?;
    let ledger = flashsale_ledger::Ledger::new(&config.ledger).map_err(std::io::Error::other)?;
    let idle = flashsale_shared::telemetry::GAUGE_IDLE.max(config::ms(config.stats_interval_ms) * 3);
    let metrics = Arc::new(WorkerMetrics::with_gauge_idle(idle));
    let stop = CancellationToken::new();
    let (streams_tx, streams_rx) = watch::channel(Arc::new(Vec::new()));
    let crash_after_write = config.failpoint == Some(config::Failpoint::CrashAfterLedgerWrite);
    let ctx = Arc::new(Ctx {
        config,
        consumer: consumer.clone(),
        redis,
        ledger: LedgerGate::new(ledger, metrics.clone(), crash_after_write),
        metrics: metrics.clone(),
        streams: streams_rx,
        stop: stop.clone(),
    });
    tracing::info!(
        consumer = %consumer,
        redis = %ctx.config.redis.target(),
        ledger = %ctx.config.ledger.database_url.as_ref().map(ToString::to_string).unwrap_or_default(),
        metrics = %metrics_listener.local_addr()?,
        "flashsale-worker starting"
    );

    // Know the events before the first read, so own pending entries of every event come first.
    if let Err(error) = discovery::discover(&ctx, &streams_tx).await {
        tracing::warn!(%error, "initial event discovery failed; the discovery loop retries");
    }

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(consumer::consume_loop(ctx.clone()));
    tasks.spawn(consumer::claim_loop(ctx.clone()));
    tasks.spawn(discovery::discovery_loop(ctx.clone(), streams_tx));
    tasks.spawn(maintenance::stats_loop(ctx.clone()));
    tasks.spawn(maintenance::trim_loop(ctx.clone()));
    tasks.spawn(maintenance::ledger_loop(ctx.clone()));
    tasks.spawn(maintenance::decision_loop(ctx.clone()));
    tasks.spawn(fence::fence_loop(ctx.clone()));
    let server_stop = stop.clone();
    tasks.spawn(async move {
        let server = axum::serve(metrics_listener, metrics::router(metrics))
            .with_graceful_shutdown(async move { server_stop.cancelled().await });
        if let Err(error) = server.await {
            tracing::error!(%error, "metrics server failed");
        }
    });

    tokio::select! {
        () = shutdown => {}
        () = stop.cancelled() => {}
    }
    stop.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "worker task panicked");
        }
    }
    tracing::info!("flashsale-worker stopped");
    Ok(())
}
