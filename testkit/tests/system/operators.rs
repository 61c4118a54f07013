//! Operators in control: a sale paused, resumed and ended through one gateway is obeyed by
//! every gateway at once; dead letters are listed and resolved over HTTP.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use testkit::{ADMIN_TOKEN, Api, Gateway, Postgres, RedisServer, Worker, wait_drained, wait_until};

use crate::common::{FAST_WORKER, crowd};

async fn admin(api: &Api, method: Method, path: &str) -> testkit::Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    api.send(method, path, &[("authorization", &auth)], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sale_paused_on_one_gateway_is_refused_by_the_other_within_100_ms() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let (a, b) = (Gateway::start(&redis.url(), &[]).await, Gateway::start(&redis.url(), &[]).await);
    let (a, b) = (a.api(), b.api());
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    a.create_event("open", 100, 1).await;
    a.create_event("gone", 3, 1).await;
    let early = b.purchase("open", "early", 1, None).await;
    assert_eq!(early.status, StatusCode::ACCEPTED);
    // "gone" is sold out, and gateway b answers it from its local flag.
    assert_eq!(crowd(std::slice::from_ref(&b), "gone", 10, 4).await.count(202), 3);
    wait_until(Duration::from_secs(5), "b's local sold-out flag", || async {
        let metrics = b.metrics().await;
        let before = testkit::metric_value(&metrics, "flashsale_sold_out_local_total", &[]).unwrap_or(0.0);
        b.purchase("gone", "probe", 1, None).await;
        let after =
            testkit::metric_value(&b.metrics().await, "flashsale_sold_out_local_total", &[]).unwrap_or(0.0);
        (after > before).then_some(())
    })
    .await;

    for event in ["open", "gone"] {
        let paused = admin(&a, Method::POST, &format!("/v1/events/{event}/pause")).await;
        assert_eq!(
            (paused.status, paused.body["state"].as_str()),
            (StatusCode::OK, Some("paused")),
            "{paused:?}"
        );
    }
    let since = Instant::now();
    // Within 100 ms every gateway refuses: b answers from Redis, its flag dropped.
    let first = wait_until(Duration::from_secs(2), "b to refuse", || async {
        let reply = b.purchase("gone", "late", 1, None).await;
        (reply.code() == "sale_paused").then_some(since.elapsed())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100).saturating_sub(since.elapsed())).await;
    for (api, event) in [(&b, "open"), (&b, "gone"), (&a, "open")] {
        api.purchase(event, "someone-new", 1, None).await.assert_problem(409, "sale_paused");
    }
    println!("b refused the paused sale {first:?} after the pause");
    // A replay of an accepted order still answers 200; the event shows its state.
    let replay = b.purchase("open", "early", 1, None).await;
    assert_eq!(
        (replay.status, replay.body["order_id"].clone()),
        (StatusCode::OK, early.body["order_id"].clone())
    );
    assert_eq!(b.get_event("open").await.body["state"], "paused");

    let resumed = admin(&b, Method::POST, "/v1/events/open/resume").await;
    assert_eq!(resumed.body["state"], "live", "{resumed:?}");
    assert_eq!(a.purchase("open", "after-resume", 1, None).await.status, StatusCode::ACCEPTED);
    admin(&a, Method::POST, "/v1/events/open/resume").await.assert_problem(409, "not_paused");

    let ended = admin(&a, Method::POST, "/v1/events/open/end").await;
    assert_eq!(ended.body["state"], "ended", "{ended:?}");
    b.purchase("open", "after-end", 1, None).await.assert_problem(409, "sale_not_active");
    assert_eq!(b.purchase("open", "early", 1, None).await.status, StatusCode::OK, "replays survive the end");
    admin(&b, Method::POST, "/v1/events/open/resume").await.assert_problem(409, "sale_not_active");
    admin(&b, Method::POST, "/v1/events/nope/pause").await.assert_problem(404, "event_not_found");
    // Deny by default.
    b.send(Method::POST, "/v1/events/gone/resume", &[], None).await.assert_problem(401, "unauthorized");
    assert_eq!(b.get_event("gone").await.body["state"], "paused");
    let books = wait_drained(&redis.url(), "open", Duration::from_secs(10)).await;
    assert_eq!(books.units_confirmed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_redriven_and_failed_over_http() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 3, 1).await;
    let alice = api.purchase("drop", "alice", 1, None).await.body["order_id"].as_str().unwrap().to_owned();
    let bob = api.purchase("drop", "bob", 1, None).await.body["order_id"].as_str().unwrap().to_owned();
    // Corrupt data that makes the confirm step fail: both entries end up parked.
    crate::common::set_confirmed_counter(&redis, "drop", "garbage").await;
    let knobs = [FAST_WORKER, &[("MAX_DELIVERIES", "1")]].concat();
    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await;
    let page = wait_until(Duration::from_secs(15), "both entries parked", || async {
        let page = admin(&api, Method::GET, "/v1/events/drop/dead-letters").await;
        (page.body["dead_letters"].as_array().map(Vec::len) == Some(2)).then_some(page)
    })
    .await;
    let letters: Vec<Value> = page.body["dead_letters"].as_array().unwrap().clone();
    assert!(letters.iter().all(|l| l["parked"] == true && l["reason"] == "max_attempts"), "{letters:?}");
    api.send(Method::GET, "/v1/events/drop/dead-letters", &[], None)
        .await
        .assert_problem(401, "unauthorized");
    let id_of = |order: &str| {
        letters.iter().find(|l| l["order_id"] == order).unwrap()["id"].as_str().unwrap().to_owned()
    };

    crate::common::set_confirmed_counter(&redis, "drop", "0").await;
    let redriven =
        admin(&api, Method::POST, &format!("/v1/events/drop/dead-letters/{}/redrive", id_of(&alice))).await;
    assert_eq!(
        (redriven.status, redriven.body["outcome"].as_str()),
        (StatusCode::OK, Some("redriven")),
        "{redriven:?}"
    );
    let failed =
        admin(&api, Method::POST, &format!("/v1/events/drop/dead-letters/{}/fail", id_of(&bob))).await;
    assert_eq!(failed.body["outcome"], "failed", "{failed:?}");
    admin(&api, Method::POST, &format!("/v1/events/drop/dead-letters/{}/fail", id_of(&bob)))
        .await
        .assert_problem(404, "dead_letter_not_found");
    admin(&api, Method::POST, "/v1/events/drop/dead-letters/not-an-id/fail")
        .await
        .assert_problem(422, "invalid_fields");
    api.wait_order_status("drop", &alice, "confirmed").await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(15)).await;
    assert_eq!(
        (books.units_confirmed, books.units_failed, books.dead_letters, books.remaining),
        (1, 1, 0, 2)
    );
    // The ledger has both final states.
    let rows = pg.psql("select status from orders where event_id = 'drop' order by status");
    assert_eq!(rows.lines().collect::<Vec<_>>(), ["confirmed", "failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_an_admin_listener_admin_routes_and_metrics_are_served_only_there() {
    let redis = RedisServer::start();
    let admin_addr = format!("127.0.0.1:{}", testkit::free_port());
    let gateway = Gateway::start(&redis.url(), &[("ADMIN_LISTEN_ADDR", &admin_addr)]).await;
    let public = gateway.api();
    let private = Api::new(&format!("http://{admin_addr}"));
    wait_until(Duration::from_secs(10), "the admin listener", || async {
        private
            .client
            .get(format!("{}/healthz", private.base))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;

    // The public listener serves no admin route, even with the token (`PUT` of an event's path,
    // which it reads, is a 405; the others are unknown there).
    let refused = public.put_event("drop", serde_json::json!({"stock": 5})).await;
    refused.assert_problem(405, "method_not_allowed");
    assert_eq!(refused.header("allow"), Some("GET,HEAD"));
    public.get_event("drop").await.assert_problem(404, "event_not_found");
    public.send(Method::GET, "/metrics", &[], None).await.assert_problem(404, "not_found");
    admin(&public, Method::POST, "/v1/events/drop/pause").await.assert_problem(404, "not_found");
    // The admin listener serves them (and no purchases).
    private.create_event("drop", 5, 1).await;
    assert!(private.metrics().await.contains("flashsale_purchases_total"));
    private.purchase("drop", "alice", 1, None).await.assert_problem(404, "not_found");
    assert_eq!(public.purchase("drop", "alice", 1, None).await.status, StatusCode::ACCEPTED);
    assert_eq!(public.get_event("drop").await.body["remaining"], 4);
    // Both answer the probes and carry the whole OpenAPI document.
    for api in [&public, &private] {
        let doc = api.send(Method::GET, "/openapi.json", &[], None).await;
        assert!(doc.body["paths"]["/v1/events/{event_id}/pause"].is_object(), "{api:?}");
        assert_eq!(api.send(Method::GET, "/healthz", &[], None).await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_listed_by_state_and_orders_listed_and_exported_from_the_ledger() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[("DATABASE_URL", &pg.url())]).await;
    let api = gateway.api();
    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    for (event, stock) in [("live-one", 100), ("paused-one", 100), ("gone-one", 2)] {
        api.create_event(event, stock, 1).await;
    }
    assert_eq!(crowd(std::slice::from_ref(&api), "live-one", 25, 8).await.count(202), 25);
    assert_eq!(crowd(std::slice::from_ref(&api), "gone-one", 5, 5).await.count(202), 2);
    admin(&api, Method::POST, "/v1/events/paused-one/pause").await;
    // The worker's `flashsale_event_live` gates the alerts sized for a sale: on sale, sold out
    // or not, is live; paused is not.
    wait_until(Duration::from_secs(10), "the live gauges", || async {
        let metrics = worker.metrics().await;
        let live = |event| testkit::metric_value(&metrics, "flashsale_event_live", &[("event", event)]);
        (live("live-one") == Some(1.0) && live("gone-one") == Some(1.0) && live("paused-one") == Some(0.0))
            .then_some(())
    })
    .await;

    // Every event, one per page, following the cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    for _ in 0..20 {
        let path = match cursor {
            Some(c) => format!("/v1/events?limit=1&cursor={c}"),
            None => "/v1/events?limit=1".to_owned(),
        };
        let page = admin(&api, Method::GET, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        for event in page.body["events"].as_array().unwrap() {
            seen.push((
                event["event_id"].as_str().unwrap().to_owned(),
                event["state"].as_str().unwrap().to_owned(),
            ));
        }
        cursor = page.body["next_cursor"].as_u64();
        if cursor.is_none() {
            break;
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("gone-one".to_owned(), "sold_out".to_owned()),
            ("live-one".to_owned(), "live".to_owned()),
            ("paused-one".to_owned(), "paused".to_owned())
        ]
    );
    let paused = admin(&api, Method::GET, "/v1/events?state=paused&limit=100").await;
    let ids: Vec<&str> =
        paused.body["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["paused-one"]);
    api.send(Method::GET, "/v1/events", &[], None).await.assert_problem(401, "unauthorized");

    // Orders from the ledger, ten at a time.
    wait_drained(&redis.url(), "live-one", Duration::from_secs(15)).await;
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events/live-one/orders?status=confirmed&limit=10&cursor={c}"),
            None => "/v1/events/live-one/orders?status=confirmed&limit=10".to_owned(),
        };
        let page = admin(&api, Method::GET, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        listed.extend(
            page.body["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        cursor = page.body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(listed.len(), 25);
    assert_eq!(
        listed.iter().collect::<std::collections::HashSet<_>>().len(),
        25,
        "no order twice across pages"
    );
    let failed = admin(&api, Method::GET, "/v1/events/live-one/orders?status=failed").await;
    assert_eq!(failed.body["orders"].as_array().map(Vec::len), Some(0));
    admin(&api, Method::GET, "/v1/events/live-one/orders?status=pending")
        .await
        .assert_problem(422, "invalid_fields");

    // And exported by the worker binary.
    let env = [("REDIS_URL", redis.url()), ("DATABASE_URL", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, csv) = testkit::run_to_exit(
        "flashsale-worker",
        &env,
        &["export", "--event", "live-one", "--format", "csv"],
        Duration::from_secs(20),
    )
    .await;
    assert!(status.success(), "{csv}");
    let lines: Vec<&str> = csv.lines().filter(|l| l.contains(',')).collect();
    assert_eq!(lines[0], "order_id,event_id,user_id,quantity,status,created_at,finalized_at");
    assert_eq!(lines.len(), 26, "{csv}");
    let (_, jsonl) = testkit::run_to_exit(
        "flashsale-worker",
        &env,
        &["export", "--event", "live-one", "--format", "jsonl"],
        Duration::from_secs(20),
    )
    .await;
    let rows: Vec<Value> = jsonl.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(rows.len(), 25);
    assert!(rows.iter().all(|r| r["status"] == "confirmed" && r["event_id"] == "live-one"));
}
