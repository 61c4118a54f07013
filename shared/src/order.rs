//! Reading orders' Redis records (their format: [`crate::schema::record`]).

use redis::aio::ConnectionLike;

use crate::domain::OrderId;
use crate::keys::EventKeys;

pub use crate::schema::{OrderRecord, OrderStatus};

/// An order's record as one read finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The event has no such order.
    Absent,
    /// There is a record, but not one this code can read (it holds the text): never written
    /// by our scripts, and never to be mistaken for an absent order.
    Unreadable(String),
    Record(OrderRecord),
}

/// The records of these orders (by id, as the stream names them), in order: one `HMGET`.
pub async fn load_many(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    order_ids: &[&str],
) -> redis::RedisResult<Vec<Stored>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<Option<String>> =
        redis::cmd("HMGET").arg(&keys.orders).arg(order_ids).query_async(conn).await?;
    Ok(records
        .into_iter()
        .map(|record| match record {
            None => Stored::Absent,
            Some(text) => OrderRecord::parse(&text).map_or(Stored::Unreadable(text), Stored::Record),
        })
        .collect())
}

/// One step of a walk over an event's orders (`HSCAN ... COUNT SCAN_CHUNK`, start with
/// cursor 0; the walk is over when the returned cursor is 0): order ids with their records
/// (`None` for a record that cannot be read). An order may come back twice in one walk.
pub async fn scan(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    cursor: u64,
) -> redis::RedisResult<(u64, Vec<(String, Option<OrderRecord>)>)> {
    let (next, pairs): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
        .arg(&keys.orders)
        .arg(cursor)
        .arg("COUNT")
        .arg(crate::scripts::SCAN_CHUNK)
        .query_async(conn)
        .await?;
    Ok((
        next,
        pairs
            .into_iter()
            .map(|(id, record)| {
                let parsed = OrderRecord::parse(&record);
                (id, parsed)
            })
            .collect(),
    ))
}

/// The order, or `None` when the event has no such order.
pub async fn load(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    order_id: OrderId,
) -> redis::RedisResult<Option<OrderRecord>> {
    let record: Option<String> =
        redis::cmd("HGET").arg(&keys.orders).arg(order_id.to_string()).query_async(conn).await?;
    Ok(record.as_deref().and_then(OrderRecord::parse))
}
