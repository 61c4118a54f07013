//! The worker's one failure policy, shared by every loop: a failed Redis call is counted in
//! `flashsale_worker_redis_errors_total`, the first failure of a streak is logged at `warn`
//! (with what failed and why), the retries of the same streak at `debug`, and the recovery at
//! `info`, so an outage of an hour is two log lines, not thousands. Work is retried with a
//! capped exponential backoff; nothing that failed this way is ever counted against an entry.

use std::time::Duration;

use redis::RedisError;

use crate::Ctx;

/// Longest pause between two retries.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// One loop's failure streak.
#[derive(Debug)]
pub(crate) struct Streak {
    what: &'static str,
    failures: u32,
}

impl Streak {
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what, failures: 0 }
    }

    /// Records a failed call: counts it, logs it by the policy, repairs what can be repaired
    /// (a new connection after `READONLY`, the consumer group after `NOGROUP`).
    pub(crate) async fn failed(&mut self, ctx: &Ctx, error: &RedisError) {
        self.failures = self.failures.saturating_add(1);
        ctx.metrics.redis_errors.increment(1);
        let fault = ctx.redis.observe(error);
        if self.failures == 1 {
            tracing::warn!(%error, ?fault, loop_ = self.what, "Redis call failed; retrying until it works");
        } else {
            tracing::debug!(%error, ?fault, loop_ = self.what, failures = self.failures, "still failing");
        }
        if error.code() == Some("NOGROUP") {
            // The group vanished (a Redis that restarted empty, a flush): recreate it.
            let streams = ctx.streams.borrow().clone();
            let mut conn = ctx.redis.get();
            for s in streams.iter() {
                let _ = flashsale_shared::stream::ensure_group(&mut conn, &s.keys).await;
            }
        }
    }

    /// Records a failed ledger call by the same policy (its own counter).
    pub(crate) fn ledger_failed(&mut self, ctx: &Ctx, why: &str) {
        self.failures = self.failures.saturating_add(1);
        ctx.metrics.ledger_errors.increment(1);
        if self.failures == 1 {
            tracing::warn!(
                error = why,
                loop_ = self.what,
                "the ledger is unavailable: holding the batch, reading nothing new, retrying"
            );
        } else {
            tracing::debug!(
                error = why,
                loop_ = self.what,
                failures = self.failures,
                "ledger still unavailable"
            );
        }
    }

    /// Records a call that worked; logs the recovery once after a streak.
    pub(crate) fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(loop_ = self.what, failures = self.failures, "Redis calls work again");
            self.failures = 0;
        }
    }

    /// How long to wait before the next try: doubling from 50 ms, at most [`MAX_BACKOFF`].
    pub(crate) fn backoff(&self) -> Duration {
        backoff(self.failures)
    }

    /// Waits [`Streak::backoff`], or less if the worker is stopping.
    pub(crate) async fn pause(&self, ctx: &Ctx) {
        tokio::select! {
            () = ctx.stop.cancelled() => {}
            () = tokio::time::sleep(self.backoff()) => {}
        }
    }
}

/// The backoff after `failures` consecutive failures (0 for none).
pub(crate) fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF.saturating_mul(1 << (failures - 1).min(16)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(6), Duration::from_millis(1600));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
