//! The worker against a real private Redis, driven in-process: redelivery, discovery,
//! restart recovery, trimming. (Crashes and signals are in testkit's system tests.)

use std::time::Duration;

use flashsale_shared::config::RedisArgs;
use flashsale_shared::keys::CONSUMER_GROUP;
use flashsale_shared::purchase::{self, PurchaseOutcome};
use flashsale_shared::stream::{self, EntryOutcome};
use flashsale_shared::{EventId, EventKeys, OrderId, UserId, event};
use redis::aio::MultiplexedConnection;
use testkit::{RedisServer, metric_value, wait_drained, wait_until};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Running {
    metrics: String,
    stop: CancellationToken,
    /// The worker's private ledger, stopped with it.
    _ledger: testkit::Postgres,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Running {
    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(&self.metrics).await.unwrap().text().await.unwrap();
        metric_value(&text, name, &[]).unwrap_or_else(|| panic!("{name} missing"))
    }
}

async fn start_worker(
    redis: &RedisServer,
    name: &str,
    adjust: impl FnOnce(&mut flashsale_worker::Config),
) -> Running {
    let ledger = testkit::Postgres::start();
    let mut config = flashsale_worker::Config::new(
        RedisArgs::new(&redis.url()).unwrap(),
        flashsale_ledger::LedgerArgs::new(&ledger.url()).unwrap(),
    );
    config.consumer_name = Some(name.into());
    config.block_ms = 50;
    config.discovery_interval_ms = 50;
    config.trim_interval_ms = 100;
    adjust(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = format!("http://{}/metrics", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(flashsale_worker::run(config, listener, stop.clone().cancelled_owned()));
    Running { metrics, stop, _ledger: ledger }
}

async fn create_event(conn: &mut MultiplexedConnection, id: &str, stock: u64) -> (EventId, EventKeys) {
    let id = EventId::parse(id).unwrap();
    let config =
        event::EventConfig { stock, per_user_limit: 1, name: None, starts_at_ms: None, ends_at_ms: None };
    event::put(conn, &id, &config, Duration::from_secs(60)).await.unwrap();
    let keys = EventKeys::new(&id);
    (id, keys)
}

/// Entries to finalize known by id only (the script reads them), as for own pending ones.
fn by_id(ids: &[String]) -> Vec<stream::ToFinalize<'_>> {
    ids.iter().map(|id| stream::ToFinalize::by_id(id)).collect()
}

/// Delivers up to `count` new entries to `consumer` (as a worker's read would) and returns
/// their ids, leaving them pending. Creates the group first if no worker did yet.
async fn deliver(
    conn: &mut MultiplexedConnection,
    keys: &EventKeys,
    consumer: &str,
    count: usize,
) -> Vec<String> {
    stream::ensure_group(conn, keys).await.unwrap();
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(CONSUMER_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(&keys.stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
    reply.keys.into_iter().flat_map(|k| k.ids).map(|e| e.id).collect()
}

/// Adds a second stream entry naming an existing order (a replayed producer, a restore).
async fn enqueue_again(conn: &mut MultiplexedConnection, keys: &EventKeys, order: OrderId) {
    let _: String = redis::cmd("XADD")
        .arg(&keys.stream)
        .arg("*")
        .arg("order")
        .arg(order.to_string())
        .query_async(conn)
        .await
        .unwrap();
}

async fn buy(conn: &mut MultiplexedConnection, keys: &EventKeys, user: &str) -> OrderId {
    let user = UserId::parse(user).unwrap();
    let scope = purchase::scope(&user, None);
    match purchase::purchase(conn, keys, &scope, &user, 1, OrderId::random()).await.unwrap() {
        PurchaseOutcome::Accepted { order_id, .. } => order_id,
        other => panic!("purchase not accepted: {other:?}"),
    }
}

#[tokio::test]
async fn a_redelivered_entry_of_a_confirmed_order_is_a_no_op() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let (_, keys) = create_event(&mut conn, "drop", 5).await;
    let order = buy(&mut conn, &keys, "alice").await;
    buy(&mut conn, &keys, "bob").await;

    let worker = start_worker(&redis, "w1", |_| {}).await;
    wait_drained(&redis.url(), "drop", Duration::from_secs(10)).await;
    assert_eq!(worker.metric("flashsale_orders_finalized_total").await, 2.0);

    // The same order arrives again (a producer retry, a replayed stream): nothing changes.
    enqueue_again(&mut conn, &keys, order).await;
    wait_until(Duration::from_secs(5), "the duplicate to be handled", || async {
        (worker.metric("flashsale_entries_skipped_total").await == 1.0).then_some(())
    })
    .await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(5)).await;
    assert_eq!((books.confirmed_counter, books.units_confirmed), (2, 2));
    assert_eq!(worker.metric("flashsale_orders_finalized_total").await, 2.0);
}

#[tokio::test]
async fn finalizing_an_entry_twice_changes_nothing_the_second_time() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let (_, keys) = create_event(&mut conn, "drop", 5).await;
    let order = buy(&mut conn, &keys, "alice").await;
    let delivered = deliver(&mut conn, &keys, "manual", 100).await;
    let entry = delivered[0].clone();
    let first = stream::finalize(&mut conn, &keys, &by_id(std::slice::from_ref(&entry)), 5).await.unwrap();
    let second = stream::finalize(&mut conn, &keys, &by_id(std::slice::from_ref(&entry)), 5).await.unwrap();
    assert_eq!(
        (first[0].outcome.clone(), second[0].outcome.clone()),
        (EntryOutcome::Confirmed, EntryOutcome::Skipped)
    );

    // A second entry naming the same (now confirmed) order is acknowledged without counting.
    enqueue_again(&mut conn, &keys, order).await;
    let again = deliver(&mut conn, &keys, "manual", 100).await;
    let duplicate = stream::finalize(&mut conn, &keys, &by_id(&again[..1]), 5).await.unwrap();
    assert_eq!(duplicate[0].outcome, EntryOutcome::Duplicate);
    let books = testkit::assert_books_balance(&redis.url(), "drop", true).await;
    assert_eq!((books.confirmed_counter, books.units_confirmed), (1, 1));
}

