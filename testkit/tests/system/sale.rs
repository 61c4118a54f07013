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
    let gateways = [Gateway::start(&redis.url(), &[]).await, Gateway::start(&redis.url(), &[]).await];
    let workers = [
        Worker::start(&redis.url(), "worker-a", FAST_WORKER).await,
        Worker::start(&redis.url(), "worker-b", FAST_WORKER).await,
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
}
