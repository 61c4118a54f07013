//! A worker that lost only its database (its role revoked, its sessions ended) while it held a
//! batch lets go after `LEDGER_HOLD_MS`: a healthy worker claims and confirms those orders,
//! instead of their buyers waiting as long as the cut-off worker lives.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use testkit::{Gateway, Postgres, RedisServer, Worker, metric_value, wait_drained, wait_until};

use crate::common::{FAST_WORKER, check_ledger, counter};

/// Entries of the event's stream pending with `consumer`.
async fn pending_with(redis: &RedisServer, event: &str, consumer: &str) -> u64 {
    let keys = flashsale_shared::EventKeys::new(&flashsale_shared::EventId::parse(event).unwrap());
    let mut conn = redis.conn().await;
    // The summary form: count, lowest id, highest id, then [consumer, count] pairs (nil when
    // nothing is pending, read as none).
    type Summary = (u64, Option<String>, Option<String>, Vec<(String, String)>);
    let (_, _, _, consumers): Summary = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg(flashsale_shared::keys::CONSUMER_GROUP)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    consumers.into_iter().find(|(name, _)| name == consumer).and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_lost_its_database_lets_a_healthy_one_confirm_its_batch() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    // The doomed worker logs in as its own role, which the test can take away alone.
    pg.psql("create role doomed login superuser");
    let doomed_url = pg.url().replacen("postgres://postgres@", "postgres://doomed@", 1);
    assert_ne!(doomed_url, pg.url(), "the URL names the role: {doomed_url}");
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    let knobs = [FAST_WORKER, &[("LEDGER_HOLD_MS", "2000"), ("DATABASE_TIMEOUT_MS", "500")]].concat();
    let doomed = Worker::start(&redis.url(), &doomed_url, "doomed", &knobs).await;
    api.create_event("drop", 100, 1).await;
    assert_eq!(api.purchase("drop", "early", 1, None).await.status, StatusCode::ACCEPTED);
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;

    // Its database role goes away: no new session, and the ones it had are ended.
    pg.psql("alter role doomed nologin");
    pg.psql("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'doomed'");
    for i in 0..20 {
        let reply = api.purchase("drop", &format!("buyer-{i}"), 1, None).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    }
    // It holds the batch it read (what arrived by then) and reads nothing more meanwhile.
    let held = wait_until(Duration::from_secs(10), "the doomed worker to hold a batch", || async {
        let held = pending_with(&redis, "drop", "doomed").await;
        (held > 0).then_some(held)
    })
    .await;
    wait_until(Duration::from_secs(10), "the doomed worker to see its ledger down", || async {
        (metric_value(&doomed.metrics().await, "flashsale_ledger_up", &[]) == Some(0.0)).then_some(())
    })
    .await;

    // A healthy worker arrives: it gets the held batch once the doomed one lets go
    // (LEDGER_HOLD_MS) and the entries have idled CLAIM_MIN_IDLE_MS.
    let healthy = Worker::start(&redis.url(), &pg.url(), "healthy", &knobs).await;
    let started = Instant::now();
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    eprintln!("the healthy worker confirmed the held batch {:?} after it started", started.elapsed());
    assert_eq!((books.units_confirmed, books.orders_failed, books.dead_letters), (21, 0, 0));
    assert_eq!(pending_with(&redis, "drop", "doomed").await, 0);
    let claimed = counter(&healthy.metrics().await, "flashsale_entries_claimed_total");
    assert!(claimed >= held as f64, "the healthy worker claimed the {held} held entries: {claimed}");
    assert_eq!(pg.psql("select count(*) from orders where event_id = 'drop' and status = 'confirmed'"), "21");
    check_ledger(&redis.url(), &pg.url(), "drop").await;

    // The cut-off worker reads nothing new meanwhile: later orders go to the healthy one.
    for i in 0..10 {
        assert_eq!(api.purchase("drop", &format!("late-{i}"), 1, None).await.status, StatusCode::ACCEPTED);
    }
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!(books.units_confirmed, 31);
    assert_eq!(pending_with(&redis, "drop", "doomed").await, 0);
    testkit::assert_books_balance(&redis.url(), "drop", true).await;
}
