//! Infrastructure faults never fail, lose or double an order: a full Redis, a worker that
//! crash-loops, an eviction policy that could evict, a replica, a slow client, bad settings.
//! Each scenario reproduces a failure found on a28e54c (run these tests against its binaries
//! with `FLASHSALE_BIN_DIR` to see them fail) and ends with the books check.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::Value;
use testkit::{Gateway, RedisServer, Worker, assert_books_balance, run_to_exit, wait_drained, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{FAST_WORKER, crowd};

/// The dead letters of `event`, as `flashsale-worker dead-letters list` prints them.
async fn dead_letters(redis: &RedisServer, event: &str) -> Vec<Value> {
    let (status, out) = run_to_exit(
        "flashsale-worker",
        &[("REDIS_URL", &redis.url())],
        &["dead-letters", "list", "--event", event],
        Duration::from_secs(10),
    )
    .await;
    assert!(status.success(), "dead-letters list: {out}");
    out.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_redis_fails_no_order_and_every_one_is_confirmed_afterwards() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 300, 1).await;
    api.create_event("later", 10, 1).await;
    assert_eq!(crowd(std::slice::from_ref(&api), "drop", 300, 32).await.count(202), 300);

    // Redis fills up (noeviction) just as the workers start: they read the backlog (reads are
    // served when full) and every finalize is refused, for about three seconds.
    redis.config_set("maxmemory", "1").await;
    let knobs = [FAST_WORKER, &[("CLAIM_MIN_IDLE_MS", "300"), ("BATCH_SIZE", "20")]].concat();
    let workers = [
        Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await,
        Worker::start(&redis.url(), &pg.url(), "worker-b", &knobs).await,
    ];
    let full_since = Instant::now();
    // While it is full a purchase answers 503, says why, and changes nothing.
    let refused = api.purchase("later", "someone", 1, None).await;
    refused.assert_problem(503, "unavailable");
    assert_eq!(refused.body["outcome_unknown"], false, "{refused:?}");
    assert!(refused.body["detail"].as_str().unwrap().contains("full"), "{refused:?}");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(full_since.elapsed())).await;
    redis.config_set("maxmemory", "0").await;

    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!(
        (books.units_confirmed, books.orders_failed, books.dead_letters, books.remaining),
        (300, 0, 0, 0),
        "every accepted order confirmed, none failed or dead-lettered"
    );
    let later = api.get_event("later").await;
    assert_eq!(later.body["remaining"], 10, "the refused purchase changed nothing");
    for worker in &workers {
        let metrics = worker.metrics().await;
        assert!(testkit::metric_value(&metrics, "flashsale_worker_redis_errors_total", &[]) > Some(0.0));
    }
    assert_books_balance(&redis.url(), "drop", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_crash_loops_fails_no_order() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 400, 1).await;
    assert_eq!(crowd(std::slice::from_ref(&api), "drop", 400, 32).await.count(202), 400);

    // A worker that is killed again and again while it holds entries, restarting under its
    // own name each time (an orchestrator's crash loop), with a low MAX_DELIVERIES.
    let knobs = [FAST_WORKER, &[("BATCH_SIZE", "5"), ("MAX_DELIVERIES", "1")]].concat();
    let mut conn = redis.conn().await;
    let keys = flashsale_shared::EventKeys::new(&flashsale_shared::EventId::parse("drop").unwrap());
    let mut worker = Worker::start(&redis.url(), &pg.url(), "looping", &knobs).await;
    let mut kills = 0;
    while kills < 8 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut held = Vec::new();
        while held.is_empty() && Instant::now() < deadline {
            held = flashsale_shared::stream::own_pending(&mut conn, &keys, "looping", 10).await.unwrap();
        }
        worker.signal(Signal::SIGKILL);
        worker.wait_exit(Duration::from_secs(5)).await;
        if !held.is_empty() {
            kills += 1;
        }
        let left = api.get_event("drop").await.body["confirmed"].as_u64().unwrap();
        if left >= 390 {
            break; // not enough left to go on killing it mid-batch
        }
        worker.restart().await;
    }
    assert!(kills >= 3, "the worker was killed holding entries {kills} times");
    worker.restart().await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!(
        (books.units_confirmed, books.orders_failed, books.dead_letters),
        (400, 0, 0),
        "crashes are not poison: every order confirmed"
    );
    assert_books_balance(&redis.url(), "drop", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_order_stays_pending_until_an_operator_redrives_or_fails_it() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 3, 1).await;
    let alice = api.purchase("drop", "alice", 1, None).await.body["order_id"].as_str().unwrap().to_owned();
    let bob = api.purchase("drop", "bob", 1, None).await.body["order_id"].as_str().unwrap().to_owned();

    // Corrupt data that makes the confirm step itself fail (a non-integer counter): real
    // poison, unlike any fault of Redis. Each failed attempt is counted; past MAX_DELIVERIES
    // the entry is parked, its order still pending and its unit still held.
    crate::common::set_confirmed_counter(&redis, "drop", "garbage").await;
    let knobs = [FAST_WORKER, &[("MAX_DELIVERIES", "2")]].concat();
    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await;
    let parked = wait_until(Duration::from_secs(15), "both entries to be parked", || async {
        let letters = dead_letters(&redis, "drop").await;
        (letters.len() == 2).then_some(letters)
    })
    .await;
    for letter in &parked {
        assert_eq!(letter["reason"], "max_attempts", "{letter}");
        assert_eq!(letter["parked"], true, "{letter}");
        assert_eq!(letter["order_status"], "pending", "{letter}");
        assert_eq!(letter["deliveries"], 3, "two failures allowed, the third parks: {letter}");
        assert!(letter["error"].as_str().unwrap().contains("not an integer"), "{letter}");
    }
    assert_eq!(api.get_order("drop", &alice).await.body["status"], "pending");
    assert_eq!(api.get_event("drop").await.body["remaining"], 1, "both units still held");
    let metrics = worker.metrics().await;
    assert_eq!(
        testkit::metric_value(
            &metrics,
            "flashsale_orders_dead_lettered_total",
            &[("reason", "max_attempts")]
        ),
        Some(2.0)
    );
    let books = assert_books_balance(&redis.url(), "drop", false).await;
    assert_eq!((books.orders_parked, books.units_parked), (2, 2));
    // Drained: the worker has nothing left to do; the parked orders wait for an operator.
    assert_books_balance(&redis.url(), "drop", true).await;

    // The operator repairs the data, redrives alice's order (a worker confirms it) and fails
    // bob's (his unit goes back on sale and to his allowance).
    crate::common::set_confirmed_counter(&redis, "drop", "0").await;
    let id_of = |order: &str| {
        parked.iter().find(|l| l["order_id"] == order).unwrap()["id"].as_str().unwrap().to_owned()
    };
    let env = [("REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, out) = run_to_exit(
        "flashsale-worker",
        &env,
        &["dead-letters", "redrive", "--event", "drop", "--entry", &id_of(&alice)],
        Duration::from_secs(10),
    )
    .await;
    assert!(status.success() && out.contains("\"redriven\""), "{out}");
    let (status, out) = run_to_exit(
        "flashsale-worker",
        &env,
        &["dead-letters", "fail", "--event", "drop", "--entry", &id_of(&bob)],
        Duration::from_secs(10),
    )
    .await;
    assert!(status.success() && out.contains("\"failed\""), "{out}");
    api.wait_order_status("drop", &alice, "confirmed").await;
    assert_eq!(api.get_order("drop", &bob).await.body["status"], "failed");
    assert_eq!(api.purchase("drop", "bob", 1, Some("second-try")).await.status, StatusCode::ACCEPTED);
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(15)).await;
    assert_eq!(
        (books.units_confirmed, books.units_failed, books.orders_parked, books.dead_letters, books.remaining),
        (2, 1, 0, 0, 1)
    );
    // A dead letter resolved is gone: resolving it again is refused.
    let (status, out) = run_to_exit(
        "flashsale-worker",
        &env,
        &["dead-letters", "fail", "--event", "drop", "--entry", &id_of(&bob)],
        Duration::from_secs(10),
    )
    .await;
    assert!(!status.success() && out.contains("not_found"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_volatile_lru_a_full_redis_never_evicts_an_idempotency_entry() {
    // A common managed-Redis default. Keys with a TTL are the ones it evicts first: no key
    // of an event may have one, or a buyer's retry after eviction buys a second time.
    let redis = RedisServer::start();
    redis.config_set("maxmemory-policy", "volatile-lru").await;
    let gateway = Gateway::start(&redis.url(), &[("IDEMPOTENCY_RETENTION_SECS", "3600")]).await;
    let api = gateway.api();
    let ends = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let ends = ends.format(&time::format_description::well_known::Rfc3339).unwrap();
    let created = api.put_event("drop", serde_json::json!({"stock": 1000, "ends_at": ends})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let users: Vec<String> = (0..200).map(|i| format!("buyer-{i}")).collect();
    let first: Vec<String> = futures_util::future::join_all(
        users.iter().map(|user| api.purchase("drop", user, 1, Some("checkout-1"))),
    )
    .await
    .into_iter()
    .map(|r| {
        assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
        r.body["order_id"].as_str().unwrap().to_owned()
    })
    .collect();

    // Memory pressure: other data with TTLs fills Redis up to its limit, so it evicts.
    let mut conn = redis.conn().await;
    let used: String = redis::cmd("INFO").arg("memory").query_async(&mut conn).await.unwrap();
    let used: u64 =
        used.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    redis.config_set("maxmemory", &(used + 2_000_000).to_string()).await;
    let filler = "x".repeat(10_000);
    for i in 0..600 {
        let _: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("cache:{i}"))
            .arg(&filler)
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await;
    }
    let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap();
    let evicted: u64 =
        stats.lines().find_map(|l| l.strip_prefix("evicted_keys:")).unwrap().trim().parse().unwrap();
    assert!(evicted > 0, "the scenario must make Redis evict");

    // Every buyer retries: every retry is a replay of the same order.
    for (i, order) in first.iter().enumerate() {
        let retry = api.purchase("drop", &format!("buyer-{i}"), 1, Some("checkout-1")).await;
        assert_eq!(retry.status, StatusCode::OK, "buyer-{i} bought twice: {retry:?}");
        assert_eq!(retry.body["order_id"].as_str(), Some(order.as_str()));
    }
    assert_books_balance(&redis.url(), "drop", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_an_allkeys_policy_the_gateway_refuses_to_sell_and_is_not_ready() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 1000, 1).await;
    assert_eq!(api.purchase("drop", "alice", 1, None).await.status, StatusCode::ACCEPTED);

    // The policy is re-read every second: within that, purchases stop.
    redis.config_set("maxmemory-policy", "allkeys-lru").await;
    let mut attempt = 0;
    let refused = wait_until(Duration::from_secs(5), "purchases to be refused", || {
        attempt += 1;
        let api = api.clone();
        async move {
            let reply = api.purchase("drop", &format!("early-{attempt}"), 1, None).await;
            (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
        }
    })
    .await;
    let remaining = api.get_event("drop").await.body["remaining"].clone();
    refused.assert_problem(503, "unavailable");
    assert!(
        refused.body["detail"].as_str().unwrap().contains("maxmemory-policy is allkeys-lru"),
        "{refused:?}"
    );
    assert_eq!(refused.body["outcome_unknown"], false);
    let ready = api.send(reqwest::Method::GET, "/readyz", &[], None).await;
    ready.assert_problem(503, "unavailable");
    for i in 0..20 {
        let reply = api.purchase("drop", &format!("late-{i}"), 1, None).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    }
    assert_eq!(api.get_event("drop").await.body["remaining"], remaining, "nothing sold once refused");

    redis.config_set("maxmemory-policy", "noeviction").await;
    wait_until(Duration::from_secs(5), "sales to resume", || async {
        (api.purchase("drop", "bob", 1, None).await.status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
    assert_eq!(api.send(reqwest::Method::GET, "/readyz", &[], None).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_is_not_ready_and_read_only_replaces_the_connection() {
    let redis = RedisServer::start();
    let other = RedisServer::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 10, 1).await;
    assert_eq!(api.purchase("drop", "alice", 1, None).await.status, StatusCode::ACCEPTED);
    let clients = |redis: &RedisServer| {
        let client = redis.client();
        async move {
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
            // Our own connection names itself `cmd=client|list`; keep the gateway's.
            list.lines()
                .filter(|l| !l.contains("cmd=client|list"))
                .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    let before = clients(&redis).await;

    // A failover demotes the server the gateway talks to: it becomes a replica.
    let mut conn = redis.conn().await;
    let _: () =
        redis::cmd("REPLICAOF").arg("127.0.0.1").arg(other.port()).query_async(&mut conn).await.unwrap();
    let refused = wait_until(Duration::from_secs(5), "purchases to be refused", || async {
        let reply = api.purchase("drop", "bob", 1, None).await;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await;
    assert_eq!(refused.body["outcome_unknown"], false, "{refused:?}");
    let ready = api.send(reqwest::Method::GET, "/readyz", &[], None).await;
    ready.assert_problem(503, "unavailable");
    // READONLY made the gateway drop its connection and open a new one (after a real
    // failover, to wherever REDIS_URL now points).
    let after = clients(&redis).await;
    assert!(
        before.iter().any(|id| !after.contains(id)),
        "a connection was replaced: {before:?} -> {after:?}"
    );

    let _: () = redis::cmd("REPLICAOF").arg("NO").arg("ONE").query_async(&mut conn).await.unwrap();
    wait_until(Duration::from_secs(5), "readiness to return", || async {
        (api.send(reqwest::Method::GET, "/readyz", &[], None).await.status == StatusCode::OK).then_some(())
    })
    .await;
}

/// Sends a purchase whose body arrives `delay` after its headers; returns the raw response.
async fn purchase_with_slow_body(gateway: &Gateway, delay: Duration, on_body_sent: impl FnOnce()) -> String {
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let body = r#"{"user_id": "slowpoke", "quantity": 1}"#;
    let head = format!(
        "POST /v1/events/drop/purchases HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(delay).await;
    // The server may already have answered and closed: a failed write is part of the answer.
    let _ = stream.write_all(body.as_bytes()).await;
    on_body_sent();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_never_says_nothing_changed_when_the_order_exists() {
    let redis = RedisServer::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 10, 1).await;

    // The issue's reproduction: the body arrives after 2.4 s and Redis then pauses 1.3 s.
    let pid = Pid::from_raw(redis.pid() as i32);
    let response = purchase_with_slow_body(&gateway, Duration::from_millis(2400), || {
        kill(pid, Signal::SIGSTOP).unwrap();
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    kill(pid, Signal::SIGCONT).unwrap();
    let exists = api.purchase("drop", "slowpoke", 1, None).await.status == StatusCode::OK;
    let says_nothing_changed =
        response.starts_with("HTTP/1.1 408") || response.contains("\"outcome_unknown\":false");
    assert!(
        !(exists && says_nothing_changed),
        "the answer said nothing changed but the order exists:\n{response}"
    );
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "a slow body is a 408 before anything is sent:\n{response}"
    );
    assert!(response.contains("request_timeout"), "{response}");

    // Redis frozen while the script is out: the outcome is unknown, and the retry replays it.
    kill(pid, Signal::SIGSTOP).unwrap();
    let frozen = api.purchase("drop", "bob", 1, Some("k1")).await;
    kill(pid, Signal::SIGCONT).unwrap();
    frozen.assert_problem(503, "unavailable");
    assert_eq!(frozen.body["outcome_unknown"], true, "{frozen:?}");
    assert!(frozen.body["detail"].as_str().unwrap().contains("did not answer in time"), "{frozen:?}");
    let retry = wait_until(Duration::from_secs(5), "the retry to be answered", || async {
        let reply = api.purchase("drop", "bob", 1, Some("k1")).await;
        (reply.status != StatusCode::SERVICE_UNAVAILABLE).then_some(reply)
    })
    .await;
    assert_eq!(retry.status, StatusCode::OK, "the frozen purchase had been placed: {retry:?}");
    assert_books_balance(&redis.url(), "drop", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_stop_start_up_naming_the_setting_and_never_a_secret() {
    let redis = RedisServer::start();
    let url = redis.url();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = vec![("REDIS_URL", url.clone()), ("LISTEN_ADDR", "127.0.0.1:0".to_owned())];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    };
    for (env, names) in [
        (with(&[("IDEMPOTENCY_RETENTION_SECS", "10000000000000000")]), vec!["IDEMPOTENCY_RETENTION_SECS"]),
        (
            with(&[("REDIS_TIMEOUT_MS", "3000"), ("REQUEST_TIMEOUT_MS", "3000")]),
            vec!["REQUEST_TIMEOUT_MS", "REDIS_TIMEOUT_MS"],
        ),
        (with(&[("SHUTDOWN_TIMEOUT_MS", "99999999999")]), vec!["SHUTDOWN_TIMEOUT_MS"]),
        (with(&[("ADMIN_TOKEN", "hunter2-short")]), vec!["ADMIN_TOKEN"]),
        (vec![("REDIS_URL", "redis://:hunter2@@[bad".to_owned())], vec!["REDIS_URL"]),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, out) = run_to_exit("flashsale-api", &env, &[], Duration::from_secs(10)).await;
        assert!(!status.success(), "{env:?} must stop start-up: {out}");
        for name in names {
            assert!(out.contains(name), "the message names {name}: {out}");
        }
        assert!(!out.contains("hunter2"), "a secret reached the output: {out}");
    }

    // A good start-up with a password in the URL logs where Redis is, never the password.
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("hunter2@x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let secret_url = format!("redis://:hunter2%40x@127.0.0.1:{}/0", redis.port());
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut gateway = tokio::process::Command::new(testkit::binary("flashsale-api"))
        .env("REDIS_URL", &secret_url)
        .env("LISTEN_ADDR", &addr)
        .env("RUST_LOG", "info")
        .env("ADMIN_TOKEN", testkit::ADMIN_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ready = format!("http://{addr}/readyz");
    wait_until(Duration::from_secs(20), "the gateway to be ready with the password", || async {
        reqwest::get(&ready).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    kill(Pid::from_raw(gateway.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let _ = gateway.wait().await;
    let mut out = String::new();
    gateway.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
    gateway.stderr.take().unwrap().read_to_string(&mut out).await.unwrap();
    assert!(out.contains("flashsale-api listening"), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}
