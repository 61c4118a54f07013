//! An ended sale leaving Redis (issue 17, items 3 and 8): the ledger is marked before Redis
//! removes, so a crash between the steps loses nothing; a Redis restored from a snapshot taken
//! before the removal has the event removed again before anything sells; an event that left
//! without selling may be created again; and a PUT interrupted before the event is registered
//! for workers never leaves an event that sells while nobody consumes it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use testkit::{ADMIN_TOKEN, Api, Gateway, Postgres, RedisServer, Worker, wait_drained, wait_until};

use crate::common::{FAST_WORKER, check_ledger, crowd};

/// An RFC 3339 time `after` from now.
fn in_(after: Duration) -> String {
    (time::OffsetDateTime::now_utc() + after).format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn keys(event: &str) -> flashsale_shared::EventKeys {
    flashsale_shared::EventKeys::new(&flashsale_shared::EventId::parse(event).unwrap())
}

/// Whether any of the event's hash, orders or stream is in Redis.
async fn in_redis(redis: &RedisServer, event: &str) -> bool {
    let keys = keys(event);
    let mut conn = redis.conn().await;
    let held: i64 = redis::cmd("EXISTS")
        .arg(&keys.event)
        .arg(&keys.orders)
        .arg(&keys.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    held > 0
}

async fn registered(redis: &RedisServer, event: &str) -> bool {
    let mut conn = redis.conn().await;
    redis::cmd("SISMEMBER")
        .arg(flashsale_shared::keys::EVENTS)
        .arg(event)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn left_in_ledger(pg: &Postgres, event: &str) -> bool {
    pg.psql(&format!("select count(*) from events where event_id = '{event}' and left_redis_at is not null"))
        .trim()
        == "1"
}

async fn wait_left(redis: &RedisServer, pg: &Postgres, event: &str) {
    wait_until(Duration::from_secs(30), "the event to leave Redis, marked in the ledger", || async {
        (!in_redis(redis, event).await && left_in_ledger(pg, event)).then_some(())
    })
    .await;
}

async fn end(api: &Api, event: &str) {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let ended =
        api.send(Method::POST, &format!("/v1/events/{event}/end"), &[("authorization", &auth)], None).await;
    assert_eq!(ended.status, StatusCode::OK, "{ended:?}");
}

/// The ledger's answer for an event that left: ended, with its confirmed units.
async fn assert_answered_from_ledger(api: &Api, event: &str, confirmed: u64) {
    let reply = api.get_event(event).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        (reply.body["state"].as_str(), reply.body["confirmed"].as_u64()),
        (Some("ended"), Some(confirmed))
    );
}

/// A purchase on an event that left Redis is never accepted (404 `event_not_found`: Redis
/// no longer knows it, the purchase path never reads the ledger).
async fn assert_not_sold(api: &Api, event: &str, user: &str) {
    let reply = api.purchase(event, user, 1, None).await;
    assert!(
        reply.status == StatusCode::NOT_FOUND || reply.status == StatusCode::CONFLICT,
        "a sale that left Redis sold again: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_crashing_between_the_removal_and_the_next_step_keeps_the_ledgers_mark() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway =
        Gateway::start(&redis.url(), &[("IDEMPOTENCY_RETENTION_SECS", "1"), ("DATABASE_URL", &pg.url())])
            .await;
    let api = gateway.api();
    let crash = [FAST_WORKER, &[("FLASHSALE_FAILPOINT", "crash-after-redis-removal")]].concat();
    let mut doomed = Worker::start(&redis.url(), &pg.url(), "doomed", &crash).await;
    let created = api
        .put_event("short", serde_json::json!({"stock": 10, "ends_at": in_(Duration::from_secs(2))}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(crowd(std::slice::from_ref(&api), "short", 5, 5).await.count(202), 5);
    let status = doomed.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "the failpoint aborted the worker: {status:?}");
    assert!(!in_redis(&redis, "short").await, "the worker aborted after Redis removed the event");
    assert!(left_in_ledger(&pg, "short"), "the ledger knew before Redis removed it");

    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    assert_answered_from_ledger(&api, "short", 5).await;
    assert_not_sold(&api, "short", "late").await;
    api.put_event("short", serde_json::json!({"stock": 10})).await.assert_problem(409, "event_conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_crashing_after_the_ledgers_mark_is_finished_by_the_next() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway =
        Gateway::start(&redis.url(), &[("IDEMPOTENCY_RETENTION_SECS", "1"), ("DATABASE_URL", &pg.url())])
            .await;
    let api = gateway.api();
    let crash = [FAST_WORKER, &[("FLASHSALE_FAILPOINT", "crash-after-ledger-leave-mark")]].concat();
    let mut doomed = Worker::start(&redis.url(), &pg.url(), "doomed", &crash).await;
    let created = api
        .put_event("short", serde_json::json!({"stock": 10, "ends_at": in_(Duration::from_secs(2))}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(crowd(std::slice::from_ref(&api), "short", 5, 5).await.count(202), 5);
    let status = doomed.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "the failpoint aborted the worker: {status:?}");
    assert!(in_redis(&redis, "short").await && left_in_ledger(&pg, "short"), "marked, not removed yet");

    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    wait_left(&redis, &pg, "short").await;
    assert!(!registered(&redis, "short").await, "workers stop polling it");
    assert_answered_from_ledger(&api, "short", 5).await;
    assert_not_sold(&api, "short", "late").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restored_from_a_snapshot_taken_before_the_removal_never_sells_the_event_again() {
    let mut redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(
        &redis.url(),
        &[("IDEMPOTENCY_RETENTION_SECS", "1"), ("DATABASE_URL", &pg.url()), ("REDIS_TIMEOUT_MS", "300")],
    )
    .await;
    let api = gateway.api();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    // Two sales: "short" will leave Redis, "drop" stays and tells when selling resumes.
    api.create_event("short", 100, 1).await;
    api.create_event("drop", 100, 1).await;
    assert_eq!(crowd(std::slice::from_ref(&api), "short", 10, 5).await.count(202), 10);
    wait_drained(&redis.url(), "short", Duration::from_secs(20)).await;
    // The snapshot holds "short" live, 90 units left.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    // The operator ends it; past its retention it leaves Redis, the ledger marked.
    end(&api, "short").await;
    wait_left(&redis, &pg, "short").await;

    redis.kill();
    redis.restart();
    wait_until(Duration::from_secs(20), "sales to resume", || {
        let api = api.clone();
        async move {
            let reply = api.purchase("drop", "after-restart", 1, None).await;
            match reply.status {
                StatusCode::ACCEPTED => Some(()),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("unexpected {other}: {reply:?}"),
            }
        }
    })
    .await;
    // Before anything sold again, the copy the snapshot brought back was gone.
    assert!(!in_redis(&redis, "short").await, "the restored copy of a sale that left was removed");
    assert!(!registered(&redis, "short").await);
    for user in ["user-0", "late-1", "late-2"] {
        assert_not_sold(&api, "short", user).await;
    }
    assert_answered_from_ledger(&api, "short", 10).await;
    assert_eq!(pg.psql("select count(*) from orders where event_id = 'short'").trim(), "10");
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_left_without_selling_may_be_created_again() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway =
        Gateway::start(&redis.url(), &[("IDEMPOTENCY_RETENTION_SECS", "1"), ("DATABASE_URL", &pg.url())])
            .await;
    let api = gateway.api();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    let created = api
        .put_event("quiet", serde_json::json!({"stock": 10, "ends_at": in_(Duration::from_secs(1))}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    wait_left(&redis, &pg, "quiet").await;

    let again = api.put_event("quiet", serde_json::json!({"stock": 3})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.body["state"].as_str(), Some("live"), "{again:?}");
    let bought = crowd(std::slice::from_ref(&api), "quiet", 5, 5).await;
    assert_eq!((bought.count(202), bought.count(409)), (3, 2), "{:?}", bought.by_status);
    for order in bought.orders.values() {
        api.wait_order_status("quiet", order, "confirmed").await;
    }
    let books = wait_drained(&redis.url(), "quiet", Duration::from_secs(20)).await;
    assert_eq!(books.units_confirmed, 3);
    check_ledger(&redis.url(), &pg.url(), "quiet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_whose_registration_fails_leaves_no_event_that_sells_unconsumed() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    // The registration fails (the set is a string: WRONGTYPE), as a crash between the two
    // calls of a PUT would leave it.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SET")
        .arg(flashsale_shared::keys::EVENTS)
        .arg("broken")
        .query_async(&mut conn)
        .await
        .unwrap();
    let failed = api.put_event("drop", serde_json::json!({"stock": 5, "per_user_limit": 1})).await;
    assert!(!failed.status.is_success(), "{failed:?}");
    let _: () = redis::cmd("DEL").arg(flashsale_shared::keys::EVENTS).query_async(&mut conn).await.unwrap();
    // Whatever the interrupted PUT left must either not sell or be consumed.
    let early = api.purchase("drop", "early", 1, None).await;
    if early.status == StatusCode::ACCEPTED {
        let order = early.body["order_id"].as_str().unwrap();
        api.wait_order_status("drop", order, "confirmed").await;
    } else {
        early.assert_problem(404, "event_not_found");
    }
    // The PUT repeated registers it and every order is confirmed.
    let again = api.put_event("drop", serde_json::json!({"stock": 5, "per_user_limit": 1})).await;
    assert!(again.status.is_success(), "{again:?}");
    let bought = crowd(std::slice::from_ref(&api), "drop", 4, 4).await;
    assert_eq!(bought.count(202), 4, "{:?}", bought.by_status);
    for order in bought.orders.values() {
        api.wait_order_status("drop", order, "confirmed").await;
    }
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}
