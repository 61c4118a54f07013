//! Fault tolerance: processes die, stop or are told to stop in the middle of a sale, and
//! the books still balance with every accepted order confirmed exactly once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flashsale_shared::EventKeys;
use flashsale_shared::keys::CONSUMER_GROUP;
use nix::sys::signal::Signal;
use redis::aio::MultiplexedConnection;
use reqwest::StatusCode;
use testkit::{
    Api, Durability, Gateway, RedisServer, Worker, assert_books_balance, metric_value, wait_drained,
    wait_until,
};

use crate::common::{FAST_WORKER, counter, crowd, plant_order};

fn keys(event: &str) -> EventKeys {
    EventKeys::new(&flashsale_shared::EventId::parse(event).unwrap())
}

/// Entries delivered to `consumer` and not yet acknowledged.
async fn pending_of(conn: &mut MultiplexedConnection, event: &str, consumer: &str) -> i64 {
    let reply: redis::Value =
        redis::cmd("XPENDING").arg(keys(event).stream).arg(CONSUMER_GROUP).query_async(conn).await.unwrap();
    let redis::Value::Array(parts) = reply else { return 0 };
    let Some(redis::Value::Array(consumers)) = parts.get(3) else { return 0 };
    consumers
        .iter()
        .filter_map(|c| match c {
            redis::Value::Array(pair) => Some(pair),
            _ => None,
        })
        .find(|pair| matches!(&pair[0], redis::Value::BulkString(name) if name == consumer.as_bytes()))
        .and_then(|pair| match &pair[1] {
            redis::Value::BulkString(n) => std::str::from_utf8(n).ok()?.parse().ok(),
            _ => None,
        })
        .unwrap_or(0)
}

/// Places `stock` orders with no worker running, so a backlog waits on the stream.
async fn backlog(redis: &RedisServer, event: &str, stock: usize) -> Gateway {
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event(event, stock as u64, 1).await;
    let outcome = crowd(&[api], event, stock, 64).await;
    assert_eq!(outcome.count(202), stock);
    gateway
}

