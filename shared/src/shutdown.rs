//! Graceful shutdown: both binaries stop on the first SIGINT or SIGTERM and propagate it to
//! every task through one `CancellationToken`.

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (what orchestrators send).
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops this process");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

/// A periodic tick for background loops that ends when `stop` is cancelled:
/// `while ticker.tick().await { ... }`. A slow iteration delays the next tick rather than
/// causing a burst of catch-up ticks.
#[derive(Debug)]
pub struct Ticker {
    interval: tokio::time::Interval,
    stop: CancellationToken,
}

impl Ticker {
    pub fn new(period: std::time::Duration, stop: CancellationToken) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { interval, stop }
    }

    /// Waits for the next tick; `false` once stopped.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}
