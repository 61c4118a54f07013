//! The `orders` insert rules for parked orders against a real PostgreSQL: a park replaces only
//! `confirmed`; an operator's `failed` replaces `confirmed` or `parked`, a redrive's
//! `confirmed` replaces `parked`; nothing else downgrades a recorded status.

use flashsale_ledger::{Ledger, LedgerArgs, Recorded};
use flashsale_shared::schema::OrderStatus;
use flashsale_shared::{EventId, OrderId, UserId};
use testkit::Postgres;
use time::OffsetDateTime;

fn row(order_id: OrderId, status: OrderStatus) -> Recorded {
    Recorded {
        order_id,
        user_id: UserId::parse("alice").unwrap(),
        quantity: 1,
        status,
        created_at: OffsetDateTime::UNIX_EPOCH,
        finalized_at: OffsetDateTime::UNIX_EPOCH,
        scope: "alice".into(),
    }
}

fn column(pg: &Postgres, order: OrderId) -> String {
    pg.psql(&format!("select status from orders where order_id = '{order}'")).trim().to_owned()
}

#[tokio::test]
async fn parked_rows_wait_for_the_operator_and_nothing_else_downgrades() {
    let pg = Postgres::start();
    let ledger = Ledger::new(&LedgerArgs::new(&pg.url()).unwrap()).unwrap();
    ledger.migrate().await.unwrap();
    let event = EventId::parse("drop").unwrap();
    let (a, b, c) = (OrderId::random(), OrderId::random(), OrderId::random());
    let confirmed = [a, b, c].map(|id| row(id, OrderStatus::Confirmed));
    ledger.record(&event, &confirmed).await.unwrap();

    // The worker parks a and b (their entries failed MAX_DELIVERIES times).
    assert_eq!(ledger.mark_parked(&event, &[a, b]).await.unwrap(), 2);
    assert_eq!(column(&pg, a), "parked");
    // Another event's order of the same id is never touched; a second park changes nothing.
    assert_eq!(ledger.mark_parked(&EventId::parse("other").unwrap(), &[c]).await.unwrap(), 0);
    assert_eq!(ledger.mark_parked(&event, &[a]).await.unwrap(), 0);
    let statuses = ledger.statuses(&[a, c]).await.unwrap();
    assert_eq!((statuses[&a].0, statuses[&c].0), (OrderStatus::Pending, OrderStatus::Confirmed));
    assert_eq!(ledger.confirmed_units(&event).await.unwrap(), 1, "a parked order is not sold");
    // A stale `confirmed` write for a parked order is its redrive; `failed` its fail.
    ledger.record(&event, &[row(a, OrderStatus::Failed), row(b, OrderStatus::Confirmed)]).await.unwrap();
    assert_eq!((column(&pg, a), column(&pg, b)), ("failed".into(), "confirmed".into()));
    // Nothing downgrades: confirmed never replaces failed, a park never replaces failed.
    ledger.record(&event, &[row(a, OrderStatus::Confirmed)]).await.unwrap();
    assert_eq!(ledger.mark_parked(&event, &[a]).await.unwrap(), 0);
    assert_eq!(column(&pg, a), "failed");
    let parked = ledger.page_with_status(&event, OrderStatus::Pending, None, 10).await.unwrap();
    assert!(parked.is_empty(), "{parked:?}");
    ledger.mark_parked(&event, &[c]).await.unwrap();
    let parked = ledger.page_with_status(&event, OrderStatus::Pending, None, 10).await.unwrap();
    assert_eq!(parked.iter().map(|o| o.order_id).collect::<Vec<_>>(), [c]);
}