#[tokio::test]
async fn a_new_event_is_consumed_without_a_restart() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let worker = start_worker(&redis, "w1", |_| {}).await;
    let (_, keys) = create_event(&mut conn, "late-event", 3).await;
    buy(&mut conn, &keys, "alice").await;
    let books = wait_drained(&redis.url(), "late-event", Duration::from_secs(10)).await;
    assert_eq!(books.units_confirmed, 1);
    assert_eq!(worker.metric("flashsale_orders_finalized_total").await, 1.0);
}

#[tokio::test]
async fn a_new_event_does_not_wait_for_a_read_in_progress() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    create_event(&mut conn, "quiet", 3).await;
    // Long blocking reads on the quiet event's stream...
    let _worker = start_worker(&redis, "w1", |c| c.block_ms = 5_000).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let the first long read start
    let (_, keys) = create_event(&mut conn, "busy", 3).await;
    buy(&mut conn, &keys, "alice").await;
    // ... yet the new event's first order is confirmed long before that read would end.
    let started = std::time::Instant::now();
    wait_drained(&redis.url(), "busy", Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_millis(2_000), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_restarted_worker_finishes_its_own_pending_entries_first() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let (_, keys) = create_event(&mut conn, "drop", 10).await;
    for i in 0..10 {
        buy(&mut conn, &keys, &format!("user-{i}")).await;
    }
    // "w1" read everything and died before finishing anything.
    deliver(&mut conn, &keys, "w1", 100).await;

    // Back under the same name, with claims far off: its own pending list is read first.
    let worker = start_worker(&redis, "w1", |c| c.claim_min_idle_ms = 3_600_000).await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(10)).await;
    assert_eq!(books.units_confirmed, 10);
    assert_eq!(worker.metric("flashsale_entries_claimed_total").await, 0.0, "nothing needed a claim");
}

#[tokio::test]
async fn trimming_drops_acknowledged_history_and_keeps_anything_pending() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    let (_, keys) = create_event(&mut conn, "drop", 100).await;
    for i in 0..21 {
        buy(&mut conn, &keys, &format!("early-{i}")).await;
    }
    // A consumer that finished the first 20 entries and holds the 21st forever.
    let ids = deliver(&mut conn, &keys, "stuck", 21).await;
    stream::finalize(&mut conn, &keys, &by_id(&ids[..20]), 5).await.unwrap();
    for i in 0..50 {
        buy(&mut conn, &keys, &format!("user-{i}")).await;
    }
    let worker = start_worker(&redis, "w1", |c| c.claim_min_idle_ms = 3_600_000).await;
    wait_until(Duration::from_secs(10), "the 50 confirmed and their history trimmed", || async {
        let trimmed = worker.metric("flashsale_stream_trimmed_total").await;
        let confirmed = worker.metric("flashsale_orders_finalized_total").await;
        (trimmed >= 20.0 && confirmed == 50.0).then_some(())
    })
    .await;
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(&keys.stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    assert!(!entries.is_empty(), "the held entry must survive trimming");
    let pending: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg(CONSUMER_GROUP)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, ids[20]);
    assert_eq!(entries[0].0, ids[20], "everything below the oldest pending entry went, nothing above it");
    assert_eq!(entries.len(), 51, "the held entry and the 50 later ones are still there");
    assert_eq!(worker.metric("flashsale_stream_trimmed_total").await, 20.0);
    let books = testkit::assert_books_balance(&redis.url(), "drop", false).await;
    assert_eq!((books.units_confirmed, books.units_pending), (70, 1));
}

#[tokio::test]
async fn every_worker_series_exists_from_start_up() {
    let redis = RedisServer::start();
    let worker = start_worker(&redis, "w1", |_| {}).await;
    for name in [
        "flashsale_orders_finalized_total",
        "flashsale_finalize_failures_total",
        "flashsale_events_purged_total",
        "flashsale_stream_pending",
        "flashsale_stream_backlog",
        "flashsale_finalize_lag_seconds_count",
    ] {
        assert_eq!(worker.metric(name).await, 0.0, "{name}");
    }
    let text = wait_until(Duration::from_secs(10), "the first stats tick", || async {
        let text = reqwest::get(&worker.metrics).await.ok()?.text().await.ok()?;
        text.contains("flashsale_build_info{").then_some(text)
    })
    .await;
    for reason in flashsale_shared::dead_letter::REASONS {
        let value = metric_value(&text, "flashsale_orders_dead_lettered_total", &[("reason", reason)]);
        assert_eq!(value, Some(0.0), "dead letters with reason {reason}");
    }
}
