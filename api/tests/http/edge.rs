//! The edge against slow and hostile clients: header-read and idle timeouts, the connection
//! cap, bounded metric labels, a panicking handler, the `Authorization` scheme, times out of
//! range. Raw sockets where the test is about the connection itself.

use std::time::{Duration, Instant};

use axum::routing::get;
use flashsale_shared::config::RedisArgs;
use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::ADMIN_TOKEN;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: flashsale\r\n\r\n";

/// What a raw connection gave back within a deadline.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A whole response (head and `content-length` body), as text.
    Response(String),
    /// The server closed the connection (EOF or reset) before a whole response.
    Closed,
    /// Nothing at all before the deadline.
    Silent,
}

impl Answer {
    #[track_caller]
    fn status(&self) -> u16 {
        match self {
            Answer::Response(text) => text[9..12].parse().expect("a status code"),
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.api.base.trim_start_matches("http://")).await.expect("connect")
}

/// Reads one response from `stream` within `within`.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> Answer {
    let mut received = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Answer::Closed,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&received);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned))
                    .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
                if received.len() >= end + 4 + length {
                    return Answer::Response(text.into_owned());
                }
            }
        }
    };
    tokio::time::timeout(within, read).await.unwrap_or(Answer::Silent)
}

#[tokio::test]
async fn a_trickled_header_is_cut_off_at_the_header_read_timeout() {
    let app = spawn_app_with(|c| c.header_read_timeout_ms = 1000).await;
    let (mut reader, mut writer) = connect(&app).await.into_split();
    let started = Instant::now();
    // One byte every 200 ms, and the head never ends.
    let trickle = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nhost: flashsale\r\nx-slow: ".iter();
        for byte in head.chain(std::iter::repeat(&b'a')) {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let answer = read_answer(&mut reader, Duration::from_secs(3)).await;
    trickle.abort();
    assert_eq!(answer, Answer::Closed, "after {:?}", started.elapsed());

    // A complete request on a fresh connection is still served.
    assert_eq!(app.api.send(Method::GET, "/healthz", &[], None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let app = spawn_app_with(|c| {
        c.header_read_timeout_ms = 500;
        c.idle_timeout_ms = 1500;
    })
    .await;
    let mut tcp = connect(&app).await;
    tcp.write_all(GET_HEALTHZ).await.unwrap();
    assert_eq!(read_answer(&mut tcp, Duration::from_secs(2)).await.status(), 200);

    // Idle for twice the header timeout: still open, the next request is served.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tcp.write_all(GET_HEALTHZ).await.unwrap();
    assert_eq!(read_answer(&mut tcp, Duration::from_secs(2)).await.status(), 200);

    // Idle past the idle timeout: closed by the server.
    let idle_since = Instant::now();
    assert_eq!(read_answer(&mut tcp, Duration::from_millis(4000)).await, Answer::Closed);
    assert!(idle_since.elapsed() >= Duration::from_millis(1000), "closed after {:?}", idle_since.elapsed());
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let app = spawn_app_with(|c| c.max_connections = 2).await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for tcp in [&mut first, &mut second] {
        tcp.write_all(GET_HEALTHZ).await.unwrap();
        assert_eq!(read_answer(tcp, Duration::from_secs(2)).await.status(), 200);
    }

    // The kernel completes the handshake, but the gateway does not accept the third yet.
    let mut third = connect(&app).await;
    third.write_all(GET_HEALTHZ).await.unwrap();
    assert_eq!(read_answer(&mut third, Duration::from_millis(500)).await, Answer::Silent);

    drop(first);
    assert_eq!(read_answer(&mut third, Duration::from_secs(5)).await.status(), 200);
    second.write_all(GET_HEALTHZ).await.unwrap();
    assert_eq!(read_answer(&mut second, Duration::from_secs(2)).await.status(), 200);
}

#[tokio::test]
async fn invented_methods_share_one_metric_label() {
    let app = spawn_app().await;
    let invented = |i: usize| Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
    // The first of them and the first scrape register their series.
    app.api.send(invented(0), "/healthz", &[], None).await;
    app.api.send(invented(0), "/no-such-route", &[], None).await;
    app.api.metrics().await;
    let before = app.api.metrics().await;

    for i in 1..200 {
        let path = if i % 2 == 0 { "/healthz" } else { "/no-such-route" };
        app.api.send(invented(i), path, &[], None).await;
    }
    let after = app.api.metrics().await;
    assert!(!after.contains("FOO"), "a raw method became a label:\n{after}");
    // Routes are templates or `unmatched`, never the raw path.
    assert!(after.contains(r#"method="other",route="/healthz""#), "{after}");
    assert!(after.contains(r#"method="other",route="unmatched""#), "{after}");
    assert!(!after.contains("no-such-route"), "{after}");
    assert_eq!(after.lines().count(), before.lines().count(), "new series:\n{after}");
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_problem_and_the_connection_keeps_serving() {
    async fn bug() -> &'static str {
        panic!("a bug in a handler")
    }
    crate::helpers::init_logs();
    // Redis is never reached by these routes (the connection is lazy).
    let config = flashsale_api::config::Config::new(RedisArgs::new("redis://127.0.0.1:1").unwrap());
    let state = flashsale_api::state::AppState::new(&config).unwrap();
    let routes = axum::Router::new().route("/bug", get(bug)).route("/ok", get(|| async { "ok" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let limits = flashsale_api::serve::Limits::new(&config);
    let app = flashsale_api::router::observed(routes, state);
    tokio::spawn(flashsale_api::serve::serve(listener, app, limits, stop.clone().cancelled_owned()));
    let _stop = stop.drop_guard();

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /bug HTTP/1.1\r\nhost: flashsale\r\nx-request-id: bug-1\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut tcp, Duration::from_secs(2)).await;
    assert_eq!(answer.status(), 500, "{answer:?}");
    let Answer::Response(text) = answer else { unreachable!() };
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\ncontent-type: application/problem+json\r\n"), "{text}");
    assert!(head.contains("\r\nx-request-id: bug-1\r\n"), "{text}");
    let problem: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!((problem["code"].as_str(), problem["status"].as_u64()), (Some("internal"), Some(500)));

    // The same connection goes on serving.
    tcp.write_all(b"GET /ok HTTP/1.1\r\nhost: flashsale\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut tcp, Duration::from_secs(2)).await.status(), 200);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let put = |auth: String| {
        let app = &app;
        async move {
            app.api
                .send(Method::PUT, "/v1/events/drop", &[("authorization", &auth)], Some(&json!({"stock": 5})))
                .await
        }
    };
    assert_eq!(put(format!("bearer {ADMIN_TOKEN}")).await.status, StatusCode::CREATED);
    assert_eq!(put(format!("BEARER   {ADMIN_TOKEN}")).await.status, StatusCode::OK);
    put("bearer wrong-token-0123456789".into()).await.assert_problem(401, "unauthorized");
    put(format!("Basic {ADMIN_TOKEN}")).await.assert_problem(401, "unauthorized");
    put(format!("bearer{ADMIN_TOKEN}")).await.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn times_outside_years_1970_to_9999_are_invalid_fields() {
    let app = spawn_app().await;
    for (field, value) in [
        ("starts_at", "0000-01-01T00:00:00Z"),
        ("starts_at", "1969-12-31T23:59:59Z"),
        ("ends_at", "9999-12-31T23:00:00-05:00"),
    ] {
        let reply = app.api.put_event("when", json!({"stock": 1, field: value})).await;
        reply.assert_problem(422, "invalid_fields");
        assert_eq!(reply.body["invalid_params"][0]["name"], field, "{value}: {reply:?}");
        app.api.get_event("when").await.assert_problem(404, "event_not_found");
    }

    // The edges themselves are fine, and readable afterwards.
    let edges = json!({"stock": 1, "starts_at": "1970-01-01T00:00:00Z", "ends_at": "9999-12-31T23:59:59Z"});
    assert_eq!(app.api.put_event("when", edges).await.status, StatusCode::CREATED);
    let event = app.api.get_event("when").await;
    assert_eq!(event.status, StatusCode::OK, "{event:?}");
    assert_eq!(event.body["ends_at"], "9999-12-31T23:59:59Z");
}
