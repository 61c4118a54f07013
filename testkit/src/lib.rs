//! Test support for flashsale. Real parts only: every test gets its own `redis-server` (and
//! PostgreSQL, when it needs one) on a free loopback port (never the machine's 6379 or 5432),
//! and multi-process tests run the real `flashsale-api` and `flashsale-worker` binaries.
//!
//! - [`RedisServer`]: a private Redis that can be killed and restarted on the same port and
//!   directory (for durability tests).
//! - [`RedisCluster`]: a private six-node Redis Cluster (three primaries, three replicas) with
//!   failover, kill, restart and slot-migration helpers.
//! - [`Postgres`]: a private PostgreSQL (`initdb` on a free port, database `flashsale`) that
//!   can be stopped, restarted, killed and paused, with [`Postgres::psql`] to inspect rows.
//! - [`Gateway`], [`Worker`]: the binaries as child processes, with signals.
//! - [`Api`]: a small HTTP client for the routes, returning status, headers and JSON.
//! - [`assert_books_balance`]: the invariant every fault test ends with.
//! - [`wait_until`]: polling with a deadline, instead of sleeping.

mod api;
mod postgres;
mod process;
mod redis_cluster;
mod redis_server;

use std::future::Future;
use std::time::{Duration, Instant};

pub use api::{Api, Reply, metric_value};
pub use postgres::Postgres;
pub use process::{Gateway, Worker, binary, free_port, run_to_exit};
pub use redis_cluster::{ClusterNode, RedisCluster, SLOTS};
pub use redis_server::{Durability, RedisServer};

/// A token long enough for the gateway's start-up validation.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the books-balance invariant of `event` (see `flashsale_shared::audit`), and with
/// `drained` that nothing is left for the worker. Returns the snapshot for further checks.
pub async fn assert_books_balance(
    redis_url: &str,
    event: &str,
    drained: bool,
) -> flashsale_shared::audit::Audit {
    let client = redis::Client::open(redis_url).expect("valid Redis URL");
    let mut conn = client.get_multiplexed_async_connection().await.expect("Redis reachable");
    let event = flashsale_shared::EventId::parse(event).expect("valid event id");
    let audit =
        flashsale_shared::audit::audit(&mut conn, &event).await.expect("audit runs").expect("event exists");
    let violations = audit.violations(drained);
    assert!(violations.is_empty(), "books of {event} do not balance: {violations:?}\n{audit:#?}");
    audit
}

/// Waits until the worker(s) drained `event`: no pending order, nothing unacknowledged.
pub async fn wait_drained(redis_url: &str, event: &str, timeout: Duration) -> flashsale_shared::audit::Audit {
    let client = redis::Client::open(redis_url).expect("valid Redis URL");
    let event_id = flashsale_shared::EventId::parse(event).expect("valid event id");
    wait_until(timeout, &format!("workers to drain {event}"), || {
        let client = client.clone();
        let event_id = event_id.clone();
        async move {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let audit = flashsale_shared::audit::audit(&mut conn, &event_id).await.ok()??;
            audit.violations(true).is_empty().then_some(audit)
        }
    })
    .await
}
