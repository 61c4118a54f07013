//! `Ledger::record_decision` against a real PostgreSQL: the later decision wins, whatever the
//! order the writes arrive in; an end is never undone; the configuration is final once the
//! ledger holds an order.

use flashsale_ledger::{Ledger, LedgerArgs, Recorded};
use flashsale_shared::event::{Decision, EventConfig};
use flashsale_shared::schema::{EventStateMark, OrderStatus};
use flashsale_shared::{EventId, OrderId, UserId};
use testkit::Postgres;
use time::OffsetDateTime;

fn decision(version: u64, stock: u64, control: Option<EventStateMark>) -> Decision {
    Decision {
        config: EventConfig { stock, per_user_limit: 1, name: None, starts_at_ms: None, ends_at_ms: None },
        purge_at_ms: None,
        control,
        paused_at_ms: (control == Some(EventStateMark::Paused)).then_some(1_000),
        ended_at_ms: (control == Some(EventStateMark::Ended)).then_some(2_000),
        configured_ms: Some(500),
        version,
    }
}

async fn ledger(pg: &Postgres) -> Ledger {
    let ledger = Ledger::new(&LedgerArgs::new(&pg.url()).unwrap()).unwrap();
    ledger.migrate().await.unwrap();
    ledger
}

#[tokio::test]
async fn a_lower_counter_never_overwrites_a_later_decision() {
    let pg = Postgres::start();
    let ledger = ledger(&pg).await;
    let id = EventId::parse("drop").unwrap();
    assert_eq!(ledger.record_decision(&id, &decision(1, 100, None)).await.unwrap(), 1);
    assert_eq!(ledger.record_decision(&id, &decision(3, 10, Some(EventStateMark::Paused))).await.unwrap(), 3);
    // A stale snapshot (a worker that read Redis before the pause) arrives late.
    assert_eq!(ledger.record_decision(&id, &decision(2, 10, None)).await.unwrap(), 3);
    let event = ledger.event(&id).await.unwrap().unwrap();
    assert_eq!((event.version, event.stock, event.state), (3, 10, Some(EventStateMark::Paused)));
    assert_eq!(event.decision(), decision(3, 10, Some(EventStateMark::Paused)));
    let history =
        pg.psql("select string_agg(version || ':' || stock, ',' order by version) from event_decisions");
    assert_eq!(history, "1:100,3:10", "every decision taken, none refused");
}

#[tokio::test]
async fn an_end_is_final_and_a_sold_configuration_frozen() {
    let pg = Postgres::start();
    let ledger = ledger(&pg).await;
    let id = EventId::parse("drop").unwrap();
    ledger.record_decision(&id, &decision(1, 10, None)).await.unwrap();
    let order = Recorded {
        order_id: OrderId::random(),
        user_id: UserId::parse("alice").unwrap(),
        quantity: 1,
        status: OrderStatus::Confirmed,
        created_at: OffsetDateTime::now_utc(),
        finalized_at: OffsetDateTime::now_utc(),
        scope: "alice".into(),
    };
    ledger.record(&id, &[order]).await.unwrap();
    ledger.record_decision(&id, &decision(2, 10, Some(EventStateMark::Ended))).await.unwrap();
    // A Redis that forgot both (a forked history) with a higher counter: neither the end nor
    // the sold configuration moves.
    assert_eq!(ledger.record_decision(&id, &decision(5, 500, None)).await.unwrap(), 5);
    let event = ledger.event(&id).await.unwrap().unwrap();
    assert_eq!((event.stock, event.state, event.sold), (10, Some(EventStateMark::Ended), true));
    assert_eq!(event.ended_at, Some(flashsale_shared::domain::from_unix_ms(2_000)));
}
