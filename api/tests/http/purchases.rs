use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_new_purchase_is_202_with_the_pending_order_and_its_location() {
    let app = spawn_app().await;
    app.api.create_event("drop", 10, 2).await;
    let reply = app.api.purchase("drop", "alice", 2, None).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let order_id = reply.body["order_id"].as_str().expect("order id").to_owned();
    assert_eq!(order_id.len(), 36, "a hyphenated UUID");
    assert_eq!(reply.header("location"), Some(format!("/v1/events/drop/orders/{order_id}").as_str()));
    assert_eq!(reply.body["event_id"], "drop");
    assert_eq!(reply.body["user_id"], "alice");
    assert_eq!(reply.body["quantity"], 2);
    assert_eq!(reply.body["status"], "pending");
    assert!(reply.body["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{reply:?}");
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 8);
}

#[tokio::test]
async fn a_retry_replays_the_same_order_and_does_not_touch_stock() {
    let app = spawn_app().await;
    app.api.create_event("drop", 10, 3).await;
    let first = app.api.purchase("drop", "alice", 1, None).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for _ in 0..3 {
        let replay = app.api.purchase("drop", "alice", 1, None).await;
        assert_eq!(replay.status, StatusCode::OK, "{replay:?}");
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        assert_eq!(replay.body["order_id"], first.body["order_id"]);
        assert_eq!(replay.header("location"), first.header("location"));
    }
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 9);
    assert!(first.header("idempotent-replayed").is_none());
}

#[tokio::test]
async fn idempotency_scopes_keys_and_limits() {
    let app = spawn_app().await;
    app.api.create_event("drop", 10, 3).await;

    // No header: the scope is the user, so a second purchase by the same user is a replay.
    let implicit = app.api.purchase("drop", "alice", 1, None).await;
    assert_eq!(implicit.status, StatusCode::ACCEPTED);
    // Same scope, different payload.
    let mismatch = app.api.purchase("drop", "alice", 2, None).await;
    mismatch.assert_problem(422, "idempotency_key_mismatch");
    assert_eq!(mismatch.body["order_id"], implicit.body["order_id"]);

    // An explicit key whose text equals the user id is a different scope.
    let explicit = app.api.purchase("drop", "alice", 1, Some("alice")).await;
    assert_eq!(explicit.status, StatusCode::ACCEPTED, "{explicit:?}");
    assert_ne!(explicit.body["order_id"], implicit.body["order_id"]);

    // Keys are per user: bob's "k1" and alice's "k1" are different purchases.
    let alice_k1 = app.api.purchase("drop", "alice", 1, Some("k1")).await;
    let bob_k1 = app.api.purchase("drop", "bob", 1, Some("k1")).await;
    assert_eq!((alice_k1.status, bob_k1.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_ne!(alice_k1.body["order_id"], bob_k1.body["order_id"]);

    // alice now holds 3 of 3: a new key is over the limit, and not remembered.
    let over = app.api.purchase("drop", "alice", 1, Some("k2")).await;
    over.assert_problem(409, "limit_exceeded");
    app.api.purchase("drop", "alice", 1, Some("k2")).await.assert_problem(409, "limit_exceeded");
    // ... while her earlier keys still replay.
    let replay = app.api.purchase("drop", "alice", 1, Some("k1")).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["order_id"], alice_k1.body["order_id"]);

    // Quantity above per_user_limit in one request is an invalid field.
    app.api.purchase("drop", "carol", 4, None).await.assert_problem(422, "invalid_fields");
    // Within the limit but over what is left for the user across orders is 409.
    assert_eq!(app.api.purchase("drop", "carol", 2, Some("a")).await.status, StatusCode::ACCEPTED);
    app.api.purchase("drop", "carol", 2, Some("b")).await.assert_problem(409, "limit_exceeded");

    let event = app.api.get_event("drop").await;
    assert_eq!(event.body["remaining"], 10 - 3 - 1 - 2);
}

#[tokio::test]
async fn sold_out_is_409_and_a_rejected_request_is_evaluated_afresh() {
    let app = spawn_app().await;
    app.api.create_event("drop", 2, 2).await;
    app.api.purchase("drop", "alice", 1, None).await;
    app.api.purchase("drop", "bob", 2, None).await.assert_problem(409, "sold_out");
    // bob's rejected request left no trace: with one unit he gets it.
    let bob = app.api.purchase("drop", "bob", 1, None).await;
    assert_eq!(bob.status, StatusCode::ACCEPTED, "{bob:?}");
    app.api.purchase("drop", "carol", 1, None).await.assert_problem(409, "sold_out");
    // Replays keep working after the event sold out.
    let replay = app.api.purchase("drop", "bob", 1, None).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["order_id"], bob.body["order_id"]);
    app.api.purchase("nope", "bob", 1, None).await.assert_problem(404, "event_not_found");
}

