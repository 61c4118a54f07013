//! The ledger (PostgreSQL) as the system of record: every order recorded once, before Redis
//! acknowledges it; a database that is down fails nothing; ended sales leave Redis and are
//! answered from the ledger.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use testkit::{Gateway, Postgres, RedisServer, Worker, metric_value, wait_drained, wait_until};

use crate::common::{FAST_WORKER, check_ledger, counter, crowd};

fn rows(pg: &Postgres, event: &str) -> Vec<String> {
    pg.psql(&format!("select order_id || ':' || status from orders where event_id = '{event}' order by 1"))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_crashing_between_the_ledger_commit_and_the_ack_records_each_order_once() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    // The worker aborts right after its first committed ledger write: rows in the ledger,
    // nothing acknowledged in Redis. (Started first: it must be up before the orders come.)
    let crash =
        [FAST_WORKER, &[("FLASHSALE_FAILPOINT", "crash-after-ledger-write"), ("BATCH_SIZE", "50")]].concat();
    let mut doomed = Worker::start(&redis.url(), &pg.url(), "doomed", &crash).await;
    api.create_event("drop", 300, 1).await;
    let outcome = crowd(std::slice::from_ref(&api), "drop", 300, 32).await;
    assert_eq!(outcome.count(202), 300);
    let status = doomed.wait_exit(Duration::from_secs(15)).await;
    assert!(!status.success(), "the failpoint aborted the worker: {status:?}");
    let written = rows(&pg, "drop").len();
    assert!(written > 0, "it had committed a batch");
    let books = testkit::assert_books_balance(&redis.url(), "drop", false).await;
    assert_eq!(books.units_confirmed, 0, "and acknowledged nothing");

    // Its successor (the same name: it finds the crashed batch in its own pending list)
    // redelivers that batch, whose write is a no-op, and records the rest.
    let knobs = [FAST_WORKER, &[("BATCH_SIZE", "50")]].concat();
    let _successor = Worker::start(&redis.url(), &pg.url(), "doomed", &knobs).await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!(books.units_confirmed, 300);
    let recorded = rows(&pg, "drop");
    assert_eq!(recorded.len(), 300, "one row per order, none twice");
    let held: HashSet<String> = outcome.orders.values().map(|o| format!("{o}:confirmed")).collect();
    assert_eq!(recorded.into_iter().collect::<HashSet<_>>(), held);
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_down_for_20_seconds_mid_sale_fails_nothing_and_drains_afterwards() {
    let redis = RedisServer::start();
    let mut pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    // Claims after one second: a worker that did not keep its held entries would lose them
    // to the other during the outage.
    let knobs = [FAST_WORKER, &[("CLAIM_MIN_IDLE_MS", "1000"), ("DATABASE_TIMEOUT_MS", "500")]].concat();
    let workers = [
        Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await,
        Worker::start(&redis.url(), &pg.url(), "worker-b", &knobs).await,
    ];
    api.create_event("drop", 600, 1).await;
    assert_eq!(crowd(std::slice::from_ref(&api), "drop", 100, 16).await.count(202), 100);
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;

    // The database goes away; the sale goes on (the purchase path never touches it).
    pg.stop();
    let down_at = Instant::now();
    let during = tokio::spawn({
        let api = api.clone();
        async move {
            let mut answers = Vec::new();
            for round in 0..10 {
                let users: Vec<String> = (0..50).map(|i| format!("late-{round}-{i}")).collect();
                for reply in
                    futures_util::future::join_all(users.iter().map(|u| api.purchase("drop", u, 1, None)))
                        .await
                {
                    answers.push(reply.status.as_u16());
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            answers
        }
    });
    wait_until(Duration::from_secs(10), "the workers to see the ledger down", || async {
        let metrics = workers[0].metrics().await;
        (metric_value(&metrics, "flashsale_ledger_up", &[]) == Some(0.0)).then_some(())
    })
    .await;
    let answers = during.await.unwrap();
    assert!(
        answers.iter().all(|s| *s == 202),
        "every purchase accepted while the ledger was down: {answers:?}"
    );
    let books = testkit::assert_books_balance(&redis.url(), "drop", false).await;
    assert_eq!(books.units_confirmed, 100, "nothing is confirmed that is not recorded");
    assert_eq!((books.orders_failed, books.dead_letters), (0, 0));
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down_at.elapsed())).await;

    pg.start_again();
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(60)).await;
    assert_eq!((books.units_confirmed, books.orders_failed, books.dead_letters), (600, 0, 0));
    assert_eq!(rows(&pg, "drop").len(), 600);
    for worker in &workers {
        let metrics = worker.metrics().await;
        assert_eq!(counter(&metrics, "flashsale_entries_claimed_total"), 0.0, "held entries were kept");
        assert!(counter(&metrics, "flashsale_ledger_errors_total") > 0.0);
    }
    wait_until(Duration::from_secs(10), "the ledger to be up and without drift", || async {
        let metrics = workers[1].metrics().await;
        (metric_value(&metrics, "flashsale_ledger_up", &[]) == Some(1.0)
            && metric_value(&metrics, "flashsale_ledger_drift_units", &[("event", "drop")]) == Some(0.0))
        .then_some(())
    })
    .await;
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_sale_leaves_redis_and_is_answered_from_the_ledger() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway =
        Gateway::start(&redis.url(), &[("IDEMPOTENCY_RETENTION_SECS", "1"), ("DATABASE_URL", &pg.url())])
            .await;
    let api = gateway.api();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    let ends = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let ends = ends.format(&time::format_description::well_known::Rfc3339).unwrap();
    let created = api.put_event("short", serde_json::json!({"stock": 10, "ends_at": ends})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let bought = crowd(std::slice::from_ref(&api), "short", 5, 5).await;
    assert_eq!(bought.count(202), 5);

    let mut conn = redis.conn().await;
    let keys = flashsale_shared::EventKeys::new(&flashsale_shared::EventId::parse("short").unwrap());
    wait_until(Duration::from_secs(20), "the event to leave Redis", || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            let left: i64 = redis::cmd("EXISTS")
                .arg(&keys.event)
                .arg(&keys.orders)
                .arg(&keys.stream)
                .query_async(&mut conn)
                .await
                .ok()?;
            (left == 0).then_some(())
        }
    })
    .await;
    let registered: bool = redis::cmd("SISMEMBER")
        .arg(flashsale_shared::keys::EVENTS)
        .arg("short")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!registered, "workers stop polling it");

    let event = api.get_event("short").await;
    assert_eq!(event.status, StatusCode::OK, "{event:?}");
    assert_eq!((event.body["state"].as_str(), event.body["confirmed"].as_u64()), (Some("ended"), Some(5)));
    for order in bought.orders.values() {
        let reply = api.get_order("short", order).await;
        assert_eq!(
            (reply.status, reply.body["status"].as_str()),
            (StatusCode::OK, Some("confirmed")),
            "{reply:?}"
        );
        assert!(reply.body["confirmed_at"].is_string());
    }
    api.get_order("short", "00000000-0000-4000-8000-000000000000")
        .await
        .assert_problem(404, "order_not_found");
    // Its id cannot be reused for a new sale.
    let again = api.put_event("short", serde_json::json!({"stock": 10})).await;
    again.assert_problem(409, "event_conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_short_sales_leave_redis_as_they_found_it() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[("IDEMPOTENCY_RETENTION_SECS", "1")]).await;
    let api = gateway.api();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    let mut conn = redis.conn().await;
    let info = |conn: redis::aio::MultiplexedConnection| async move {
        let mut conn = conn;
        let keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        let memory: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
        let used: i64 =
            memory.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
        (keys, used)
    };
    // One sale, one at a time, each a second and a half long with 30 buyers for 20 units; then
    // until Redis holds nothing of any of them.
    let sales = |range: std::ops::Range<usize>| {
        let api = api.clone();
        let conn = conn.clone();
        async move {
            for sale in range {
                let ends = time::OffsetDateTime::now_utc() + Duration::from_millis(1500);
                let ends = ends.format(&time::format_description::well_known::Rfc3339).unwrap();
                let event = format!("sale-{sale}");
                let created = api.put_event(&event, serde_json::json!({"stock": 20, "ends_at": ends})).await;
                assert_eq!(created.status, StatusCode::CREATED);
                assert_eq!(crowd(std::slice::from_ref(&api), &event, 30, 10).await.count(202), 20);
            }
            wait_until(Duration::from_secs(30), "every sale to leave Redis", || {
                let mut conn = conn.clone();
                async move {
                    let left: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(flashsale_shared::keys::EVENTS)
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    left.is_empty().then_some(())
                }
            })
            .await;
        }
    };
    // A first sale warms up what stays whatever the sales (scripts, connections, buffers).
    sales(0..1).await;
    let (keys_before, memory_before) = info(conn.clone()).await;
    sales(1..21).await;
    // The stream trims and UNLINK frees in the background: give the allocator a moment.
    let _: () = redis::cmd("MEMORY").arg("PURGE").query_async(&mut conn).await.unwrap_or(());
    let (keys_after, memory_after) = info(conn.clone()).await;
    println!(
        "Redis before: {keys_before} keys, {memory_before} B; after 20 sales: {keys_after} keys, {memory_after} B"
    );
    // The write probe is the only key the sales may leave (it expires within seconds).
    let left: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert!(keys_after <= keys_before + 1, "{keys_before} keys before, {keys_after} after: {left:?}");
    assert!(memory_after - memory_before < 200_000, "memory grew by {} B", memory_after - memory_before);
    assert_eq!(pg.psql("select count(*) from orders").trim(), "420");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_from_an_older_snapshot_is_reconciled_before_it_sells_again() {
    let mut redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[("REDIS_TIMEOUT_MS", "300")]).await;
    let api = gateway.api();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    api.create_event("drop", 300, 1).await;

    // 100 orders, recorded; a snapshot; 100 more, recorded. Then Redis dies and comes back
    // from the snapshot: it has forgotten the second hundred, which the ledger holds.
    let first = crowd(std::slice::from_ref(&api), "drop", 100, 16).await;
    assert_eq!(first.count(202), 100);
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let users: Vec<String> = (100..200).map(|i| format!("buyer-{i}")).collect();
    let mut second = std::collections::HashMap::new();
    for user in &users {
        let reply = api.purchase("drop", user, 1, None).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        second.insert(user.clone(), reply.body["order_id"].as_str().unwrap().to_owned());
    }
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    assert_eq!(rows(&pg, "drop").len(), 200);
    assert_eq!(pg.psql("select count(*) from events where event_id = 'drop'").trim(), "1");
    redis.kill();
    redis.restart();
    let back = Instant::now();

    // Until a worker has put the forgotten orders back, nothing sells; then sales resume.
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let sold_after = wait_until(Duration::from_secs(20), "sales to resume", || {
        let (api, refused) = (api.clone(), &refused);
        async move {
            let reply = api.purchase("drop", "after-restart", 1, None).await;
            match reply.status {
                StatusCode::ACCEPTED => Some(back.elapsed()),
                StatusCode::SERVICE_UNAVAILABLE => {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                other => panic!("unexpected {other}: {reply:?}"),
            }
        }
    })
    .await;
    println!("Redis back to selling again: {sold_after:?} ({refused:?} purchases refused meanwhile)");

    // Every buyer of the forgotten hundred retries and gets their order back, not a new one.
    for (user, order) in &second {
        let retry = api.purchase("drop", user, 1, None).await;
        assert_eq!(retry.status, StatusCode::OK, "{user} would have bought twice: {retry:?}");
        assert_eq!(retry.body["order_id"].as_str(), Some(order.as_str()));
    }
    // And the rest of the stock sells exactly: 300 - 200 - 1 left.
    // (crowd's buyer-0..399: the first 200 replay, the next 99 buy the 99 units left.)
    let rest = crowd(std::slice::from_ref(&api), "drop", 400, 32).await;
    assert_eq!((rest.count(200), rest.count(202), rest.count(409)), (200, 99, 101), "{:?}", rest.by_status);
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!((books.remaining, books.units_confirmed, books.accepted_counter), (0, 300, 300), "{books:?}");
    assert_eq!(rows(&pg, "drop").len(), 300, "never more orders than units");
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_id_the_ledger_already_has_for_another_order_is_parked_not_skipped() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 5, 1).await;
    let order = api.purchase("drop", "alice", 1, None).await.body["order_id"].as_str().unwrap().to_owned();
    let other = api.purchase("drop", "bob", 1, None).await.body["order_id"].as_str().unwrap().to_owned();
    // The ledger already holds that order id for someone else (a restore gone wrong, say).
    let (status, out) = testkit::run_to_exit(
        "flashsale-worker",
        &[("REDIS_URL", &redis.url()), ("DATABASE_URL", &pg.url())],
        &["migrate"],
        Duration::from_secs(20),
    )
    .await;
    assert!(status.success(), "{out}");
    pg.psql(&format!(
        "insert into orders (order_id, event_id, user_id, quantity, status, created_at, scope)
         values ('{order}', 'elsewhere', 'mallory', 1, 'confirmed', now(), 'mallory')"
    ));
    let knobs = [FAST_WORKER, &[("MAX_DELIVERIES", "1")]].concat();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await;
    api.wait_order_status("drop", &other, "confirmed").await;
    let letters = wait_until(Duration::from_secs(15), "the conflicting entry to be parked", || async {
        let mut conn = redis.conn().await;
        let keys = flashsale_shared::EventKeys::new(&flashsale_shared::EventId::parse("drop").unwrap());
        let letters = flashsale_shared::dead_letter::list(&mut conn, &keys, None, 10).await.ok()?;
        (letters.len() == 1).then_some(letters)
    })
    .await;
    assert_eq!(letters[0].order_id.as_deref(), Some(order.as_str()));
    assert!(letters[0].is_parked(), "{letters:?}");
    assert!(letters[0].error.as_deref().unwrap_or("").contains("another order"), "{letters:?}");
    assert_eq!(api.get_order("drop", &order).await.body["status"], "pending", "never confirmed unrecorded");
    assert_eq!(pg.psql(&format!("select user_id from orders where order_id = '{order}'")).trim(), "mallory");
}
