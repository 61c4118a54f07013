//! What `/readyz` answers, checked at most once per [`MAX_AGE`] per gateway however many
//! callers ask ([`Readiness`]), and what the cold reads recently found missing
//! ([`RecentMisses`]).
//!
//! `/readyz` is public, and one check costs Redis `INFO`, a probe write and `SCRIPT EXISTS`:
//! 16 clients made 16k calls in 4 s and cost Redis 64k commands. Cached, a flood costs one
//! check a second. Unknown event and order ids fall back from Redis to the ledger; without
//! [`RecentMisses`] every such unauthenticated request was a PostgreSQL query.
//!
//! Time is passed in (`now`), so the logic is tested without sleeping.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{ApiError, Unavailable};

/// How old an answer of `/readyz` may be: probes poll every few seconds, and a gateway that
/// just saw Redis fail does not wait this long (see [`Readiness::distrust`]).
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// What a check of readiness found, kept to answer the next callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    /// A 503 (Redis unavailable, fenced, a replica, an unsafe eviction policy).
    Unavailable {
        why: Unavailable,
        cause: String,
    },
    /// A reply not understood (a 500).
    Broken(String),
}

impl Verdict {
    pub fn of(result: Result<(), ApiError>) -> Self {
        match result {
            Ok(()) => Self::Ready,
            Err(ApiError::Unavailable { why, cause, .. }) => Self::Unavailable { why, cause },
            Err(other) => Self::Broken(other.to_string()),
        }
    }

    pub fn into_result(self) -> Result<(), ApiError> {
        match self {
            Self::Ready => Ok(()),
            // A read: nothing the caller asked for was written, so never an unknown outcome.
            Self::Unavailable { why, cause } => {
                Err(ApiError::Unavailable { why, outcome_unknown: false, cause })
            }
            Self::Broken(cause) => Err(ApiError::Internal(cause)),
        }
    }
}

/// A single-flight cache of the readiness check: the first caller after [`MAX_AGE`] runs the
/// check while the others wait for its verdict, so a flood costs Redis one check per interval.
#[derive(Debug)]
pub struct Readiness {
    max_age: Duration,
    /// The last verdict and when its check started. The lock is held during a check: the
    /// callers that arrive meanwhile wait for it rather than checking too.
    last: tokio::sync::Mutex<Option<(Instant, Verdict)>>,
    /// Set when a request saw Redis fail: a cached `Ready` is not trusted after that.
    distrusted: AtomicBool,
    /// Set when a purchase script answered (Redis is a writable, reconciled primary the
    /// gateway may sell on): a cached failure is not trusted after that, so a recovery shows
    /// at once rather than up to `max_age` later.
    vouched: AtomicBool,
}

impl Readiness {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            last: tokio::sync::Mutex::new(None),
            distrusted: AtomicBool::new(false),
            vouched: AtomicBool::new(false),
        }
    }

    /// The verdict of a check started at most `max_age` before `now` (a failure is believed
    /// for that long; a `Ready` only while no request saw Redis fail since), or of `check` run
    /// now.
    pub async fn get<F, Fut>(&self, now: Instant, check: F) -> Verdict
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Verdict>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = &*last {
            // A caller that waited for another's check may hold a `now` older than `at`.
            let young = now.saturating_duration_since(*at) < self.max_age;
            let trusted = match verdict {
                Verdict::Ready => !self.distrusted.load(Ordering::Acquire),
                _ => !self.vouched.load(Ordering::Acquire),
            };
            if young && trusted {
                return verdict.clone();
            }
        }
        // Cleared before the check: what is seen during it counts against its verdict.
        self.distrusted.store(false, Ordering::Release);
        self.vouched.store(false, Ordering::Release);
        let verdict = check().await;
        *last = Some((now, verdict.clone()));
        verdict
    }

    /// A request saw Redis fail: the next `/readyz` checks again if the last verdict was ready.
    pub fn distrust(&self) {
        self.distrusted.store(true, Ordering::Release);
    }

    /// A purchase script answered: the next `/readyz` checks again if the last verdict was a
    /// failure. Called on the purchase path, so it writes only when the flag is not set yet
    /// (a load is cheap where a store on every purchase would bounce the cache line).
    pub fn vouch(&self) {
        if !self.vouched.load(Ordering::Relaxed) {
            self.vouched.store(true, Ordering::Release);
        }
    }
}

/// Keys a cold read recently found in neither Redis nor the ledger, remembered for `ttl`, at
/// most `capacity` of them (past that, new misses are not remembered until old ones expire:
/// memory stays bounded under a flood of random ids, whose reads the ledger's pool bounds).
#[derive(Debug)]
pub struct RecentMisses<K> {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Misses<K>>,
}

#[derive(Debug)]
struct Misses<K> {
    at: HashMap<K, Instant>,
    /// When expired keys were last dropped: at most once per `ttl`, so a full map under a
    /// flood is not scanned on every miss.
    swept: Option<Instant>,
}

/// How long a miss is remembered: a second spares the database a flood's repeats, and an id
/// that appears meanwhile (an event leaving Redis for the ledger) is answered at most this
/// much later.
pub const MISS_TTL: Duration = Duration::from_secs(1);
/// Most misses remembered per kind (events, orders): about a megabyte.
pub const MISS_CAPACITY: usize = 10_000;

