//! Orders as Redis stores them: one field of the event's `orders` hash per order, holding
//! `status|quantity|created_ms|done_ms|user_id` (status `p`, `c` or `f`; `done_ms` empty while
//! pending). One compact string per order keeps memory per sold unit small; the user id goes
//! last because it may contain `:` (never `|`). The Lua scripts write this format.

use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::domain::OrderId;
use crate::keys::EventKeys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Stock reserved and enqueued; the worker has not finalized it yet.
    Pending,
    /// Finalized by a worker: the sale is done.
    Confirmed,
    /// Dead-lettered: its units went back to the stock and to the user's allowance.
    Failed,
}

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
        let status = match parts.next()? {
            "p" => OrderStatus::Pending,
            "c" => OrderStatus::Confirmed,
            "f" => OrderStatus::Failed,
            _ => return None,
        };
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
