//! Rate limits, per buyer and per client address: GCRA ([`governor`]) over a store whose
//! size is capped, so no number of distinct keys can grow the gateway's memory.
//!
//! - **Per client address** (`CLIENT_RATE_PER_SEC`, `CLIENT_BURST`; off by default): checked
//!   first on every `/v1` route but the admin ones, before a token is verified, so a flood
//!   of forged tokens costs one hash lookup each. The address is the peer's, or, when the peer
//!   is in `TRUSTED_PROXIES`, the nearest `X-Forwarded-For` hop that is not a trusted proxy
//!   ([`client_addr`]); a header from any other peer is ignored. IPv6 addresses count per
//!   /64, the block one subscriber gets.
//! - **Per buyer** (`BUYER_RATE_PER_SEC`, `BUYER_BURST`): checked on purchases and order
//!   polls once the token is verified, by its `sub`. Replays count: a retry storm is limited
//!   like any other. With `BUYER_AUTH=none` there is no verified buyer, and no per-buyer
//!   limit: a `user_id` the client picks limits nothing (fresh ids are free), and the proxy
//!   that authenticates buyers is where their limit belongs.
//!
//! A refused request is `429 rate_limited` with `Retry-After` and changes nothing.
//!
//! Memory: each limiter's store ([`BoundedStore`]) holds at most `RATE_LIMIT_MAX_KEYS`
//! entries, in shards each with its share of the cap. Every second the limiter drops the
//! entries that are indistinguishable from a fresh one (GCRA state at or before now: the key
//! has its full burst back; governor's `retain_recent`). A key that finds its shard full
//! shares a single overflow entry with every other such key until room is made: a flood of
//! distinct keys is limited as one client, memory stays bounded, and no tracked key ever
//! loses its state (evicting one would hand it a fresh burst).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::HeaderMap;
use flashsale_shared::UserId;
use governor::clock::{Clock, MonotonicClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{Config, TrustedProxies};

/// Shards of a store: enough that two cores rarely contend for one lock.
const SHARDS: usize = 16;

/// How often stale entries are dropped.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// GCRA states by key, at most `cap` of them, plus the one overflow state.
#[derive(Debug)]
pub struct BoundedStore<K> {
    shards: Box<[Shard<K>]>,
    hasher: RandomState,
    overflow: Mutex<Option<Nanos>>,
    /// Requests charged to the overflow state (shared with the [`KeyedLimiter`]: governor
    /// gives no access to the store of a live limiter).
    overflowed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Shard<K> {
    states: Mutex<HashMap<K, Nanos>>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    /// A store of at most `cap` entries, the cap split over the shards to the entry.
    pub fn new(cap: usize, overflowed: Arc<AtomicU64>) -> Self {
        let shards = (0..SHARDS)
            .map(|n| Shard {
                states: Mutex::new(HashMap::new()),
                cap: cap / SHARDS + usize::from(n < cap % SHARDS),
            })
            .collect();
        Self { shards, hasher: RandomState::new(), overflow: Mutex::new(None), overflowed }
    }

    fn shard(&self, key: &K) -> &Shard<K> {
        &self.shards[(self.hasher.hash_one(key) % SHARDS as u64) as usize]
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = self.shard(key);
        let mut states = shard.states.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = states.get_mut(key) {
            let (outcome, next) = f(Some(*state))?;
            *state = next;
            return Ok(outcome);
        }
        if states.len() < shard.cap {
            let (outcome, next) = f(None)?;
            states.insert(key.clone(), next);
            return Ok(outcome);
        }
        drop(states);
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        let mut state = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        let (outcome, next) = f(*state)?;
        *state = Some(next);
        Ok(outcome)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in &self.shards {
            shard
                .states
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, state| *state > drop_below);
        }
        let mut overflow = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        if overflow.is_some_and(|state| state <= drop_below) {
            *overflow = None;
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.states.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One keyed limit: a rate, a burst, a bounded store.
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: RateLimiter<K, BoundedStore<K>, MonotonicClock>,
    overflowed: Arc<AtomicU64>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `None` when `rate` or `burst` is 0 (the limit is off).
    pub fn new(rate_per_sec: u32, burst: u32, max_keys: usize) -> Option<Self> {
        let quota = Quota::per_second(NonZeroU32::new(rate_per_sec)?).allow_burst(NonZeroU32::new(burst)?);
        let overflowed = Arc::new(AtomicU64::new(0));
        let store = BoundedStore::new(max_keys, overflowed.clone());
        Some(Self { limiter: RateLimiter::new(quota, store, MonotonicClock), overflowed })
    }

    /// `Err` with how long to wait when `key` is over its limit.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Drops the entries a fresh one would equal; returns how many there were before.
    pub fn sweep(&self) -> usize {
        let held = self.limiter.len();
        self.limiter.retain_recent();
        held
    }

    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Requests charged to the shared overflow entry so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// Both limits and the proxies whose forwarding headers are believed.
#[derive(Debug)]
pub struct RateLimits {
    buyer: Option<KeyedLimiter<UserId>>,
    client: Option<KeyedLimiter<IpAddr>>,
    trusted: TrustedProxies,
}

impl RateLimits {
    /// `verified_buyers`: whether buyers are verified (`BUYER_AUTH=jwt`); only then is there
    /// a per-buyer limit.
    pub fn new(config: &Config, verified_buyers: bool) -> Self {
        let max_keys = usize::try_from(config.rate_limit_max_keys).unwrap_or(usize::MAX);
        let buyer = verified_buyers
            .then(|| KeyedLimiter::new(config.buyer_rate_per_sec, config.buyer_burst, max_keys));
        Self {
            buyer: buyer.flatten(),
            client: KeyedLimiter::new(config.client_rate_per_sec, config.client_burst, max_keys),
            trusted: config.trusted_proxies.clone().unwrap_or_default(),
        }
    }

    pub fn buyer(&self) -> Option<&KeyedLimiter<UserId>> {
        self.buyer.as_ref()
    }

    pub fn client(&self) -> Option<&KeyedLimiter<IpAddr>> {
        self.client.as_ref()
    }

    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }
}

/// The client a request comes from: `peer` itself, unless `peer` is a trusted proxy; then
/// the `X-Forwarded-For` hops are read from the nearest (rightmost) on, skipping trusted
/// proxies, and the first other one is the client. A hop that does not parse ends the walk at
/// the last address known good; a chain of nothing but trusted proxies gives its farthest.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|value| value.to_str().unwrap_or("").rsplit(',').map(str::trim).collect::<Vec<_>>());
    for hop in hops {
        let Some(addr) = parse_hop(hop) else { break };
        client = addr;
        if !trusted.contains(addr) {
            break;
        }
    }
    client
}

/// `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let addr = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))?;
    Some(addr.to_canonical())
}

/// The key a client address is limited by: IPv4 as it is, IPv6 by its /64.
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
    }
}

