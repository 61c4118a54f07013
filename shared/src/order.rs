//! Orders as Redis stores them: one field of the event's `orders` hash per order, holding
//! `status|quantity|created_ms|done_ms|user_id` (status `p`, `c` or `f`; `done_ms` empty while
//! pending). One compact string per order keeps memory per sold unit small; the user id goes
//! last because it may contain `:` (never `|`). The Lua scripts write this format.

use redis::aio::ConnectionLike;

use crate::domain::OrderId;
use crate::keys::EventKeys;

pub use crate::schema::OrderStatus;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub status: OrderStatus,
    pub quantity: u32,
    pub created_ms: i64,
    /// When it was confirmed or failed.
    pub done_ms: Option<i64>,
    pub user_id: String,
}

impl OrderRecord {
    pub fn parse(record: &str) -> Option<Self> {
        let mut parts = record.splitn(5, '|');
        let status = OrderStatus::from_letter(parts.next()?)?;
        let quantity = parts.next()?.parse().ok()?;
        let created_ms = parts.next()?.parse().ok()?;
        let done_ms = match parts.next()? {
            "" => None,
            done => Some(done.parse().ok()?),
        };
        let user_id = parts.next()?.to_owned();
        Some(Self { status, quantity, created_ms, done_ms, user_id })
    }
}

/// The records of these orders (by id, as the stream names them), `None` for each one the
/// event does not have or whose record is unreadable: one `HMGET`.
pub async fn load_many(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    order_ids: &[&str],
) -> redis::RedisResult<Vec<Option<OrderRecord>>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let records: Vec<Option<String>> =
        redis::cmd("HMGET").arg(&keys.orders).arg(order_ids).query_async(conn).await?;
    Ok(records.into_iter().map(|r| r.as_deref().and_then(OrderRecord::parse)).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_scripts_write() {
        let pending = OrderRecord::parse("p|2|1764064800000||user:42").unwrap();
        assert_eq!(pending.status, OrderStatus::Pending);
        assert_eq!(pending.quantity, 2);
        assert_eq!(pending.done_ms, None);
        assert_eq!(pending.user_id, "user:42");
        let done = OrderRecord::parse("c|1|1764064800000|1764064800123|u").unwrap();
        assert_eq!(done.status, OrderStatus::Confirmed);
        assert_eq!(done.done_ms, Some(1_764_064_800_123));
        assert!(OrderRecord::parse("x|1|1||u").is_none());
        assert!(OrderRecord::parse("p|1|1").is_none());
    }
}
