//! What the API accepts, the ledger holds; and what the ledger refuses (a constraint, a value
//! out of range) is the data's fault, never an outage: only the refused orders are held back
//! (parked with the database's reason after `MAX_DELIVERIES`), while the rest of their batch
//! and every other event flow on.

use std::time::Duration;

use flashsale_shared::EventKeys;
use reqwest::StatusCode;
use serde_json::json;
use testkit::{Gateway, Postgres, RedisServer, Worker, metric_value, wait_drained, wait_until};

use crate::common::{FAST_WORKER, plant_order};

fn keys(event: &str) -> EventKeys {
    EventKeys::new(&flashsale_shared::EventId::parse(event).unwrap())
}

/// Parks after two failed attempts, so a refusal is dead-lettered quickly.
const KNOBS: &[(&str, &str)] = &[("MAX_DELIVERIES", "2")];

fn confirmed(pg: &Postgres, event: &str) -> String {
    pg.psql(&format!("select count(*) from orders where event_id = '{event}' and status = 'confirmed'"))
}

/// The dead letters of one event: each entry's fields.
async fn dead_letters(redis: &RedisServer, event: &str) -> Vec<Vec<(String, String)>> {
    let mut conn = redis.conn().await;
    let dead: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(&keys(event).dead).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    dead.into_iter().map(|(_, fields)| fields).collect()
}

async fn wait_parked(redis: &RedisServer, event: &str, count: usize) -> Vec<Vec<(String, String)>> {
    wait_until(Duration::from_secs(30), "the refused entries parked", || async {
        let dead = dead_letters(redis, event).await;
        (dead.len() == count).then_some(dead)
    })
    .await
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_limit_and_stock_the_api_takes_are_sold_and_recorded() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    let created =
        api.put_event("wide", json!({"stock": 1_000_000_000, "per_user_limit": 2_147_483_647})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let bought = api.purchase("wide", "alice", 3, None).await;
    assert_eq!(bought.status, StatusCode::ACCEPTED, "{bought:?}");
    let order = bought.body["order_id"].as_str().unwrap().to_owned();
    api.wait_order_status("wide", &order, "confirmed").await;
    assert_eq!(
        pg.psql(&format!("select status || ':' || quantity from orders where order_id = '{order}'")),
        "confirmed:3"
    );
    assert_eq!(
        pg.psql("select stock || ':' || per_user_limit from events where event_id = 'wide'"),
        "1000000000:2147483647"
    );
    let books = wait_drained(&redis.url(), "wide", Duration::from_secs(20)).await;
    assert_eq!(books.units_confirmed, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_ledger_refuses_is_parked_with_its_reason_and_its_batch_goes_on() {
    // A pending record whose quantity (3 000 000 000) overflows the ledger's `integer`: written by
    // hand (no script writes one), beside real orders of the same batch and of another event.
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 10, 1).await;
    api.create_event("other", 10, 1).await;
    let mut conn = redis.conn().await;
    let keys = keys("drop");
    let huge = "00000000-0000-4000-8000-0000000000ee";
    plant_order(&mut conn, &keys, huge, "p|3000000000|1764064800000||mallory").await;
    for (event, user) in [("drop", "alice"), ("drop", "bob"), ("other", "carol")] {
        assert_eq!(api.purchase(event, user, 1, None).await.status, StatusCode::ACCEPTED);
    }

    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &[FAST_WORKER, KNOBS].concat()).await;
    let dead = wait_parked(&redis, "drop", 1).await;
    assert_eq!(field(&dead[0], "reason"), Some("max_attempts"));
    assert!(
        dead[0].iter().any(|(_, v)| v.contains("integer out of range")),
        "the database's reason is kept: {dead:?}"
    );
    let record: String = redis::cmd("HGET").arg(&keys.orders).arg(huge).query_async(&mut conn).await.unwrap();
    assert!(record.starts_with("p|"), "still pending, never confirmed: {record}");
    assert_eq!(pg.psql(&format!("select count(*) from orders where order_id = '{huge}'")), "0");
    // The rest of its batch, and the other event, were recorded and confirmed.
    assert_eq!(confirmed(&pg, "drop"), "2");
    wait_until(Duration::from_secs(20), "the other event's order confirmed", || async {
        (confirmed(&pg, "other") == "1").then_some(())
    })
    .await;
    let metrics = worker.metrics().await;
    assert!(
        metric_value(&metrics, "flashsale_ledger_refusals_total", &[("what", "order")]).unwrap_or(0.0) >= 2.0
    );
    assert_eq!(metric_value(&metrics, "flashsale_ledger_up", &[]), Some(1.0), "a refusal is not an outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_row_the_ledger_refuses_parks_its_orders_and_wedges_nothing() {
    // A legacy event whose per_user_limit (4 294 967 295) the ledger's `integer` cannot hold:
    // the gateway no longer takes one, so it is set in Redis by hand.
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("legacy", 10, 1).await;
    api.create_event("other", 10, 1).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(&keys("legacy").event)
        .arg("limit")
        .arg("4294967295")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(api.purchase("legacy", "alice", 2, None).await.status, StatusCode::ACCEPTED);

    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &[FAST_WORKER, KNOBS].concat()).await;
    let dead = wait_parked(&redis, "legacy", 1).await;
    assert_eq!(field(&dead[0], "reason"), Some("max_attempts"));
    assert!(
        dead[0].iter().any(|(_, v)| v.contains("configuration") && v.contains("per_user_limit")),
        "the reason names the event's row: {dead:?}"
    );
    // Other events flow, before and after.
    assert_eq!(api.purchase("other", "bob", 1, None).await.status, StatusCode::ACCEPTED);
    wait_until(Duration::from_secs(20), "the other event's order confirmed", || async {
        (confirmed(&pg, "other") == "1").then_some(())
    })
    .await;
    let metrics = worker.metrics().await;
    assert!(
        metric_value(&metrics, "flashsale_ledger_refusals_total", &[("what", "event")]).unwrap_or(0.0) >= 1.0
    );
    assert_eq!(metric_value(&metrics, "flashsale_ledger_up", &[]), Some(1.0), "a refusal is not an outage");
}
