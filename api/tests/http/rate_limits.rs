//! Rate limits per buyer and per client address: `429 rate_limited` with `Retry-After`,
//! forwarding headers believed only from trusted proxies, memory bounded whatever comes.

use std::time::Duration;

use flashsale_api::config::{JwtSecret, TrustedProxies};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::{Reply, metric_value};

use crate::helpers::spawn_app_with;
use crate::tokens::{SECRET, buy, token};

#[track_caller]
fn assert_limited(reply: &Reply, what: &str) {
    reply.assert_problem(429, "rate_limited");
    let retry: u64 = reply.header("retry-after").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(retry >= 1, "{what}: Retry-After {retry}: {reply:?}");
}

#[tokio::test]
async fn one_buyer_is_limited_while_another_buys_freely() {
    let app = spawn_app_with(|c| {
        c.buyer_jwt_secret = Some(JwtSecret::parse(SECRET).unwrap());
        c.buyer_rate_per_sec = 1;
        c.buyer_burst = 3;
    })
    .await;
    app.api.create_event("drop", 100, 1).await;
    let (alice, bob) = (token("alice"), token("bob"));
    // A retry storm: the order, two replays, then the limit. Replays count.
    let first = buy(&app.api, "drop", Some(&alice), None, json!({})).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for _ in 0..2 {
        assert_eq!(buy(&app.api, "drop", Some(&alice), None, json!({})).await.status, StatusCode::OK);
    }
    let limited = buy(&app.api, "drop", Some(&alice), None, json!({})).await;
    assert_limited(&limited, "alice's fourth request");
    // Polling her order counts against the same buyer.
    let order = first.body["order_id"].as_str().unwrap();
    let poll = crate::tokens::get_order(&app.api, "drop", order, Some(&alice)).await;
    assert_limited(&poll, "alice's poll");

    // Bob is not held back by Alice.
    let bought = buy(&app.api, "drop", Some(&bob), None, json!({})).await;
    assert_eq!(bought.status, StatusCode::ACCEPTED, "{bought:?}");
    let metrics = app.api.metrics().await;
    assert_eq!(metric_value(&metrics, "flashsale_rate_limited_total", &[("limit", "buyer")]), Some(2.0));
    assert_eq!(app.api.get_event("drop").await.body["remaining"], 98, "a 429 changes nothing");

    // A second later Alice has one request again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(buy(&app.api, "drop", Some(&alice), None, json!({})).await.status, StatusCode::OK);
    assert_limited(&buy(&app.api, "drop", Some(&alice), None, json!({})).await, "alice again");
}

/// GET of an unknown event with `X-Forwarded-For: xff`.
async fn get_as(api: &testkit::Api, xff: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
    api.send(Method::GET, "/v1/events/none-such", &headers, None).await
}

#[tokio::test]
async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let limited = |trusted: Option<&'static str>| {
        spawn_app_with(move |c| {
            c.client_rate_per_sec = 1;
            c.client_burst = 2;
            c.trusted_proxies = trusted.map(|t| TrustedProxies::parse(t).unwrap());
        })
    };
    // The peer (127.0.0.1) is no trusted proxy: every header is ignored.
    let app = limited(None).await;
    for spoof in [Some("198.51.100.1"), Some("198.51.100.2")] {
        get_as(&app.api, spoof).await.assert_problem(404, "event_not_found");
    }
    assert_limited(&get_as(&app.api, Some("198.51.100.3")).await, "a third address from one peer");
    assert_limited(&get_as(&app.api, None).await, "the peer itself");
    let other_proxy = limited(Some("10.0.0.0/8")).await;
    for spoof in ["198.51.100.1", "198.51.100.2"] {
        get_as(&other_proxy.api, Some(spoof)).await.assert_problem(404, "event_not_found");
    }
    assert_limited(&get_as(&other_proxy.api, Some("198.51.100.3")).await, "a proxy list without the peer");

    // Behind a trusted proxy each client has its own allowance, and what a client puts in
    // front of the header itself changes nothing: the nearest untrusted hop counts.
    let proxied = limited(Some("127.0.0.1/32")).await;
    for _ in 0..2 {
        get_as(&proxied.api, Some("203.0.113.7")).await.assert_problem(404, "event_not_found");
    }
    assert_limited(&get_as(&proxied.api, Some("203.0.113.7")).await, "a client's third request");
    assert_limited(&get_as(&proxied.api, Some("192.0.2.99, 203.0.113.7")).await, "a spoofed first hop");
    get_as(&proxied.api, Some("203.0.113.8")).await.assert_problem(404, "event_not_found");
    // IPv6 clients count per /64.
    for addr in ["2001:db8:7:7::1", "2001:db8:7:7::2"] {
        get_as(&proxied.api, Some(addr)).await.assert_problem(404, "event_not_found");
    }
    assert_limited(&get_as(&proxied.api, Some("2001:db8:7:7:ffff::3")).await, "a third address of one /64");
}

#[tokio::test]
async fn a_hundred_thousand_client_addresses_hold_no_more_than_the_cap() {
    const CAP: u64 = 1_000;
    const ADDRESSES: u32 = 100_000;
    let app = spawn_app_with(|c| {
        // Requests without a token stop at the 401, after the client limit: no Redis.
        c.buyer_jwt_secret = Some(JwtSecret::parse(SECRET).unwrap());
        c.client_rate_per_sec = 1;
        c.client_burst = 5;
        c.rate_limit_max_keys = CAP;
        c.trusted_proxies = Some(TrustedProxies::parse("127.0.0.1").unwrap());
    })
    .await;
    let keys = |text: &str| metric_value(text, "flashsale_rate_limit_keys", &[("limit", "client")]);
    let api = app.api.clone();
    let flood = tokio::spawn(async move {
        futures_util::stream::iter(0..ADDRESSES)
            .map(|n| {
                let api = api.clone();
                async move {
                    let xff = std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string();
                    let headers = [("x-forwarded-for", xff.as_str())];
                    api.send(Method::POST, "/v1/events/drop/purchases", &headers, Some(&json!({})))
                        .await
                        .status
                }
            })
            .buffer_unordered(32)
            .fold([0u32; 2], |mut seen, status| async move {
                seen[usize::from(status == StatusCode::TOO_MANY_REQUESTS)] += 1;
                seen
            })
            .await
    });
    // Sample what the limiter holds while the flood runs (the gauge: entries at each sweep,
    // before stale ones go).
    let mut most = 0.0f64;
    while !flood.is_finished() {
        most = most.max(keys(&app.api.metrics().await).unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let [passed, limited] = flood.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let metrics = app.api.metrics().await;
    most = most.max(keys(&metrics).unwrap_or(0.0));
    assert_eq!(most, CAP as f64, "the store filled to its cap and no further");
    let overflow = metric_value(&metrics, "flashsale_rate_limit_overflow_total", &[("limit", "client")]);
    assert!(overflow.is_some_and(|n| n > 0.0), "newcomers shared the overflow entry: {overflow:?}");
    assert_eq!(passed + limited, ADDRESSES);
    assert!(limited > 0, "the overflow entry limited the flood as one client ({passed} passed)");
}
