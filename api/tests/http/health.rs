use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::helpers::spawn_app;

#[tokio::test]
async fn probes_report_process_and_redis() {
    let mut app = crate::helpers::spawn_app_with(|c| c.redis.redis_timeout_ms = 300).await;
    assert_eq!(app.api.send(Method::GET, "/healthz", &[], None).await.status, StatusCode::OK);
    assert_eq!(app.api.send(Method::GET, "/readyz", &[], None).await.status, StatusCode::OK);
    app.api.create_event("drop", 5, 1).await;

    app.redis.kill();
    let started = Instant::now();
    let purchase = app.api.purchase("drop", "alice", 1, None).await;
    purchase.assert_problem(503, "unavailable");
    assert_eq!(purchase.header("retry-after"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2), "503 must come fast, took {:?}", started.elapsed());
    app.api.send(Method::GET, "/readyz", &[], None).await.assert_problem(503, "unavailable");
    app.api.get_event("drop").await.assert_problem(503, "unavailable");
    assert_eq!(app.api.send(Method::GET, "/healthz", &[], None).await.status, StatusCode::OK);

    // Redis is back (empty: scripts reload on NOSCRIPT), but nothing sells until a worker has
    // reconciled it with the ledger (the fence); then the gateway is ready by itself.
    app.redis.restart();
    let fenced = testkit::wait_until(Duration::from_secs(10), "Redis to answer again", || async {
        let reply = app.api.send(Method::GET, "/readyz", &[], None).await;
        reply.body["detail"].as_str().is_some_and(|d| d.contains("reconciled")).then_some(reply)
    })
    .await;
    fenced.assert_problem(503, "unavailable");
    app.api.purchase("drop", "alice", 1, None).await.assert_problem(503, "unavailable");
    app.start_worker().await;
    testkit::wait_until(Duration::from_secs(10), "readiness after Redis restart", || async {
        (app.api.send(Method::GET, "/readyz", &[], None).await.status == StatusCode::OK).then_some(())
    })
    .await;
    app.api.create_event("again", 1, 1).await;
    assert_eq!(app.api.purchase("again", "alice", 1, None).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let reply = app.api.send(Method::GET, "/healthz", &[], None).await;
    assert!(reply.header("x-request-id").is_some_and(|id| id.len() == 36));
    let echoed = app.api.send(Method::GET, "/healthz", &[("x-request-id", "trace-me-42")], None).await;
    assert_eq!(echoed.header("x-request-id"), Some("trace-me-42"));
    // Errors carry it too, and an oversized id (it goes into log lines) is replaced.
    let long = "x".repeat(129);
    let replaced = app.api.send(Method::GET, "/nowhere", &[("x-request-id", long.as_str())], None).await;
    assert_eq!(replaced.status, StatusCode::NOT_FOUND);
    assert!(replaced.header("x-request-id").is_some_and(|id| id.len() == 36));
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_problem() {
    let app = spawn_app().await;
    let reply = app.api.send(Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.body;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/events/{event_id}", "put"),
        ("/v1/events/{event_id}", "get"),
        ("/v1/events/{event_id}/purchases", "post"),
        ("/v1/events/{event_id}/orders/{order_id}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} undocumented");
    }
    let purchase = &paths["/v1/events/{event_id}/purchases"]["post"]["responses"];
    for status in ["200", "202", "400", "404", "409", "413", "415", "422", "500", "503"] {
        assert!(purchase.get(status).is_some(), "purchase response {status} undocumented");
    }
    assert!(purchase["409"]["content"].get("application/problem+json").is_some());
    assert!(paths["/v1/events/{event_id}"]["put"]["security"].is_array(), "admin route declares its token");
}
