use reqwest::StatusCode;
use testkit::metric_value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_dashboard_series_exists_from_start_up() {
    let app = spawn_app().await;
    let text = app.api.metrics().await;
    for outcome in [
        "accepted",
        "replayed",
        "sold_out",
        "limit_exceeded",
        "sale_not_active",
        "sale_paused",
        "rejected",
        "error",
    ] {
        assert_eq!(
            metric_value(&text, "flashsale_purchases_total", &[("outcome", outcome)]),
            Some(0.0),
            "{outcome} missing:\n{text}"
        );
    }
    assert_eq!(metric_value(&text, "flashsale_purchase_duration_seconds_count", &[]), Some(0.0));
    assert!(
        text.contains("flashsale_purchase_duration_seconds_bucket{le=\"0.005\"}"),
        "explicit buckets:\n{text}"
    );
    // The scrape itself is the one request in flight; which build runs is labelled.
    assert_eq!(metric_value(&text, "flashsale_http_requests_in_flight", &[]), Some(1.0), "{text}");
    let build = text.lines().find(|l| l.starts_with("flashsale_build_info{")).expect("build info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && build.ends_with(" 1"),
        "{build}"
    );
    assert!(build.contains("revision=\""), "{build}");
}

#[tokio::test]
async fn purchase_outcomes_are_counted_after_a_known_sequence() {
    let app = spawn_app().await;
    app.api.create_event("drop", 2, 1).await;
    app.api.put_event("later", serde_json::json!({"stock": 1, "starts_at": "2099-01-01T00:00:00Z"})).await;

    assert_eq!(app.api.purchase("drop", "a", 1, None).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.api.purchase("drop", "b", 1, Some("k")).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.api.purchase("drop", "a", 1, None).await.status, StatusCode::OK);
    assert_eq!(app.api.purchase("drop", "a", 1, None).await.status, StatusCode::OK);
    app.api.purchase("drop", "c", 1, None).await.assert_problem(409, "sold_out");
    app.api.purchase("drop", "b", 1, Some("k2")).await.assert_problem(409, "sold_out");
    app.api.purchase("later", "a", 1, None).await.assert_problem(409, "sale_not_active");
    app.api.purchase("drop", "", 1, None).await.assert_problem(422, "invalid_fields");
    app.api.purchase("nope", "a", 1, None).await.assert_problem(404, "event_not_found");

    let text = app.api.metrics().await;
    let count = |outcome: &str| metric_value(&text, "flashsale_purchases_total", &[("outcome", outcome)]);
    assert_eq!(count("accepted"), Some(2.0));
    assert_eq!(count("replayed"), Some(2.0));
    assert_eq!(count("sold_out"), Some(2.0));
    assert_eq!(count("sale_not_active"), Some(1.0));
    assert_eq!(count("limit_exceeded"), Some(0.0));
    assert_eq!(count("rejected"), Some(2.0));
    assert_eq!(count("error"), Some(0.0));
    assert_eq!(metric_value(&text, "flashsale_purchase_duration_seconds_count", &[]), Some(9.0));
    let route = "/v1/events/{event_id}/purchases";
    let http = |status: &str| {
        metric_value(
            &text,
            "flashsale_http_requests_total",
            &[("method", "POST"), ("route", route), ("status", status)],
        )
    };
    assert_eq!((http("202"), http("200"), http("409")), (Some(2.0), Some(2.0), Some(3.0)));
}
