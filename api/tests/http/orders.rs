use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn an_order_goes_from_pending_to_confirmed_and_replays_show_it() {
    let mut app = spawn_app().await;
    app.api.create_event("drop", 3, 1).await;
    let placed = app.api.purchase("drop", "alice", 1, Some("k")).await;
    let order_id = placed.body["order_id"].as_str().unwrap().to_owned();
    let pending = app.api.get_order("drop", &order_id).await;
    assert_eq!(pending.status, StatusCode::OK);
    assert_eq!(pending.body["status"], "pending");
    assert!(pending.body.get("confirmed_at").is_none());

    app.start_worker().await;
    let confirmed = app.wait_order_status("drop", &order_id, "confirmed").await;
    assert!(confirmed["confirmed_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{confirmed}");
    assert_eq!(confirmed["created_at"], placed.body["created_at"]);

    let replay = app.api.purchase("drop", "alice", 1, Some("k")).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["status"], "confirmed", "a replay shows the current status");
    assert_eq!(replay.body["confirmed_at"], confirmed["confirmed_at"]);

    let event = testkit::wait_until(std::time::Duration::from_secs(5), "confirmed count", || async {
        let event = app.api.get_event("drop").await;
        (event.body["confirmed"] == 1).then_some(event)
    })
    .await;
    assert_eq!(event.body["remaining"], 2);
    testkit::assert_books_balance(&app.redis.url(), "drop", true).await;
}

#[tokio::test]
async fn unknown_orders_are_404() {
    let app = spawn_app().await;
    app.api.create_event("drop", 3, 1).await;
    let placed = app.api.purchase("drop", "alice", 1, None).await;
    let order_id = placed.body["order_id"].as_str().unwrap();
    app.api
        .get_order("drop", "7c1f4bd2-1111-4f7e-9a8e-1234567890ab")
        .await
        .assert_problem(404, "order_not_found");
    app.api.get_order("drop", "not-a-uuid").await.assert_problem(404, "order_not_found");
    app.api.get_order("other", order_id).await.assert_problem(404, "order_not_found");
    app.api.get_order("bad!id", order_id).await.assert_problem(422, "invalid_fields");
}
