//! Parked orders (an entry that failed `MAX_DELIVERIES` times) wait for an operator, in Redis
//! and in the ledger alike: the ledger records them `parked`, never `confirmed` (merchants
//! ship from it), a Redis restart keeps them pending with their units held, and only the
//! operator's `fail` (units back, recorded `failed`) or redrive (recorded `confirmed`) decides.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use testkit::{
    ADMIN_TOKEN, Api, Durability, Gateway, Postgres, RedisServer, Worker, wait_drained, wait_until,
};

use crate::common::{FAST_WORKER, check_ledger, set_confirmed_counter};

async fn admin(api: &Api, method: Method, path: &str) -> testkit::Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    api.send(method, path, &[("authorization", &auth)], None).await
}

/// The ledger's status of an order ("" when it has no row).
fn ledger_status(pg: &Postgres, order: &str) -> String {
    pg.psql(&format!("select status from orders where order_id = '{order}'")).trim().to_owned()
}

async fn wait_ledger_status(pg: &Postgres, order: &str, status: &str) {
    wait_until(Duration::from_secs(15), &format!("the ledger to record {order} {status}"), || async {
        (ledger_status(pg, order) == status).then_some(())
    })
    .await;
}

/// Buys one unit for each user; returns their order ids.
async fn buy(api: &Api, event: &str, users: &[&str]) -> Vec<String> {
    let mut orders = Vec::new();
    for user in users {
        let reply = api.purchase(event, user, 1, None).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        orders.push(reply.body["order_id"].as_str().unwrap().to_owned());
    }
    orders
}

/// Makes the confirm step fail (a non-numeric `confirmed` counter), starts a worker that parks
/// after one failed attempt, and waits until `orders` are parked; returns the dead letters.
async fn park_all(
    redis: &RedisServer,
    pg: &Postgres,
    api: &Api,
    event: &str,
    orders: &[String],
) -> (Worker, Vec<Value>) {
    set_confirmed_counter(redis, event, "garbage").await;
    let knobs = [FAST_WORKER, &[("MAX_DELIVERIES", "1")]].concat();
    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await;
    let letters = wait_until(Duration::from_secs(15), "the entries to be parked", || async {
        let page = admin(api, Method::GET, &format!("/v1/events/{event}/dead-letters")).await;
        let letters = page.body["dead_letters"].as_array()?.clone();
        (letters.len() == orders.len()).then_some(letters)
    })
    .await;
    assert!(letters.iter().all(|l| l["parked"] == true), "{letters:?}");
    // The cause is repaired; the operator has not decided yet.
    set_confirmed_counter(redis, event, "0").await;
    for order in orders {
        // Never `confirmed` in the ledger while an operator may still fail it.
        wait_ledger_status(pg, order, "parked").await;
    }
    (worker, letters)
}

fn letter_of(letters: &[Value], order: &str) -> String {
    letters.iter().find(|l| l["order_id"] == order).unwrap()["id"].as_str().unwrap().to_owned()
}