impl<K: Hash + Eq> RecentMisses<K> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, capacity, inner: Mutex::new(Misses { at: HashMap::new(), swept: None }) }
    }

    /// Whether `key` was found missing less than `ttl` before `now`.
    pub fn contains(&self, key: &K, now: Instant) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.at.get(key).is_some_and(|at| now.saturating_duration_since(*at) < self.ttl)
    }

    /// Remembers that `key` was missing at `now`.
    pub fn insert(&self, key: K, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.at.len() >= self.capacity
            && inner.swept.is_none_or(|s| now.saturating_duration_since(s) >= self.ttl)
        {
            let ttl = self.ttl;
            inner.at.retain(|_, at| now.saturating_duration_since(*at) < ttl);
            inner.swept = Some(now);
        }
        if inner.at.len() < self.capacity || inner.at.contains_key(&key) {
            inner.at.insert(key, now);
        }
    }

    /// How many keys are remembered (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn unavailable() -> Verdict {
        Verdict::Unavailable { why: Unavailable::Refused, cause: "down".into() }
    }

    /// A check that counts its runs and answers `verdict`.
    async fn counted(runs: &AtomicUsize, verdict: Verdict) -> Verdict {
        runs.fetch_add(1, Ordering::SeqCst);
        verdict
    }

    #[tokio::test]
    async fn a_verdict_is_reused_for_max_age_then_checked_again() {
        let (readiness, runs, t0) = (Readiness::new(MAX_AGE), AtomicUsize::new(0), Instant::now());
        for ms in [0, 1, 500, 999] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(readiness.get(now, || counted(&runs, Verdict::Ready)).await, Verdict::Ready);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(readiness.get(later, || counted(&runs, unavailable())).await, unavailable());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // A failure is believed for max_age too.
        let soon = later + Duration::from_millis(300);
        assert_eq!(readiness.get(soon, || counted(&runs, Verdict::Ready)).await, unavailable());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_check() {
        let readiness = Arc::new(Readiness::new(MAX_AGE));
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let now = Instant::now();
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (readiness, runs, mut gate) = (readiness.clone(), runs.clone(), gate.clone());
                tokio::spawn(async move {
                    readiness
                        .get(now, || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            // Held until every caller is queued behind this check.
                            let _ = gate.wait_for(|open| *open).await;
                            Verdict::Ready
                        })
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Verdict::Ready);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_ready_verdict_is_checked_again_once_a_request_saw_redis_fail() {
        let (readiness, runs, t0) = (Readiness::new(MAX_AGE), AtomicUsize::new(0), Instant::now());
        readiness.get(t0, || counted(&runs, Verdict::Ready)).await;
        readiness.distrust();
        let now = t0 + Duration::from_millis(10);
        assert_eq!(readiness.get(now, || counted(&runs, unavailable())).await, unavailable());
        // A failure verdict is kept even if more requests fail: a flood during an outage
        // still costs one check per interval.
        readiness.distrust();
        readiness.get(now, || counted(&runs, Verdict::Ready)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failure_verdict_is_checked_again_once_a_purchase_went_through() {
        let (readiness, runs, t0) = (Readiness::new(MAX_AGE), AtomicUsize::new(0), Instant::now());
        readiness.get(t0, || counted(&runs, unavailable())).await;
        // Purchases vouching for Redis do not make a ready verdict be checked again.
        readiness.vouch();
        let now = t0 + Duration::from_millis(10);
        assert_eq!(readiness.get(now, || counted(&runs, Verdict::Ready)).await, Verdict::Ready);
        readiness.vouch();
        assert_eq!(readiness.get(now, || counted(&runs, unavailable())).await, Verdict::Ready);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn verdicts_replay_as_the_same_problem() {
        let verdict = Verdict::of(Err(ApiError::Unavailable {
            why: Unavailable::Reconciling,
            outcome_unknown: false,
            cause: "fenced".into(),
        }));
        assert!(matches!(
            verdict.into_result(),
            Err(ApiError::Unavailable { why: Unavailable::Reconciling, outcome_unknown: false, .. })
        ));
        assert!(Verdict::of(Ok(())).into_result().is_ok());
    }

    #[test]
    fn a_miss_is_remembered_for_its_ttl() {
        let (misses, t0) = (RecentMisses::new(MISS_TTL, 10), Instant::now());
        misses.insert("ghost", t0);
        assert!(misses.contains(&"ghost", t0 + Duration::from_millis(999)));
        assert!(!misses.contains(&"ghost", t0 + MISS_TTL));
        assert!(!misses.contains(&"other", t0));
    }

    #[test]
    fn misses_stay_within_capacity_and_expired_ones_make_room() {
        let (misses, t0) = (RecentMisses::new(MISS_TTL, 3), Instant::now());
        for key in 0..10 {
            misses.insert(key, t0);
        }
        assert_eq!(misses.len(), 3, "bounded");
        assert!(!misses.contains(&9, t0), "a miss past capacity is not remembered");
        let later = t0 + MISS_TTL;
        misses.insert(42, later);
        assert!(misses.contains(&42, later), "expired misses were dropped to make room");
        assert_eq!(misses.len(), 1);
        // Full again with fresh keys: nothing is scanned or evicted until a ttl has passed.
        for key in 100..110 {
            misses.insert(key, later);
        }
        assert_eq!(misses.len(), 3);
    }
}