/// Retry-After of a refusal: whole seconds, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(X_FORWARDED_FOR, value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let headers = xff(&["198.51.100.7"]);
        assert_eq!(client_addr(ip("203.0.113.9"), &headers, &trusted("")), ip("203.0.113.9"));
        assert_eq!(client_addr(ip("203.0.113.9"), &headers, &trusted("10.0.0.0/8")), ip("203.0.113.9"));
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let proxies = trusted("10.0.0.0/8, 192.168.1.1");
        // The client may put anything in front; the proxies append what they saw.
        let headers = xff(&["1.1.1.1, 198.51.100.7", "192.168.1.1"]);
        assert_eq!(client_addr(ip("10.1.2.3"), &headers, &proxies), ip("198.51.100.7"));
        assert_eq!(client_addr(ip("10.1.2.3"), &xff(&["[2001:db8::5]:443"]), &proxies), ip("2001:db8::5"));
        assert_eq!(
            client_addr(ip("::ffff:10.1.2.3"), &xff(&["198.51.100.7:9"]), &proxies),
            ip("198.51.100.7")
        );
        // Nothing forwarded: the proxy itself. Only proxies: the farthest. Garbage: stop.
        assert_eq!(client_addr(ip("10.1.2.3"), &HeaderMap::new(), &proxies), ip("10.1.2.3"));
        assert_eq!(client_addr(ip("10.1.2.3"), &xff(&["10.9.9.9, 192.168.1.1"]), &proxies), ip("10.9.9.9"));
        assert_eq!(client_addr(ip("10.1.2.3"), &xff(&["198.51.100.7, junk"]), &proxies), ip("10.1.2.3"));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("198.51.100.7")), ip("198.51.100.7"));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2_001)), 3);
    }

    #[test]
    fn a_full_store_holds_no_more_and_newcomers_share_one_state() {
        let limiter = KeyedLimiter::<u32>::new(1, 1, 1_000).unwrap();
        for key in 0..10_000 {
            let _ = limiter.check(&key);
        }
        assert_eq!(limiter.len(), 1_000, "every shard full, none over its share");
        assert_eq!(limiter.overflowed(), 9_000, "the others were charged to the shared state");
    }
}