#[tokio::test]
async fn the_sale_window_is_enforced_by_redis_time() {
    let app = spawn_app().await;
    let future = json!({"stock": 5, "starts_at": "2099-01-01T00:00:00Z"});
    app.api.put_event("later", future).await;
    app.api.purchase("later", "alice", 1, None).await.assert_problem(409, "sale_not_active");

    let past = json!({"stock": 5, "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2020-06-01T00:00:00Z"});
    app.api.put_event("over", past).await;
    app.api.purchase("over", "alice", 1, None).await.assert_problem(409, "sale_not_active");

    // Opens in a moment: rejected now, accepted once open (rejections are not remembered);
    // closes soon after, and then the buyer's retry is still a replay.
    let now = time::OffsetDateTime::now_utc();
    let starts =
        (now + Duration::from_millis(700)).format(&time::format_description::well_known::Rfc3339).unwrap();
    let ends =
        (now + Duration::from_millis(2000)).format(&time::format_description::well_known::Rfc3339).unwrap();
    app.api.put_event("soon", json!({"stock": 5, "starts_at": starts, "ends_at": ends})).await;
    app.api.purchase("soon", "alice", 1, None).await.assert_problem(409, "sale_not_active");
    let accepted = testkit::wait_until(Duration::from_secs(5), "the sale to open", || async {
        let reply = app.api.purchase("soon", "alice", 1, None).await;
        (reply.status == StatusCode::ACCEPTED).then_some(reply)
    })
    .await;
    testkit::wait_until(Duration::from_secs(5), "the sale to close", || async {
        (app.api.get_event("soon").await.body["state"] == "ended").then_some(())
    })
    .await;
    app.api.purchase("soon", "bob", 1, None).await.assert_problem(409, "sale_not_active");
    let replay = app.api.purchase("soon", "alice", 1, None).await;
    assert_eq!(replay.status, StatusCode::OK, "a replay after ends_at: {replay:?}");
    assert_eq!(replay.body["order_id"], accepted.body["order_id"]);
}

#[tokio::test]
async fn a_storm_of_identical_requests_makes_one_order() {
    let app = spawn_app().await;
    app.api.create_event("drop", 100, 1).await;
    let replies = join_all((0..400).map(|_| app.api.purchase("drop", "alice", 1, Some("storm")))).await;
    let accepted = replies.iter().filter(|r| r.status == StatusCode::ACCEPTED).count();
    let replayed = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!((accepted, replayed), (1, 399), "one order, the rest replays");
    let ids: HashSet<_> = replies.iter().map(|r| r.body["order_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1, "every reply names the same order");
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 99);
    testkit::assert_books_balance(&app.redis.url(), "drop", false).await;
}

#[tokio::test]
async fn concurrent_distinct_buyers_never_oversell() {
    let app = spawn_app().await;
    app.api.create_event("drop", 50, 1).await;
    let replies = join_all((0..600).map(|i| {
        let api = app.api.clone();
        async move { api.purchase("drop", &format!("user-{i}"), 1, None).await }
    }))
    .await;
    let accepted = replies.iter().filter(|r| r.status == StatusCode::ACCEPTED).count();
    let sold_out = replies.iter().filter(|r| r.code() == "sold_out").count();
    assert_eq!((accepted, sold_out), (50, 550));
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 0);
    testkit::assert_books_balance(&app.redis.url(), "drop", false).await;
}

#[tokio::test]
async fn no_key_of_an_event_has_a_ttl_and_the_worker_purges_after_retention() {
    // Under `volatile-*` eviction a key with a TTL is the first to go: losing an idempotency
    // entry would let a retry buy twice. So nothing expires; the worker removes the
    // idempotency entries and user totals once `ends_at` plus the retention has passed.
    let mut app = crate::helpers::spawn_app_with(|c| c.idempotency_retention_secs = 1).await;
    let ends = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let ends_text = ends.format(&time::format_description::well_known::Rfc3339).unwrap();
    app.api.put_event("timed", json!({"stock": 5, "ends_at": ends_text})).await;
    app.api.create_event("open-ended", 5, 1).await;
    for event in ["timed", "open-ended"] {
        assert_eq!(app.api.purchase(event, "alice", 1, None).await.status, StatusCode::ACCEPTED);
        assert_eq!(app.api.purchase(event, "bob", 1, None).await.status, StatusCode::ACCEPTED);
    }
    let mut conn = app.redis.conn().await;
    let keys = |e: &str| flashsale_shared::EventKeys::new(&flashsale_shared::EventId::parse(e).unwrap());
    for event in ["timed", "open-ended"] {
        let k = keys(event);
        for key in [&k.event, &k.idem, &k.users, &k.orders, &k.stream] {
            let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
            assert_eq!(ttl, -1, "{key} must not expire");
        }
    }
    app.start_worker().await;
    let timed = keys("timed");
    testkit::wait_until(Duration::from_secs(15), "the timed event to be purged", || {
        let mut conn = conn.clone();
        let timed = timed.clone();
        async move {
            let left: i64 =
                redis::cmd("EXISTS").arg(&timed.idem).arg(&timed.users).query_async(&mut conn).await.ok()?;
            (left == 0).then_some(())
        }
    })
    .await;
    // The orders themselves are recorded in the ledger (and the whole event then leaves
    // Redis); an event without an end keeps everything.
    let ledger = app.ledger.as_ref().expect("the worker's ledger");
    assert_eq!(ledger.psql("select count(*) from orders where event_id = 'timed'").trim(), "2");
    let open: i64 = redis::cmd("EXISTS")
        .arg(keys("open-ended").idem)
        .arg(keys("open-ended").users)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(open, 2);
    // After retention a retry is evaluated afresh: the sale is over (or gone from Redis).
    let retry = app.api.purchase("timed", "alice", 1, None).await;
    assert!(matches!(retry.code(), "sale_not_active" | "event_not_found"), "{retry:?}");
}
