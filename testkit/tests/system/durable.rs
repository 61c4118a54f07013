//! The ledger holds the whole sale: an operator's end or pause and a configuration replaced
//! before the first sale are recorded once acknowledged, and come back after Redis restarted
//! empty, so no restart reopens or resizes a sale.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use testkit::{ADMIN_TOKEN, Api, Gateway, Postgres, RedisServer, Reply, Worker, wait_drained, wait_until};

use crate::common::{FAST_WORKER, check_ledger, crowd};

async fn admin(api: &Api, method: Method, path: &str) -> Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    api.send(method, path, &[("authorization", &auth)], None).await
}

/// Polls `sql` (one value) in the ledger until it reads `want`.
async fn wait_ledger(pg: &Postgres, sql: &str, want: &str) {
    wait_until(Duration::from_secs(10), &format!("the ledger to answer {want:?} to {sql}"), || async {
        (pg.try_psql(sql).ok()?.trim() == want).then_some(())
    })
    .await;
}

/// Units of the event's confirmed orders in the ledger.
fn ledger_units(pg: &Postgres, event: &str) -> u64 {
    pg.psql(&format!(
        "select coalesce(sum(quantity), 0) from orders where event_id = '{event}' and status = 'confirmed'"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// Kills Redis and starts it again with nothing (no persistence): every key is gone and sales
/// are fenced until a worker reconciled Redis with the ledger. Returns the first answer to a
/// purchase by `user` that is not 503, i.e. once the fence is lifted.
async fn restart_empty_then_buy(redis: &mut RedisServer, api: &Api, event: &str, user: &str) -> Reply {
    redis.kill();
    redis.restart();
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert!(keys.is_empty(), "Redis came back empty: {keys:?}");
    wait_until(Duration::from_secs(20), "the fence to lift after the restart", || async {
        let reply = api.purchase(event, user, 1, None).await;
        (reply.status != StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await
}

/// Starts a private Redis, ledger, gateway and worker (the gateway answers 503 quickly while
/// Redis is fenced or away).
async fn start() -> (RedisServer, Postgres, Gateway, Worker) {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[("REDIS_TIMEOUT_MS", "300")]).await;
    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    (redis, pg, gateway, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_sale_stays_ended_after_redis_restarted_empty() {
    let (mut redis, pg, gateway, _worker) = start().await;
    let api = gateway.api();
    api.create_event("drop", 10, 1).await;
    let bought = crowd(std::slice::from_ref(&api), "drop", 4, 4).await;
    assert_eq!(bought.count(202), 4);
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;

    // No ends_at: only the operator's end closes this sale.
    let ended = admin(&api, Method::POST, "/v1/events/drop/end").await;
    assert_eq!((ended.status, ended.body["state"].as_str()), (StatusCode::OK, Some("ended")), "{ended:?}");
    api.purchase("drop", "late", 1, None).await.assert_problem(409, "sale_not_active");
    // Acknowledged, and the worker caught up (well under a second).
    wait_ledger(&pg, "select state from events where event_id = 'drop'", "ended").await;

    let after = restart_empty_then_buy(&mut redis, &api, "drop", "after-restart").await;
    after.assert_problem(409, "sale_not_active");
    let event = api.get_event("drop").await;
    assert_eq!((event.status, event.body["state"].as_str()), (StatusCode::OK, Some("ended")), "{event:?}");
    // A buyer's retry still replays the order they hold.
    let replay = api.purchase("drop", "buyer-0", 1, None).await;
    assert_eq!(replay.status, StatusCode::OK, "{replay:?}");
    assert_eq!(replay.body["order_id"].as_str(), bought.orders.get("buyer-0").map(String::as_str));

    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    assert_eq!((books.units_confirmed, books.remaining), (4, 6), "{books:?}");
    testkit::assert_books_balance(&redis.url(), "drop", true).await;
    assert_eq!(ledger_units(&pg, "drop"), bought.orders.len() as u64);
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_sale_stays_paused_after_redis_restarted_empty_and_resumes() {
    let (mut redis, pg, gateway, _worker) = start().await;
    let api = gateway.api();
    api.create_event("drop", 10, 1).await;
    let first = crowd(std::slice::from_ref(&api), "drop", 3, 3).await;
    assert_eq!(first.count(202), 3);
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;

    let paused = admin(&api, Method::POST, "/v1/events/drop/pause").await;
    assert_eq!(
        (paused.status, paused.body["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{paused:?}"
    );
    wait_ledger(&pg, "select state from events where event_id = 'drop'", "paused").await;

    let after = restart_empty_then_buy(&mut redis, &api, "drop", "after-restart").await;
    after.assert_problem(409, "sale_paused");
    assert_eq!(api.get_event("drop").await.body["state"], "paused");

    // The operator resumes it: the rest of the stock sells, exactly.
    let resumed = admin(&api, Method::POST, "/v1/events/drop/resume").await;
    assert_eq!(
        (resumed.status, resumed.body["state"].as_str()),
        (StatusCode::OK, Some("live")),
        "{resumed:?}"
    );
    wait_ledger(&pg, "select coalesce(state, 'selling') from events where event_id = 'drop'", "selling")
        .await;
    let rest = crowd(std::slice::from_ref(&api), "drop", 30, 8).await;
    // buyer-0..2 replay their orders, 7 new buyers get the 7 units left.
    assert_eq!((rest.count(200), rest.count(202), rest.count(409)), (3, 7, 20), "{:?}", rest.by_status);

    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    assert_eq!((books.units_confirmed, books.remaining), (10, 0), "{books:?}");
    testkit::assert_books_balance(&redis.url(), "drop", true).await;
    assert_eq!(ledger_units(&pg, "drop"), rest.orders.len() as u64);
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_configuration_replaced_before_the_first_sale_is_the_one_that_comes_back() {
    let (mut redis, pg, gateway, _worker) = start().await;
    let api = gateway.api();
    api.create_event("drop", 100, 1).await;
    // The worker has recorded the first configuration.
    wait_ledger(&pg, "select stock from events where event_id = 'drop'", "100").await;
    let replaced = api.put_event("drop", serde_json::json!({"stock": 10, "per_user_limit": 1})).await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    let first = crowd(std::slice::from_ref(&api), "drop", 3, 3).await;
    assert_eq!(first.count(202), 3);
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    wait_ledger(&pg, "select count(*) from orders where event_id = 'drop'", "3").await;

    let probe = restart_empty_then_buy(&mut redis, &api, "drop", "after-restart").await;
    assert_eq!(probe.status, StatusCode::ACCEPTED, "{probe:?}");
    let event = api.get_event("drop").await;
    assert_eq!(event.body["stock"], 10, "{event:?}");
    // Many buyers: buyer-0..2 replay, and only 6 more units are left after the probe's.
    let rest = crowd(std::slice::from_ref(&api), "drop", 60, 16).await;
    assert_eq!((rest.count(200), rest.count(202), rest.count(409)), (3, 6, 51), "{:?}", rest.by_status);

    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    assert_eq!((books.units_confirmed, books.remaining), (10, 0), "{books:?}");
    testkit::assert_books_balance(&redis.url(), "drop", true).await;
    assert_eq!(ledger_units(&pg, "drop"), rest.orders.len() as u64 + 1);
    // The ledger's history shows the replacement: the first configuration, then the second.
    let history = pg.psql("select string_agg(stock::text, ',' order by version) from event_decisions");
    assert_eq!(history.trim(), "100,10");
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_back_from_a_snapshot_older_than_the_decisions_takes_the_ledgers() {
    let (mut redis, pg, gateway, _worker) = start().await;
    let api = gateway.api();
    api.create_event("drop", 100, 1).await;
    wait_ledger(&pg, "select stock from events where event_id = 'drop'", "100").await;
    // Redis's snapshot holds the first configuration, unsold and live; everything after it is
    // in the ledger only: the replacement, three orders, the end.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let replaced = api.put_event("drop", serde_json::json!({"stock": 10, "per_user_limit": 1})).await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    let bought = crowd(std::slice::from_ref(&api), "drop", 3, 3).await;
    assert_eq!(bought.count(202), 3);
    wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    let ended = admin(&api, Method::POST, "/v1/events/drop/end").await;
    assert_eq!(ended.status, StatusCode::OK, "{ended:?}");
    wait_ledger(&pg, "select state from events where event_id = 'drop'", "ended").await;

    redis.kill();
    redis.restart();
    let after = wait_until(Duration::from_secs(20), "the fence to lift after the restart", || async {
        let reply = api.purchase("drop", "after-restart", 1, None).await;
        (reply.status != StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await;
    after.assert_problem(409, "sale_not_active");
    let event = api.get_event("drop").await;
    assert_eq!(
        (event.body["state"].as_str(), event.body["stock"].as_u64(), event.body["remaining"].as_u64()),
        (Some("ended"), Some(10), Some(7)),
        "{event:?}"
    );
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    assert_eq!((books.units_confirmed, books.accepted_counter), (3, 3), "{books:?}");
    testkit::assert_books_balance(&redis.url(), "drop", true).await;
    assert_eq!(ledger_units(&pg, "drop"), bought.orders.len() as u64);
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}
