//! The worker's one failure policy, shared by every loop and both dependencies: a failed call
//! is counted (`flashsale_worker_redis_errors_total` for Redis,
//! `flashsale_ledger_errors_total` for the ledger), the first failure of a streak is logged at
//! `warn` (with which dependency failed and why), the retries of the same streak at `debug`,
//! and the recovery at `info`, naming the dependency that works again, so an outage of an hour
//! is two log lines, not thousands. Work is retried with a capped exponential backoff; nothing
//! that failed this way is ever counted against an entry.

use std::time::Duration;

use flashsale_ledger::LedgerError;
use redis::RedisError;

use crate::context::Ctx;

/// Longest pause between two retries.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// What kept a piece of work from being done: one of the worker's two dependencies was
/// unavailable. Never the work's own fault (that is an entry's failed attempt, counted by the
/// finalize script), so it is retried for as long as it takes.
#[derive(Debug)]
pub(crate) enum Fault {
    Redis(RedisError),
    Ledger(LedgerError),
}

impl From<RedisError> for Fault {
    fn from(error: RedisError) -> Self {
        Self::Redis(error)
    }
}

impl From<LedgerError> for Fault {
    fn from(error: LedgerError) -> Self {
        Self::Ledger(error)
    }
}

/// Which dependency a streak is about, for its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dependency {
    Redis,
    Ledger,
}

impl Dependency {
    fn of(fault: &Fault) -> Self {
        match fault {
            Fault::Redis(_) => Self::Redis,
            Fault::Ledger(_) => Self::Ledger,
        }
    }
}

/// One loop's failure streak.
#[derive(Debug)]
pub(crate) struct Streak {
    what: &'static str,
    failures: u32,
    /// What the current streak is failing on (`None` outside a streak).
    failing: Option<Dependency>,
}

impl Streak {
    pub(crate) fn new(what: &'static str) -> Self {
        Self { what, failures: 0, failing: None }
    }

    /// Records a failed call: counts it, logs it by the policy, repairs what can be repaired
    /// (a new connection after `READONLY`, the consumer group after `NOGROUP`). A failure of
    /// the other dependency than the streak's so far starts a new streak (a new `warn`).
    pub(crate) async fn failed(&mut self, ctx: &Ctx, fault: &Fault) {
        let dependency = Dependency::of(fault);
        if self.failing != Some(dependency) {
            self.succeeded();
            self.failing = Some(dependency);
        }
        self.failures = self.failures.saturating_add(1);
        let (what, failures) = (self.what, self.failures);
        match fault {
            Fault::Redis(error) => {
                ctx.metrics.redis_errors.increment(1);
                let fault = ctx.redis.observe(error);
                if failures == 1 {
                    tracing::warn!(%error, ?fault, loop_ = what, "Redis call failed; retrying until it works");
                } else {
                    tracing::debug!(%error, ?fault, loop_ = what, failures, "Redis still failing");
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
            Fault::Ledger(error) => {
                ctx.metrics.ledger_errors.increment(1);
                if failures == 1 {
                    tracing::warn!(%error, loop_ = what,
                        "ledger (PostgreSQL) call failed; orders stay pending in Redis, retrying until it works");
                } else {
                    tracing::debug!(%error, loop_ = what, failures, "ledger (PostgreSQL) still failing");
                }
            }
        }
    }

    /// Records a call that worked; logs the recovery once after a streak, naming what works
    /// again.
    pub(crate) fn succeeded(&mut self) {
        match self.failing.take() {
            Some(Dependency::Redis) if self.failures > 0 => {
                tracing::info!(loop_ = self.what, failures = self.failures, "Redis calls work again");
            }
            Some(Dependency::Ledger) if self.failures > 0 => {
                tracing::info!(
                    loop_ = self.what,
                    failures = self.failures,
                    "the ledger (PostgreSQL) answers again"
                );
            }
            _ => {}
        }
        self.failures = 0;
    }

    /// How long to wait before the next try: doubling from 50 ms, at most [`MAX_BACKOFF`].
    pub(crate) fn backoff(&self) -> Duration {
        backoff(self.failures)
    }

    /// Waits [`Streak::backoff`] (at most `cap`), or less if the worker is stopping.
    pub(crate) async fn pause_at_most(&self, ctx: &Ctx, cap: Duration) {
        tokio::select! {
            () = ctx.stop.cancelled() => {}
            () = tokio::time::sleep(self.backoff().min(cap)) => {}
        }
    }

    /// Waits [`Streak::backoff`], or less if the worker is stopping.
    pub(crate) async fn pause(&self, ctx: &Ctx) {
        self.pause_at_most(ctx, MAX_BACKOFF).await;
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
