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

/// The calls Redis has served of each command named, from `INFO commandstats`.
async fn calls(redis: &testkit::RedisServer, commands: &[&str]) -> u64 {
    let mut conn = redis.conn().await;
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    stats
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            // Redis 7 names subcommands apart: `cmdstat_script|exists`.
            let command = name.split('|').next()?;
            commands.contains(&command).then_some(rest)
        })
        .filter_map(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse::<u64>().ok())
        .sum()
}

/// `/readyz` is public: a flood of it (16 clients for 2 s, during a sale) must cost Redis a
/// handful of commands a second, not a check per call (it used to run `INFO`, a probe write
/// and `SCRIPT EXISTS` on every call: 64k commands for 16k calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_readiness_probes_costs_redis_one_check_a_second() {
    // No worker: its fence loop reads INFO and SCRIPT EXISTS four times a second on its own,
    // and this counts what the probes cost (the private Redis is born reconciled).
    let app = spawn_app().await;
    app.api.create_event("drop", 1_000_000, 1).await;
    testkit::wait_until(Duration::from_secs(10), "the gateway ready", || async {
        (app.api.send(Method::GET, "/readyz", &[], None).await.status == StatusCode::OK).then_some(())
    })
    .await;
    const PROBE_COMMANDS: &[&str] = &["info", "script", "set"];
    let before = calls(&app.redis, PROBE_COMMANDS).await;
    let started = Instant::now();
    let flood = Duration::from_secs(2);
    let probes: Vec<_> = (0..16)
        .map(|_| {
            let api = app.api.clone();
            tokio::spawn(async move {
                let mut answered = 0_u64;
                while started.elapsed() < flood {
                    let reply = api.send(Method::GET, "/readyz", &[], None).await;
                    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    // A sale goes on meanwhile.
    let mut buyers = 0;
    while started.elapsed() < flood {
        let reply = app.api.purchase("drop", &format!("buyer-{buyers}"), 1, None).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
        buyers += 1;
    }
    let mut answered = 0;
    for probe in probes {
        answered += probe.await.unwrap();
    }
    let elapsed = started.elapsed();
    let spent = calls(&app.redis, PROBE_COMMANDS).await - before;
    // One check a second is INFO, SET and two SCRIPT EXISTS; the gateway's own Redis watch
    // adds an INFO a second. Bounded by time, not by calls.
    let seconds = elapsed.as_secs() + 1;
    eprintln!("{answered} /readyz answers in {elapsed:?} cost Redis {spent} INFO/SCRIPT/SET commands");
    assert!(answered > 16, "the probes were answered: {answered}");
    assert!(spent <= 12 * seconds, "{answered} probes in {elapsed:?} cost {spent} INFO/SCRIPT/SET commands");
}

/// Unknown event and order ids fall back from Redis to the ledger: a flood of them must not
/// be a database query each (they are remembered as missing for about a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_ids_read_the_ledger_about_once_a_second_not_once_a_request() {
    let pg = testkit::Postgres::start();
    pg.psql("alter system set log_statement = 'all'");
    pg.psql("select pg_reload_conf()");
    let app = crate::helpers::spawn_app_with(|c| {
        c.ledger = flashsale_ledger::LedgerArgs::new(&pg.url()).expect("valid URL");
    })
    .await;
    app.api.create_event("drop", 5, 1).await;
    let started = Instant::now();
    let mut requests = 0_u64;
    while requests < 400 {
        let ghost = format!("ghost-{}", requests % 4);
        app.api.get_event(&ghost).await.assert_problem(404, "event_not_found");
        let order = format!("00000000-0000-4000-8000-00000000000{}", requests % 4);
        app.api.get_order("drop", &order).await.assert_problem(404, "order_not_found");
        requests += 2;
    }
    let elapsed = started.elapsed();
    let log = pg.log();
    let queries = log.matches("from events e where e.event_id").count()
        + log.matches("from orders where event_id = $1 and order_id = $2").count();
    // Four unknown ids of each kind, each read at most once per second remembered.
    let bound = 8 * (elapsed.as_secs() + 1) as usize;
    eprintln!("{requests} reads of unknown ids in {elapsed:?} cost the ledger {queries} queries");
    assert!(queries >= 1, "the ledger was asked at all (log_statement works)");
    assert!(queries <= bound, "{requests} reads of unknown ids in {elapsed:?} cost {queries} ledger queries");
}
