use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use testkit::{Api, Reply, metric_value};

/// Worker settings that make claims, reads and discovery fast enough for tests.
pub const FAST_WORKER: &[(&str, &str)] = &[
    ("BLOCK_MS", "100"),
    ("DISCOVERY_INTERVAL_MS", "50"),
    ("CLAIM_INTERVAL_MS", "100"),
    ("CLAIM_MIN_IDLE_MS", "1000"),
    ("STATS_INTERVAL_MS", "100"),
    ("TRIM_INTERVAL_MS", "200"),
];

/// What a crowd of buyers got.
#[derive(Debug, Default)]
pub struct Outcome {
    pub by_status: HashMap<u16, usize>,
    /// user -> order id, for every buyer who holds an order (202 or replayed 200).
    pub orders: HashMap<String, String>,
}

impl Outcome {
    pub fn count(&self, status: u16) -> usize {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// `buyers` distinct users buy one unit each, `concurrency` at a time, spread round-robin
/// over `apis`; each buyer retries (same user, so same scope) while the answer is 503.
pub async fn crowd(apis: &[Api], event: &str, buyers: usize, concurrency: usize) -> Outcome {
    let replies: Vec<(String, Reply)> = futures_util::stream::iter(0..buyers)
        .map(|i| {
            let api = apis[i % apis.len()].clone();
            let event = event.to_owned();
            async move {
                let user = format!("buyer-{i}");
                let reply = buy_until_known(&api, &event, &user, Duration::from_secs(30)).await;
                (user, reply)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut outcome = Outcome::default();
    for (user, reply) in replies {
        *outcome.by_status.entry(reply.status.as_u16()).or_default() += 1;
        if matches!(reply.status, StatusCode::ACCEPTED | StatusCode::OK) {
            outcome.orders.insert(user, reply.body["order_id"].as_str().expect("order id").to_owned());
        }
    }
    outcome
}

/// Retries a purchase while the gateway answers 503 (outcome unknown or Redis down), the
/// way the problem detail tells clients to.
pub async fn buy_until_known(api: &Api, event: &str, user: &str, timeout: Duration) -> Reply {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let reply = api.purchase(event, user, 1, None).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn counter(metrics: &str, name: &str) -> f64 {
    metric_value(metrics, name, &[]).unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
}

/// `flashsale-worker check --event E --drained --ledger` must pass: the books balance and Redis
/// and the ledger agree order by order.
pub async fn check_ledger(redis_url: &str, database_url: &str, event: &str) -> serde_json::Value {
    let (status, out) = testkit::run_to_exit(
        "flashsale-worker",
        &[("REDIS_URL", redis_url), ("DATABASE_URL", database_url)],
        &["check", "--event", event, "--drained", "--ledger"],
        Duration::from_secs(60),
    )
    .await;
    assert!(status.success(), "check --ledger: {out}");
    // The report is the first JSON value printed (log lines, on stderr, follow it).
    let json = out.find('{').map(|at| &out[at..]).unwrap_or("null");
    serde_json::Deserializer::from_str(json).into_iter().next().and_then(Result::ok).unwrap_or_default()
}

/// Sets an event's `confirmed` counter to `value` behind the gateway's back: "garbage" makes
/// the confirm step itself fail (real poison, unlike any fault of Redis), `0` repairs it.
pub async fn set_confirmed_counter(redis: &testkit::RedisServer, event: &str, value: &str) {
    let mut conn = redis.conn().await;
    let keys = flashsale_shared::EventKeys::new(&flashsale_shared::EventId::parse(event).unwrap());
    let _: () =
        redis::cmd("HSET").arg(&keys.event).arg("confirmed").arg(value).query_async(&mut conn).await.unwrap();
}

/// Writes an order record and its stream entry by hand, as no script would (a record of a
/// shape or value the tests want the worker to meet).
pub async fn plant_order(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &flashsale_shared::EventKeys,
    order_id: &str,
    record: &str,
) {
    let _: () =
        redis::cmd("HSET").arg(&keys.orders).arg(order_id).arg(record).query_async(conn).await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&keys.stream)
        .arg("*")
        .arg(flashsale_shared::schema::stream::ORDER)
        .arg(order_id)
        .query_async(conn)
        .await
        .unwrap();
}
