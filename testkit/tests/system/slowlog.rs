//! Nothing blocks Redis for long: through a 300,000-order sale, its sold-out phase and a
//! `flashsale-worker check` of it, no Redis command takes 10 ms (Redis's slow log, set to
//! 10,000 µs, stays empty). On a28e54c the sold-out snapshot ran HKEYS over the whole
//! idempotency hash (~75 ms at 250,000 orders) and `check` one script over every order (3.5 s).

use std::time::Duration;

use flashsale_shared::purchase::{self, PurchaseOutcome};
use flashsale_shared::scripts::{self, PURCHASE};
use flashsale_shared::{EventId, EventKeys, OrderId, UserId};
use reqwest::StatusCode;
use testkit::{Gateway, RedisServer, Worker, run_to_exit, wait_drained};

use crate::common::FAST_WORKER;

const ORDERS: usize = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_300k_order_sale_its_sold_out_phase_and_its_check_never_block_redis_for_10_ms() {
    let redis = RedisServer::start();
    redis.config_set("slowlog-log-slower-than", "10000").await;
    let gateway = Gateway::start(&redis.url(), &[]).await;
    let _worker = Worker::start(&redis.url(), "worker-a", FAST_WORKER).await;
    let api = gateway.api();
    api.create_event("big", ORDERS as u64, 1).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query_async(&mut conn).await.unwrap();

    // The sale: the purchase script itself (exactly what the gateway sends), pipelined from
    // here because a debug-build gateway would take minutes for 300,000 requests. The worker
    // finalizes while it runs.
    scripts::load_all(&mut conn).await.unwrap();
    let keys = EventKeys::new(&EventId::parse("big").unwrap());
    for chunk in (0..ORDERS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            let user = format!("u{i}");
            pipe.cmd("EVALSHA")
                .arg(PURCHASE.get_hash())
                .arg(5)
                .arg(&keys.event)
                .arg(&keys.idem)
                .arg(&keys.users)
                .arg(&keys.orders)
                .arg(&keys.stream)
                .arg(&user)
                .arg(&user)
                .arg(1)
                .arg(OrderId::random().to_string())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    // Sold out: the next buyers go through the gateway, which answers from the script until
    // its local flag would hold more scopes than it keeps, and must never scan them all.
    let user = UserId::parse("late").unwrap();
    let outcome = purchase::purchase(&mut conn, &keys, "late", &user, 1, OrderId::random()).await.unwrap();
    assert_eq!(outcome, PurchaseOutcome::SoldOut { remaining: 0 });
    for i in 0..2000 {
        let reply = api.purchase("big", &format!("late-{i}"), 1, None).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    }
    // A replay is still a replay.
    assert_eq!(api.purchase("big", "u7", 1, None).await.status, StatusCode::OK);

    let books = wait_drained(&redis.url(), "big", Duration::from_secs(300)).await;
    assert_eq!(books.units_confirmed, ORDERS as i64);
    let (status, out) = run_to_exit(
        "flashsale-worker",
        &[("REDIS_URL", &redis.url())],
        &["check", "--event", "big", "--drained"],
        Duration::from_secs(120),
    )
    .await;
    assert!(status.success(), "check: {out}");

    let slow: Vec<redis::Value> =
        redis::cmd("SLOWLOG").arg("GET").arg(20).query_async(&mut conn).await.unwrap();
    assert!(slow.is_empty(), "Redis logged slow commands: {slow:?}");
}
