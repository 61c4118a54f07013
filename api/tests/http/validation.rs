//! Bad input: a clear 4xx problem, and nothing changes.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

const PURCHASES: &str = "/v1/events/drop/purchases";

async fn app_with_event() -> TestApp {
    let app = spawn_app().await;
    app.api.create_event("drop", 5, 2).await;
    app
}

async fn assert_untouched(app: &TestApp) {
    let event = app.api.get_event("drop").await;
    assert_eq!(event.body["remaining"], 5, "bad input must change nothing: {event:?}");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = app_with_event().await;
    for body in ["{", "not json", "", "{\"user_id\": \"a\",}"] {
        let reply = app
            .api
            .client
            .post(format!("{}{PURCHASES}", app.api.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "body {body:?}");
        assert_eq!(reply.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(problem["code"], "malformed_json");
    }
    assert_untouched(&app).await;
}

#[tokio::test]
async fn a_non_json_content_type_is_415() {
    let app = app_with_event().await;
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut request =
            app.api.client.post(format!("{}{PURCHASES}", app.api.base)).body(r#"{"user_id":"a"}"#);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let reply = request.send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}");
        assert_eq!(reply.headers()["content-type"], "application/problem+json");
    }
    // A charset parameter is fine.
    let ok = app
        .api
        .client
        .post(format!("{}{PURCHASES}", app.api.base))
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"user_id":"a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let app = app_with_event().await;
    let padding = "x".repeat(70 * 1024);
    let body = json!({"user_id": "alice", "padding": padding});
    app.api.send(Method::POST, PURCHASES, &[], Some(&body)).await.assert_problem(413, "payload_too_large");
    assert_untouched(&app).await;
}

#[tokio::test]
async fn invalid_fields_are_422() {
    let app = app_with_event().await;
    for body in [
        json!({"user_id": ""}),
        json!({"user_id": "x".repeat(129)}),
        json!({"user_id": "has space"}),
        json!({"user_id": "pipe|char"}),
        json!({"user_id": "alice", "quantity": 0}),
        json!({"user_id": "alice", "quantity": 3}),
        json!({"user_id": "alice", "quantity": -1}),
        json!({"user_id": "alice", "quantity": 1.5}),
        json!({"user_id": "alice", "quantity": "1"}),
        json!({"user_id": 42}),
        json!({"quantity": 1}),
        json!({"user_id": "alice", "extra": true}),
        json!([1, 2]),
    ] {
        let reply = app.api.send(Method::POST, PURCHASES, &[], Some(&body)).await;
        reply.assert_problem(422, "invalid_fields");
    }
    let long_event = format!("/v1/events/{}/purchases", "e".repeat(65));
    let reply = app.api.send(Method::POST, &long_event, &[], Some(&json!({"user_id": "alice"}))).await;
    reply.assert_problem(422, "invalid_fields");
    let both = app.api.send(Method::POST, PURCHASES, &[], Some(&json!({"user_id": "", "quantity": 0}))).await;
    assert_eq!(
        both.body["invalid_params"].as_array().map(Vec::len),
        Some(2),
        "every invalid field listed: {both:?}"
    );
    assert_untouched(&app).await;
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_400() {
    let app = app_with_event().await;
    let long = "k".repeat(256);
    let body = json!({"user_id": "alice"});
    for key in ["", long.as_str(), "tab\tkey"] {
        let reply = app.api.send(Method::POST, PURCHASES, &[("idempotency-key", key)], Some(&body)).await;
        reply.assert_problem(400, "invalid_header");
    }
    let ok_key = "k".repeat(255);
    let reply = app.api.send(Method::POST, PURCHASES, &[("idempotency-key", &ok_key)], Some(&body)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "255 printable characters are fine");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_as_problems() {
    let app = app_with_event().await;
    app.api.send(Method::GET, "/nope", &[], None).await.assert_problem(404, "not_found");
    app.api.send(Method::GET, "/v1/events/drop/unknown", &[], None).await.assert_problem(404, "not_found");
    let wrong = app.api.send(Method::DELETE, "/v1/events/drop", &[], None).await;
    wrong.assert_problem(405, "method_not_allowed");
    assert!(wrong.header("allow").is_some_and(|a| a.contains("GET") && a.contains("PUT")), "{wrong:?}");
    app.api.send(Method::GET, PURCHASES, &[], None).await.assert_problem(405, "method_not_allowed");
    assert_untouched(&app).await;
}
