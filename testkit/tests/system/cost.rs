//! What finalizing an order costs next to what selling it costs, measured on the real
//! pipeline (`make pipeline-cost`, ignored by default: a measurement, not a test).
//!
//! 1. With no worker running, 50,000 purchases go through the purchase script straight at
//!    Redis (pipelined, as `redis-benchmark` would).
//! 2. Then a release worker starts and records and confirms every order (the ledger write,
//!    then finalize.lua); the drain is watched through the worker's own metrics, so nothing
//!    else talks to Redis meanwhile.
//!
//! Per order and per phase: Redis's CPU time (`INFO cpu`: everything Redis did, network
//! included) and its time inside `EVALSHA` (`INFO commandstats`: the scripts alone), with the
//! worker's and PostgreSQL's CPU (from /proc) for the second phase.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flashsale_shared::purchase;
use flashsale_shared::{EventId, EventKeys, OrderId, UserId};
use testkit::{Gateway, Postgres, RedisServer, Worker};

const ORDERS: usize = 50_000;

/// Redis's own CPU seconds so far (`used_cpu_sys` + `used_cpu_user`).
pub async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let text: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("used_cpu_sys:").or_else(|| l.strip_prefix("used_cpu_user:")))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// `usec` of each command in `INFO commandstats`.
pub async fn redis_usec(conn: &mut redis::aio::MultiplexedConnection) -> HashMap<String, u64> {
    let text: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    text.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let usec = stats.split(',').find_map(|kv| kv.strip_prefix("usec="))?.parse().ok()?;
            Some((name.to_owned(), usec))
        })
        .collect()
}

/// User + system CPU seconds of a process and its threads, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every process of the private PostgreSQL (the postmaster and its children).
fn postgres_cpu(pg: &Postgres) -> f64 {
    let Some(root) = pg.pid() else { return 0.0 };
    let mut total = cpu_seconds(root);
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children")) {
        total += children.split_whitespace().filter_map(|c| c.parse().ok()).map(cpu_seconds).sum::<f64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: `make pipeline-cost` runs it on its own, with release binaries"]
async fn finalizing_an_order_costs_redis_a_fraction_of_selling_it() {
    let redis = RedisServer::start();
    let pg = Postgres::start();
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let api = gateway.api();
    api.create_event("cost", ORDERS as u64, 1).await;
    let mut conn = redis.conn().await;
    let keys = EventKeys::new(&EventId::parse("cost").unwrap());

    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
    let cpu_before = redis_cpu(&mut conn).await;
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let user = UserId::parse(format!("u{i}")).unwrap();
            pipe.add_command(purchase::command(&keys, user.as_str(), &user, 1, OrderId::random())).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    let per_order = |x: f64| x * 1e6 / ORDERS as f64;
    let selling_cpu = per_order(redis_cpu(&mut conn).await - cpu_before);
    let selling = redis_usec(&mut conn).await;
    let purchase_script = *selling.get("evalsha").unwrap() as f64 / ORDERS as f64;

    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut conn).await.unwrap();
    let cpu_before = redis_cpu(&mut conn).await;
    let pg_before = postgres_cpu(&pg);
    let started = Instant::now();
    let worker = Worker::start(&redis.url(), &pg.url(), "worker-a", &[("BATCH_SIZE", "200")]).await;
    let worker_before = cpu_seconds(worker.pid());
    testkit::wait_until(Duration::from_secs(600), "the worker to finalize every order", || async {
        let metrics = worker.metrics().await;
        (testkit::metric_value(&metrics, "flashsale_orders_finalized_total", &[]) == Some(ORDERS as f64))
            .then_some(())
    })
    .await;
    let drained_in = started.elapsed();
    let worker_cpu = cpu_seconds(worker.pid()) - worker_before;
    let pg_cpu = postgres_cpu(&pg) - pg_before;
    let finalizing_cpu = per_order(redis_cpu(&mut conn).await - cpu_before);
    let finalizing = redis_usec(&mut conn).await;
    let finalize_script = *finalizing.get("evalsha").unwrap_or(&0) as f64 / ORDERS as f64;
    let mut top: Vec<_> = finalizing.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    println!(
        "selling:    Redis CPU {selling_cpu:.1} µs per order, of which the purchase script {purchase_script:.1} µs"
    );
    println!(
        "finalizing: Redis CPU {finalizing_cpu:.1} µs per order ({:.2} of selling's), of which scripts \
         {finalize_script:.1} µs ({:.2} of the purchase script's); {ORDERS} orders drained in {drained_in:.1?}",
        finalizing_cpu / selling_cpu,
        finalize_script / purchase_script
    );
    println!(
        "worker CPU {:.1} µs and PostgreSQL CPU {:.1} µs per order",
        worker_cpu * 1e6 / ORDERS as f64,
        pg_cpu * 1e6 / ORDERS as f64
    );
    println!(
        "Redis time by command while finalizing (µs; commands inside scripts counted too): {:?}",
        &top[..top.len().min(8)]
    );
    assert_eq!(pg.psql("select count(*) from orders where event_id = 'cost'").trim(), ORDERS.to_string());
}
