//! Browsers (CORS) and admins (several tokens, audit lines).

use std::time::Duration;

use flashsale_api::config::{AdminTokens, CorsOrigins};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app_with;

const SHOP: &str = "https://shop.example";

#[tokio::test]
async fn allowed_origins_get_cors_headers_and_preflights_are_answered() {
    let app = spawn_app_with(|c| c.cors_allowed_origins = Some(CorsOrigins::parse(SHOP).unwrap())).await;
    app.api.create_event("drop", 10, 1).await;
    let preflight = [
        ("origin", SHOP),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "authorization, content-type, idempotency-key"),
    ];
    let answer = app.api.send(Method::OPTIONS, "/v1/events/drop/purchases", &preflight, None).await;
    assert!(answer.status.is_success(), "{answer:?}");
    assert_eq!(answer.header("access-control-allow-origin"), Some(SHOP));
    let allowed = answer.header("access-control-allow-headers").unwrap_or("").to_ascii_lowercase();
    for header in ["authorization", "content-type", "idempotency-key"] {
        assert!(allowed.contains(header), "{header} not allowed: {answer:?}");
    }
    assert!(answer.header("access-control-allow-methods").unwrap_or("").contains("POST"), "{answer:?}");

    // A real request, an error included, carries the origin and exposes what clients read.
    let reply = app.api.send(Method::GET, "/v1/events/none-such", &[("origin", SHOP)], None).await;
    reply.assert_problem(404, "event_not_found");
    assert_eq!(reply.header("access-control-allow-origin"), Some(SHOP));
    let exposed = reply.header("access-control-expose-headers").unwrap_or("").to_ascii_lowercase();
    assert!(exposed.contains("location") && exposed.contains("retry-after"), "{reply:?}");

    let stranger = [("origin", "https://evil.example"), ("access-control-request-method", "POST")];
    let answer = app.api.send(Method::OPTIONS, "/v1/events/drop/purchases", &stranger, None).await;
    assert_eq!(answer.header("access-control-allow-origin"), None, "{answer:?}");

    // Off by default: no CORS header, and OPTIONS is just another method.
    let plain = spawn_app_with(|_| {}).await;
    plain.api.create_event("drop", 10, 1).await;
    let reply = plain.api.send(Method::GET, "/v1/events/drop", &[("origin", SHOP)], None).await;
    assert_eq!((reply.status, reply.header("access-control-allow-origin")), (StatusCode::OK, None));
    let answer = plain.api.send(Method::OPTIONS, "/v1/events/drop/purchases", &preflight, None).await;
    answer.assert_problem(405, "method_not_allowed");
}

#[tokio::test]
async fn several_admin_tokens_each_work_and_admin_token_still_does() {
    let (old, new) = ("admin-token-old-0123456789", "admin-token-new-0123456789");
    let app =
        spawn_app_with(|c| c.admin_tokens = Some(AdminTokens::parse(&format!("{old}, {new}")).unwrap()))
            .await;
    let put = |token: &str, stock: u64| {
        let auth = format!("Bearer {token}");
        let api = app.api.clone();
        async move {
            let body = json!({"stock": stock});
            api.send(Method::PUT, "/v1/events/drop", &[("authorization", &auth)], Some(&body)).await
        }
    };
    assert_eq!(put(old, 5).await.status, StatusCode::CREATED);
    assert_eq!(put(new, 6).await.status, StatusCode::OK);
    assert_eq!(put(testkit::ADMIN_TOKEN, 7).await.status, StatusCode::OK, "ADMIN_TOKEN keeps working");
    put("admin-token-xxx-0123456789", 8).await.assert_problem(401, "unauthorized");
    assert_eq!(app.api.get_event("drop").await.body["stock"], 7);
}

#[tokio::test]
async fn every_admin_write_is_one_audit_line_naming_the_token_by_fingerprint() {
    let redis = testkit::RedisServer::start();
    let token = "admin-token-audit-0123456789";
    let gateway =
        testkit::Gateway::start(&redis.url(), &[("ADMIN_TOKENS", token), ("RUST_LOG", "warn,audit=info")])
            .await;
    let api = gateway.api();
    let auth = format!("Bearer {token}");
    let put = |body: serde_json::Value, auth: String| {
        let api = api.clone();
        async move { api.send(Method::PUT, "/v1/events/audited", &[("authorization", &auth)], Some(&body)).await }
    };
    assert_eq!(put(json!({"stock": 5}), auth.clone()).await.status, StatusCode::CREATED);
    put(json!({"stock": 0}), auth.clone()).await.assert_problem(422, "invalid_fields");
    put(json!({"stock": 5}), "Bearer wrong-token-0123456789".into())
        .await
        .assert_problem(401, "unauthorized");

    // The first 8 hex digits of sha256("admin-token-audit-0123456789") (`sha256sum`).
    let fingerprint = "f1c4ac6c";
    let lines = testkit::wait_until(Duration::from_secs(5), "three audit lines", || async {
        let output = gateway.output();
        let lines: Vec<String> = output.lines().filter(|l| l.contains("audit")).map(str::to_owned).collect();
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let who = format!("admin=token:{fingerprint} action=\"put_event\" event=\"audited\"");
    assert!(lines[0].contains(&who) && lines[0].ends_with("result=\"201\""), "{lines:#?}");
    assert!(lines[1].contains(&who) && lines[1].ends_with("result=\"422 invalid_fields\""), "{lines:#?}");
    assert!(
        lines[2].contains("admin=\"none\" method=PUT") && lines[2].ends_with("result=\"unauthorized\""),
        "{lines:#?}"
    );
    let all = lines.join("\n");
    assert!(!all.contains(token) && !all.contains("wrong-token"), "a token was logged: {all}");
}