/// Starts `worker` and interrupts it with `signal` at a moment it holds delivered but
/// unacknowledged entries, retrying (restart + signal) until that moment is caught.
async fn interrupt_while_holding(
    worker: &mut Worker,
    conn: &mut MultiplexedConnection,
    event: &str,
    name: &str,
    signal: Signal,
) -> i64 {
    for _ in 0..20 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while pending_of(conn, event, name).await == 0 && Instant::now() < deadline {}
        worker.signal(signal);
        // A command the worker wrote just before the signal still runs in Redis (a finalize
        // may acknowledge what looked held): let that land before counting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held = pending_of(conn, event, name).await;
        if held > 0 {
            return held;
        }
        // It acknowledged everything in hand just before the signal: try again.
        match signal {
            Signal::SIGSTOP => worker.signal(Signal::SIGCONT),
            _ => {
                worker.wait_exit(Duration::from_secs(5)).await;
                worker.restart().await;
            }
        }
    }
    panic!("never caught {name} holding entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_batch_loses_and_doubles_nothing() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let _gateway = backlog(&redis, "drop", 3000).await;
    let mut conn = redis.conn().await;
    let slow = [FAST_WORKER, &[("BATCH_SIZE", "10")]].concat();
    let mut a = Worker::start(&redis.url(), &pg.url(), "worker-a", &slow).await;
    let held = interrupt_while_holding(&mut a, &mut conn, "drop", "worker-a", Signal::SIGKILL).await;
    assert!(!a.wait_exit(Duration::from_secs(5)).await.success(), "SIGKILL is not a clean exit");

    // Another worker takes over, and the killed one comes back under its own name.
    let b = Worker::start(&redis.url(), &pg.url(), "worker-b", FAST_WORKER).await;
    a.restart().await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!((books.units_confirmed, books.confirmed_counter, books.remaining), (3000, 3000, 0));
    assert_eq!(
        pending_of(&mut conn, "drop", "worker-a").await,
        0,
        "the {held} entries it held were finished"
    );
    let after_restart = counter(&a.metrics().await, "flashsale_orders_finalized_total")
        + counter(&b.metrics().await, "flashsale_orders_finalized_total");
    assert!(after_restart <= 3000.0);
    assert_books_balance(&redis.url(), "drop", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_worker_is_claimed_from_and_its_late_batch_changes_nothing() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let _gateway = backlog(&redis, "drop", 3000).await;
    let mut conn = redis.conn().await;
    let knobs = [FAST_WORKER, &[("BATCH_SIZE", "50"), ("CLAIM_MIN_IDLE_MS", "800")]].concat();
    let mut a = Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await;
    let held = interrupt_while_holding(&mut a, &mut conn, "drop", "worker-a", Signal::SIGSTOP).await;

    let b = Worker::start(&redis.url(), &pg.url(), "worker-b", &knobs).await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!(books.units_confirmed, 3000);
    assert!(counter(&b.metrics().await, "flashsale_entries_claimed_total") > 0.0, "b claimed a's {held}");
    assert_eq!(pending_of(&mut conn, "drop", "worker-a").await, 0, "nothing left with the stopped worker");

    a.signal(Signal::SIGCONT);
    // A wakes up with its stale batch; whatever it does with it must change nothing.
    wait_until(Duration::from_secs(10), "worker-a to be responsive again", || async {
        reqwest::get(format!("http://{}/healthz", a.metrics_addr))
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let finalized =
        counter(&ma, "flashsale_orders_finalized_total") + counter(&mb, "flashsale_orders_finalized_total");
    assert_eq!(finalized, 3000.0, "every order finalized exactly once between the two workers");
    let books = assert_books_balance(&redis.url(), "drop", true).await;
    assert_eq!((books.units_confirmed, books.confirmed_counter), (3000, 3000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_entry_is_dead_lettered_and_the_orders_around_it_confirmed() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 40, 1).await;
    let mut conn = redis.conn().await;
    let keys = keys("drop");
    assert_eq!(crowd(std::slice::from_ref(&api), "drop", 10, 8).await.count(202), 10);
    // Entries written by hand, not by purchase.lua: one with no order field, one naming an
    // order Redis does not know, and one naming an order record nobody can read.
    let corrupt = "00000000-0000-4000-8000-00000000c0de";
    let _: () = redis::cmd("HSET")
        .arg(&keys.orders)
        .arg(corrupt)
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    for (field, value) in
        [("bogus", "junk"), ("order", "00000000-0000-4000-8000-000000000000"), ("order", corrupt)]
    {
        let _: String = redis::cmd("XADD")
            .arg(&keys.stream)
            .arg("*")
            .arg(field)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let more: Vec<_> = (10..20).map(|i| format!("late-{i}")).collect();
    for user in &more {
        assert_eq!(api.purchase("drop", user, 1, None).await.status, StatusCode::ACCEPTED);
    }

    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    wait_until(Duration::from_secs(20), "three dead letters", || {
        let mut conn = conn.clone();
        let dead = keys.dead.clone();
        async move { (redis::cmd("XLEN").arg(&dead).query_async::<u64>(&mut conn).await.ok()? == 3).then_some(()) }
    })
    .await;
    // The books rightly flag a record nobody can read; an operator would remove it.
    let _: () = redis::cmd("HDEL").arg(&keys.orders).arg(corrupt).query_async(&mut conn).await.unwrap();
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(20)).await;
    assert_eq!((books.units_confirmed, books.orders_failed), (20, 0));
    let dead: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(&keys.dead).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, fields)| fields.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.clone()).unwrap())
        .collect();
    assert_eq!(reasons, ["unparseable", "unknown_order", "corrupt_order"]);
    wait_until(Duration::from_secs(5), "the dead-letter counters", || async {
        let metrics = worker.metrics().await;
        let by =
            |reason| metric_value(&metrics, "flashsale_orders_dead_lettered_total", &[("reason", reason)]);
        (by("unparseable") == Some(1.0)
            && by("unknown_order") == Some(1.0)
            && by("corrupt_order") == Some(1.0))
        .then_some(())
    })
    .await;
    assert_books_balance(&redis.url(), "drop", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_ledger_cannot_hold_is_parked_never_confirmed_without_a_row() {
    // A pending record of the right shape (finalize.lua would confirm it) whose user id is
    // outside the domain, so no ledger row can be made of it: written by hand, no script does.
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 10, 1).await;
    let mut conn = redis.conn().await;
    let keys = keys("drop");
    let odd = "00000000-0000-4000-8000-0000000000dd";
    plant_order(&mut conn, &keys, odd, "p|1|1764064800000||not a user").await;
    assert_eq!(api.purchase("drop", "alice", 1, None).await.status, StatusCode::ACCEPTED);

    let _worker = Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await;
    wait_until(Duration::from_secs(30), "the odd entry parked", || {
        let mut conn = conn.clone();
        let dead = keys.dead.clone();
        async move { (redis::cmd("XLEN").arg(&dead).query_async::<u64>(&mut conn).await.ok()? == 1).then_some(()) }
    })
    .await;
    let dead: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(&keys.dead).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let reason = dead[0].1.iter().find(|(k, _)| k == "reason").map(|(_, v)| v.as_str());
    assert_eq!(reason, Some("max_attempts"), "refused by the worker, as the ledger would refuse it");
    let record: String = redis::cmd("HGET").arg(&keys.orders).arg(odd).query_async(&mut conn).await.unwrap();
    assert!(record.starts_with("p|"), "still pending, never confirmed: {record}");
    assert_eq!(pg.psql(&format!("select count(*) from orders where order_id = '{odd}'")), "0");
    // The buyer's order beside it went through as usual.
    assert_eq!(pg.psql("select count(*) from orders where event_id = 'drop' and status = 'confirmed'"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_delivered_many_times_by_a_dying_consumer_is_still_confirmed() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("drop", 1, 1).await;
    let placed = api.purchase("drop", "alice", 1, None).await;
    let order_id = placed.body["order_id"].as_str().unwrap().to_owned();

    // A consumer that keeps dying on the entry, re-reading it each time: six deliveries
    // (`XREADGROUP ... 0` counts one each), never acknowledged. Delivery counts say nothing
    // about the entry: a crash loop or an outage raises them just the same.
    let mut conn = redis.conn().await;
    let keys = keys("drop");
    flashsale_shared::stream::ensure_group(&mut conn, &keys).await.unwrap();
    for id in [">", "0", "0", "0", "0", "0"] {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(CONSUMER_GROUP)
            .arg("doomed")
            .arg("STREAMS")
            .arg(&keys.stream)
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let knobs = [FAST_WORKER, &[("CLAIM_MIN_IDLE_MS", "200"), ("MAX_DELIVERIES", "5")]].concat();
    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &knobs).await;
    api.wait_order_status("drop", &order_id, "confirmed").await;
    assert_eq!(counter(&worker.metrics().await, "flashsale_entries_claimed_total"), 1.0);
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(10)).await;
    assert_eq!((books.units_confirmed, books.orders_failed, books.dead_letters), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_sale_with_aof_always_loses_no_acknowledged_order() {
    let mut redis = RedisServer::start_with(Durability::AofAlways);
    let pg = testkit::Postgres::start();
    let url = redis.url();
    let gateway = Gateway::start(&url, &[("REDIS_TIMEOUT_MS", "300")]).await;
    let _worker = Worker::start(&url, &pg.url(), "worker-a", FAST_WORKER).await;
    let api = gateway.api();
    api.create_event("drop", 300, 1).await;

    // Buyers retry every 503 with the same user (the problem detail's advice); every single
    // answer, before, during and after the outage, must be a known one and come fast.
    let sale = tokio::spawn(buyers_recording_every_answer(api.clone(), 1500, 48));
    wait_until(Duration::from_secs(10), "the sale to be under way", || async {
        (api.get_event("drop").await.body["remaining"].as_u64() < Some(250)).then_some(())
    })
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(800)).await; // the outage itself
    redis.restart();
    let (answers, holders) = sale.await.unwrap();

    let slowest = answers.iter().map(|(_, took)| *took).max().unwrap();
    assert!(slowest < Duration::from_millis(2500), "an answer took {slowest:?}");
    let statuses: HashSet<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(statuses.is_subset(&HashSet::from([200, 202, 409, 503])), "unexpected statuses {statuses:?}");
    assert!(statuses.contains(&503), "the outage was seen");

    let books = wait_drained(&url, "drop", Duration::from_secs(30)).await;
    let sold = books.stock - books.remaining;
    let distinct: HashSet<_> = holders.iter().collect();
    assert_eq!(sold, 300, "the sale sold out");
    assert_eq!(distinct.len() as i64, sold, "every sold unit is an order some buyer holds");
    assert_eq!(books.units_confirmed, sold, "and every one of them was confirmed");
    assert_books_balance(&url, "drop", true).await;
}

/// Like `crowd`, but records every answer with its latency, and returns the order ids
/// buyers ended up holding.
async fn buyers_recording_every_answer(
    api: Api,
    buyers: usize,
    concurrency: usize,
) -> (Vec<(u16, Duration)>, Vec<String>) {
    use futures_util::StreamExt;
    /// One buyer's answers (status, latency) and the order it ended up holding.
    type Buyer = (Vec<(u16, Duration)>, Option<String>);
    let results: Vec<Buyer> = futures_util::stream::iter(0..buyers)
        .map(|i| {
            let api = api.clone();
            async move {
                let user = format!("buyer-{i}");
                let mut answers = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let started = Instant::now();
                    let reply = api.purchase("drop", &user, 1, None).await;
                    answers.push((reply.status.as_u16(), started.elapsed()));
                    if reply.status != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                        let held = matches!(reply.status, StatusCode::ACCEPTED | StatusCode::OK)
                            .then(|| reply.body["order_id"].as_str().unwrap().to_owned());
                        return (answers, held);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut answers = Vec::new();
    let mut holders = Vec::new();
    for (a, held) in results {
        answers.extend(a);
        holders.extend(held);
    }
    (answers, holders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_worker_and_gateway_cleanly_under_load() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let mut gateway = Gateway::start(&redis.url(), &[]).await;
    let mut worker =
        Worker::start(&redis.url(), &pg.url(), "worker-a", &[("BLOCK_MS", "1000"), ("BATCH_SIZE", "20")])
            .await;
    let api = gateway.api();
    api.create_event("drop", 100_000, 1).await;

    // Load that keeps going until the gateway stops answering.
    let load = tokio::spawn({
        let api = api.clone();
        async move {
            let mut answered = Vec::new();
            let mut i = 0usize;
            loop {
                let users: Vec<String> = (i..i + 16).map(|k| format!("u-{k}")).collect();
                let replies = futures_util::future::join_all(
                    users.iter().map(|u| api.try_purchase("drop", u, 1, None)),
                )
                .await;
                i += 16;
                let mut refused = false;
                for reply in replies {
                    match reply {
                        Ok(reply) => answered.push(reply.status.as_u16()),
                        Err(_) => refused = true,
                    }
                }
                if refused {
                    return answered;
                }
            }
        }
    });
    wait_until(Duration::from_secs(10), "a backlog under load", || async {
        (api.get_event("drop").await.body["remaining"].as_u64() < Some(99_000)).then_some(())
    })
    .await;

    worker.signal(Signal::SIGTERM);
    let started = Instant::now();
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "worker exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    gateway.signal(Signal::SIGTERM);
    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "gateway exit status {status:?}");
    let answered = load.await.unwrap();
    assert!(answered.iter().all(|s| *s == 202), "every answered request was served fully");

    // A successor confirms everything the first worker left, including any batch in hand.
    let _successor = Worker::start(&redis.url(), &pg.url(), "worker-b", FAST_WORKER).await;
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(60)).await;
    assert_eq!(books.units_confirmed, books.accepted_counter, "every accepted order confirmed");
    assert_eq!(books.units_confirmed as usize, answered.len());
    assert_books_balance(&redis.url(), "drop", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_gateway_killed_mid_sale_the_other_keeps_selling_correctly() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateways = [Gateway::start(&redis.url(), &[]).await, Gateway::start(&redis.url(), &[]).await];
    let _workers = [
        Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await,
        Worker::start(&redis.url(), &pg.url(), "worker-b", FAST_WORKER).await,
    ];
    let apis: Vec<Api> = gateways.iter().map(Gateway::api).collect();
    apis[0].create_event("drop", 300, 1).await;

    // Buyers alternate gateways; a client whose gateway is gone retries on the other one
    // with the same user (what a load balancer does).
    let sale = tokio::spawn({
        let apis = apis.clone();
        async move {
            use futures_util::StreamExt;
            futures_util::stream::iter(0..2000usize)
                .map(|i| {
                    let apis = apis.clone();
                    async move {
                        let user = format!("buyer-{i}");
                        for attempt in 0..4 {
                            if let Ok(reply) =
                                apis[(i + attempt) % 2].try_purchase("drop", &user, 1, None).await
                            {
                                return Some(reply);
                            }
                        }
                        None
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await
        }
    });
    wait_until(Duration::from_secs(10), "the sale to be under way", || async {
        (apis[1].get_event("drop").await.body["remaining"].as_u64() < Some(250)).then_some(())
    })
    .await;
    gateways[0].signal(Signal::SIGKILL);
    let replies = sale.await.unwrap();

    assert!(replies.iter().all(Option::is_some), "every buyer got an answer from a surviving gateway");
    let replies: Vec<_> = replies.into_iter().flatten().collect();
    let holders: HashSet<_> = replies
        .iter()
        .filter(|r| matches!(r.status, StatusCode::ACCEPTED | StatusCode::OK))
        .map(|r| r.body["order_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(replies.iter().all(|r| matches!(r.status.as_u16(), 200 | 202 | 409)), "only known answers");
    assert_eq!(holders.len(), 300, "exactly the stock sold, each unit held by a buyer");
    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!((books.units_confirmed, books.remaining), (300, 0));
    assert_books_balance(&redis.url(), "drop", true).await;
}