async fn remaining(api: &Api, event: &str) -> i64 {
    let reply = api.get_event(event).await;
    reply.body["remaining"].as_i64().unwrap_or_else(|| panic!("no remaining: {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_order_stays_pending_across_a_redis_restart_until_an_operator_decides() {
    let mut redis = RedisServer::start_with(Durability::AofAlways);
    let pg = Postgres::start();
    // With the ledger, for the admin listing.
    let gateway =
        Gateway::start(&redis.url(), &[("REDIS_TIMEOUT_MS", "300"), ("DATABASE_URL", &pg.url())]).await;
    let api = gateway.api();
    api.create_event("drop", 5, 1).await;
    let orders = buy(&api, "drop", &["alice", "bob"]).await;
    let (alice, bob) = (orders[0].clone(), orders[1].clone());
    let (_worker, letters) = park_all(&redis, &pg, &api, "drop", &orders).await;

    // As if the worker had been killed between bob's park and its ledger update: the
    // reconciliation heals it from the dead letters before it rebuilds Redis from the ledger.
    pg.psql(&format!("update orders set status = 'confirmed' where order_id = '{bob}'"));
    // A lossless restart: the fence reconciles from the ledger before anything sells again.
    redis.kill();
    redis.restart();
    let carol = wait_until(Duration::from_secs(20), "sales to resume after the restart", || async {
        let reply = api.purchase("drop", "carol", 1, None).await;
        (reply.status == StatusCode::ACCEPTED).then(|| reply.body["order_id"].as_str().unwrap().to_owned())
    })
    .await;
    api.wait_order_status("drop", &carol, "confirmed").await;
    for order in [&alice, &bob] {
        assert_eq!(api.get_order("drop", order).await.body["status"], "pending", "{order} stays pending");
        assert_eq!(ledger_status(&pg, order), "parked", "{order} is not confirmed in the ledger");
    }
    // The admin listing (from the ledger) shows a parked order as buyers see it: pending.
    let listed = admin(&api, Method::GET, "/v1/events/drop/orders").await;
    let listed_alice = listed.body["orders"].as_array().and_then(|orders| {
        orders.iter().find(|o| o["order_id"] == alice.as_str()).map(|o| o["status"].clone())
    });
    assert_eq!(listed_alice, Some(Value::from("pending")), "{listed:?}");
    // Units held: 5 - alice - bob - carol.
    assert_eq!(remaining(&api, "drop").await, 2);

    // The operator fails alice: her unit comes back, her allowance too, the ledger says failed.
    let failed = admin(
        &api,
        Method::POST,
        &format!("/v1/events/drop/dead-letters/{}/fail", letter_of(&letters, &alice)),
    )
    .await;
    assert_eq!(
        (failed.status, failed.body["outcome"].as_str()),
        (StatusCode::OK, Some("failed")),
        "{failed:?}"
    );
    api.wait_order_status("drop", &alice, "failed").await;
    assert_eq!(remaining(&api, "drop").await, 3);
    wait_ledger_status(&pg, &alice, "failed").await;
    let again = api.purchase("drop", "alice", 1, Some("alice-again")).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "alice's allowance came back: {again:?}");

    // The operator redrives bob: confirmed in both.
    let redriven = admin(
        &api,
        Method::POST,
        &format!("/v1/events/drop/dead-letters/{}/redrive", letter_of(&letters, &bob)),
    )
    .await;
    assert_eq!(redriven.body["outcome"], "redriven", "{redriven:?}");
    api.wait_order_status("drop", &bob, "confirmed").await;
    wait_ledger_status(&pg, &bob, "confirmed").await;

    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(15)).await;
    assert_eq!(
        (books.units_confirmed, books.units_failed, books.dead_letters, books.remaining),
        (3, 1, 0, 2),
        "{books:?}"
    );
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_order_a_restarted_redis_forgot_comes_back_pending_with_its_units_held() {
    let mut redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[("REDIS_TIMEOUT_MS", "300")]).await;
    let api = gateway.api();
    api.create_event("drop", 5, 1).await;
    let orders = buy(&api, "drop", &["alice"]).await;
    let alice = orders[0].clone();
    let (_worker, _letters) = park_all(&redis, &pg, &api, "drop", &orders).await;

    // Redis comes back empty: everything it knew comes from the ledger.
    redis.kill();
    redis.restart();
    wait_until(Duration::from_secs(20), "sales to resume after the restart", || async {
        let reply = api.get_order("drop", &alice).await;
        (reply.status == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(api.get_order("drop", &alice).await.body["status"], "pending", "never confirmed by a restore");
    assert_eq!(remaining(&api, "drop").await, 4, "its unit stays held");
    // Her retry replays the order; her allowance is still spent.
    let retry = api.purchase("drop", "alice", 1, None).await;
    assert_eq!((retry.status, retry.body["order_id"].as_str()), (StatusCode::OK, Some(alice.as_str())));
    let other = api.purchase("drop", "alice", 1, Some("another")).await;
    other.assert_problem(409, "limit_exceeded");
    assert_eq!(ledger_status(&pg, &alice), "parked");
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(15)).await;
    assert_eq!((books.units_pending, books.remaining, books.accepted_counter), (1, 4, 1), "{books:?}");
    check_ledger(&redis.url(), &pg.url(), "drop").await;

    // Its dead letter was lost with the rest: the reconciliation parked it again, so the
    // operator can still decide it.
    let page = admin(&api, Method::GET, "/v1/events/drop/dead-letters").await;
    let letters = page.body["dead_letters"].as_array().cloned().unwrap_or_default();
    assert_eq!(letters.len(), 1, "{page:?}");
    assert_eq!(letters[0]["parked"], true, "{letters:?}");
    let failed = admin(
        &api,
        Method::POST,
        &format!("/v1/events/drop/dead-letters/{}/fail", letter_of(&letters, &alice)),
    )
    .await;
    assert_eq!(failed.body["outcome"], "failed", "{failed:?}");
    wait_ledger_status(&pg, &alice, "failed").await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(15)).await;
    assert_eq!((books.units_failed, books.remaining, books.dead_letters), (1, 5, 0), "{books:?}");
    check_ledger(&redis.url(), &pg.url(), "drop").await;
}
