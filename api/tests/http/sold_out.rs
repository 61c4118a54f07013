//! The local sold-out flag: fast answers that are never wrong for longer than 100 ms.

use std::time::{Duration, Instant};

use flashsale_shared::EventKeys;
use reqwest::StatusCode;
use testkit::{metric_value, wait_until};

use crate::helpers::{TestApp, spawn_app};

async fn local_answers(app: &TestApp) -> f64 {
    metric_value(&app.api.metrics().await, "flashsale_sold_out_local_total", &[]).unwrap()
}

/// Sells `stock` units to `buyer-i`, then asks until the gateway answers sold_out locally.
async fn sold_out_locally(app: &TestApp, event: &str, stock: u64) {
    app.api.create_event(event, stock, 2).await;
    for i in 0..stock {
        assert_eq!(
            app.api.purchase(event, &format!("buyer-{i}"), 1, None).await.status,
            StatusCode::ACCEPTED
        );
    }
    let mut n = 0;
    wait_until(Duration::from_secs(5), "the local sold-out flag", || {
        n += 1;
        let user = format!("late-{n}");
        async move {
            app.api.purchase(event, &user, 1, None).await.assert_problem(409, "sold_out");
            (local_answers(app).await > 0.0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_sold_out_event_is_answered_locally_and_replays_still_replay() {
    let app = spawn_app().await;
    sold_out_locally(&app, "drop", 3).await;
    let before = local_answers(&app).await;
    for i in 0..20 {
        app.api.purchase("drop", &format!("crowd-{i}"), 1, None).await.assert_problem(409, "sold_out");
    }
    assert_eq!(local_answers(&app).await, before + 20.0, "no Redis round trip for these");

    // Buyers who hold an order get it back, not sold_out.
    let replay = app.api.purchase("drop", "buyer-1", 1, None).await;
    assert_eq!(replay.status, StatusCode::OK, "{replay:?}");
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    // A request the script answers differently still reaches it.
    app.api.purchase("drop", "crowd-0", 3, None).await.assert_problem(422, "invalid_fields");
    // The same key with a different payload is still a mismatch, not sold_out.
    app.api.purchase("drop", "buyer-2", 2, None).await.assert_problem(422, "idempotency_key_mismatch");
}

#[tokio::test]
async fn units_returned_to_stock_are_sold_again_within_100_ms() {
    let app = spawn_app().await;
    sold_out_locally(&app, "drop", 2).await;
    // A unit comes back without anyone telling the gateway (no pub/sub message): the refresh
    // loop must notice.
    let mut conn = app.redis.conn().await;
    let keys = EventKeys::new(&flashsale_shared::EventId::parse("drop").unwrap());
    let _: i64 =
        redis::cmd("HINCRBY").arg(&keys.event).arg("remaining").arg(1).query_async(&mut conn).await.unwrap();
    let returned = Instant::now();
    let mut n = 0;
    wait_until(Duration::from_secs(2), "the returned unit to be sold", || {
        n += 1;
        let user = format!("second-chance-{n}");
        let app = &app;
        async move {
            (app.api.purchase("drop", &user, 1, None).await.status == StatusCode::ACCEPTED).then_some(())
        }
    })
    .await;
    assert!(returned.elapsed() < Duration::from_millis(150), "took {:?}", returned.elapsed());
}

#[tokio::test]
async fn the_flag_is_dropped_when_it_cannot_be_validated() {
    let mut app = crate::helpers::spawn_app_with(|c| c.redis.redis_timeout_ms = 200).await;
    sold_out_locally(&app, "drop", 1).await;
    app.redis.kill();
    // Within 100 ms the gateway stops trusting what it can no longer check.
    let killed = Instant::now();
    wait_until(Duration::from_secs(2), "the flag to expire", || async {
        let reply = app.api.purchase("drop", "someone-new", 1, None).await;
        (reply.status == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    assert!(killed.elapsed() < Duration::from_millis(400), "took {:?}", killed.elapsed());
}

/// `calls` of one command in `INFO commandstats`, 0 if it never ran.
async fn command_calls(app: &TestApp, command: &str) -> u64 {
    let mut conn = app.redis.conn().await;
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

#[tokio::test]
async fn an_event_above_the_scope_cap_is_sized_once_and_answered_by_the_script() {
    let app = crate::helpers::spawn_app_with(|c| c.sold_out_max_scopes = 2).await;
    app.api.create_event("big", 3, 1).await;
    for i in 0..3 {
        assert_eq!(
            app.api.purchase("big", &format!("buyer-{i}"), 1, None).await.status,
            StatusCode::ACCEPTED
        );
    }
    // The last unit sold: the gateway looks at the event's size once.
    let size_checks = || async { command_calls(&app, "hlen").await + command_calls(&app, "hkeys").await };
    wait_until(Duration::from_secs(5), "the size check", || async {
        (size_checks().await >= 1).then_some(())
    })
    .await;

    for i in 0..20 {
        app.api.purchase("big", &format!("late-{i}"), 1, None).await.assert_problem(409, "sold_out");
    }
    assert_eq!(local_answers(&app).await, 0.0, "too large for a local flag");
    // One size check, remembered: not one scan per sold-out answer.
    assert_eq!(
        (
            command_calls(&app, "hlen").await,
            command_calls(&app, "hkeys").await,
            command_calls(&app, "hscan").await
        ),
        (1, 0, 0)
    );
    // Replays still replay.
    assert_eq!(app.api.purchase("big", "buyer-1", 1, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_snapshot_of_thousands_of_scopes_holds_every_one() {
    use flashsale_shared::purchase::{self, PurchaseOutcome};
    use flashsale_shared::{EventId, OrderId, UserId};
    use futures_util::StreamExt;

    let app = spawn_app().await;
    let stock = 2500;
    app.api.create_event("crowd", stock, 1).await;
    // Sold through the script directly (faster than HTTP), so the gateway learns of the sale
    // only from its first sold-out answer below.
    let keys = EventKeys::new(&EventId::parse("crowd").unwrap());
    let mut conn = app.redis.conn().await;
    for i in 0..stock {
        let user = UserId::parse(format!("buyer-{i}")).unwrap();
        let scope = purchase::scope(&user, None);
        let outcome =
            purchase::purchase(&mut conn, &keys, &scope, &user, 1, OrderId::random()).await.unwrap();
        assert!(matches!(outcome, PurchaseOutcome::Accepted { .. }), "{outcome:?}");
    }
    let mut n = 0;
    wait_until(Duration::from_secs(5), "the local sold-out flag", || {
        n += 1;
        let user = format!("late-{n}");
        let app = &app;
        async move {
            app.api.purchase("crowd", &user, 1, None).await.assert_problem(409, "sold_out");
            (local_answers(app).await > 0.0).then_some(())
        }
    })
    .await;
    assert!(command_calls(&app, "hscan").await >= 2, "scanned in chunks");

    // Every buyer is in the snapshot: each gets their order back, none a local sold_out.
    let replays: Vec<StatusCode> = futures_util::stream::iter(0..stock)
        .map(|i| {
            let app = &app;
            async move { app.api.purchase("crowd", &format!("buyer-{i}"), 1, None).await.status }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        replays.iter().all(|s| *s == StatusCode::OK),
        "{:?}",
        replays.iter().find(|s| **s != StatusCode::OK)
    );
}
