use std::collections::HashSet;
use std::time::Duration;

use testkit::{Gateway, RedisServer, Worker, assert_books_balance, wait_drained};

use crate::common::{FAST_WORKER, counter, crowd};

/// The flash sale itself: thousands of distinct buyers, a small stock, two gateways, two
/// workers. Exactly `stock` orders are accepted, everyone else hears sold_out, and the
/// workers confirm every order exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_buyers_through_two_gateways_buy_exactly_the_stock() {
    let redis = RedisServer::start();
    let pg = testkit::Postgres::start();
    let gateways = [Gateway::start(&redis.url(), &[]).await, Gateway::start(&redis.url(), &[]).await];
    let workers = [
        Worker::start(&redis.url(), &pg.url(), "worker-a", FAST_WORKER).await,
        Worker::start(&redis.url(), &pg.url(), "worker-b", FAST_WORKER).await,
    ];
    let apis: Vec<_> = gateways.iter().map(Gateway::api).collect();
    apis[0].create_event("drop", 200, 1).await;

    let outcome = crowd(&apis, "drop", 4000, 256).await;
    assert_eq!(outcome.count(202), 200, "exactly the stock is accepted: {:?}", outcome.by_status);
    assert_eq!(outcome.count(409), 3800, "everyone else is told sold_out: {:?}", outcome.by_status);
    assert_eq!(outcome.orders.len(), 200);
    let distinct: HashSet<_> = outcome.orders.values().collect();
    assert_eq!(distinct.len(), 200, "order ids are unique");

    let books = wait_drained(&redis.url(), "drop", Duration::from_secs(30)).await;
    assert_eq!((books.remaining, books.units_confirmed, books.confirmed_counter), (0, 200, 200));
    for api in &apis {
        let event = api.get_event("drop").await;
        assert_eq!(
            (event.body["remaining"].as_u64(), event.body["confirmed"].as_u64()),
            (Some(0), Some(200))
        );
        assert_eq!(event.body["state"], "sold_out");
    }
    let mut finalized = 0.0;
    for worker in &workers {
        finalized += counter(&worker.metrics().await, "flashsale_orders_finalized_total");
    }
    assert_eq!(finalized, 200.0, "the two workers confirmed each order once between them");
    assert_books_balance(&redis.url(), "drop", true).await;

    // The ledger, row by row: exactly the orders buyers hold, each once, each confirmed, with
    // its buyer, quantity and idempotency scope.
    let rows =
        pg.psql("select order_id, user_id, quantity, status, scope from orders where event_id = 'drop'");
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 200, "one row per order");
    let held: HashSet<(&str, &str)> = outcome.orders.iter().map(|(u, o)| (o.as_str(), u.as_str())).collect();
    let recorded: HashSet<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(recorded, held, "the ledger holds exactly the buyers' orders");
    assert!(rows.iter().all(|r| r[2] == "1" && r[3] == "confirmed" && r[4] == r[1]), "{rows:?}");
    crate::common::check_ledger(&redis.url(), &pg.url(), "drop").await;
}
