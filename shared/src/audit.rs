//! The books-balance invariant of an event, checked on one atomic snapshot
//! (`lua/audit.lua`). Tests run it at the end of every fault scenario; operators run it as
//! `flashsale-worker check --event E`.
//!
//! For every event, at every moment: `remaining + units in pending or confirmed orders ==
//! stock` (failed orders have given their units back), the confirmed counter equals the
//! confirmed units, every accepted order exists exactly once, every user's total equals the
//! units of their live orders and every idempotency entry names a real order. Once the worker
//! has drained, no order is pending and no stream entry waits.

use std::collections::HashMap;

use redis::RedisResult;
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::domain::EventId;
use crate::keys::{CONSUMER_GROUP, EventKeys};
use crate::scripts::{AUDIT, Reply};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub stock: i64,
    pub remaining: i64,
    pub confirmed_counter: i64,
    pub accepted_counter: i64,
    pub orders_pending: i64,
    pub orders_confirmed: i64,
    pub orders_failed: i64,
    pub units_pending: i64,
    pub units_confirmed: i64,
    pub units_failed: i64,
    pub corrupt_orders: i64,
    /// False once the per-user totals expired with the idempotency entries.
    pub user_totals_checked: bool,
    pub user_total_mismatches: i64,
    pub idempotency_dangling: i64,
    pub stream_pending: i64,
    /// Entries not yet delivered to the group; -1 when Redis cannot tell.
    pub stream_lag: i64,
}

impl Audit {
    /// Every way the books fail to balance, in words; empty when they balance. With
    /// `drained`, also requires that the worker has finished every order.
    pub fn violations(&self, drained: bool) -> Vec<String> {
        let mut found = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                found.push(what);
            }
        };
        let held = self.units_pending + self.units_confirmed;
        check(
            self.remaining + held == self.stock,
            format!("remaining {} + held units {held} != stock {}", self.remaining, self.stock),
        );
        check(self.remaining >= 0, format!("remaining {} is negative", self.remaining));
        check(
            self.confirmed_counter == self.units_confirmed,
            format!(
                "confirmed counter {} != confirmed units {}",
                self.confirmed_counter, self.units_confirmed
            ),
        );
        let orders = self.orders_pending + self.orders_confirmed + self.orders_failed;
        check(
            orders == self.accepted_counter,
            format!("{orders} orders stored but {} accepted", self.accepted_counter),
        );
        check(self.corrupt_orders == 0, format!("{} order records unreadable", self.corrupt_orders));
        check(
            self.user_total_mismatches == 0,
            format!("{} user totals differ from their orders", self.user_total_mismatches),
        );
        check(
            self.idempotency_dangling == 0,
            format!("{} idempotency entries name no order", self.idempotency_dangling),
        );
        if drained {
            check(self.orders_pending == 0, format!("{} orders still pending", self.orders_pending));
            check(self.stream_pending == 0, format!("{} stream entries unacknowledged", self.stream_pending));
            check(self.stream_lag == 0, format!("{} stream entries never delivered (lag)", self.stream_lag));
        }
        found
    }
}

/// Takes the snapshot; `None` when the event does not exist.
pub async fn audit(conn: &mut impl ConnectionLike, event: &EventId) -> RedisResult<Option<Audit>> {
    let keys = EventKeys::new(event);
    let reply = Reply::new(
        AUDIT
            .key(&keys.event)
            .key(&keys.orders)
            .key(&keys.users)
            .key(&keys.idem)
            .key(&keys.stream)
            .arg(CONSUMER_GROUP)
            .invoke_async(conn)
            .await?,
    )?;
    if reply.is_empty() {
        return Ok(None);
    }
    let mut values = HashMap::new();
    for i in (0..reply.len()).step_by(2) {
        values.insert(reply.str(i)?.to_owned(), reply.int(i + 1)?);
    }
    let get = |name: &str| values.get(name).copied().unwrap_or(0);
    Ok(Some(Audit {
        stock: get("stock"),
        remaining: get("remaining"),
        confirmed_counter: get("confirmed_counter"),
        accepted_counter: get("accepted_counter"),
        orders_pending: get("orders_pending"),
        orders_confirmed: get("orders_confirmed"),
        orders_failed: get("orders_failed"),
        units_pending: get("units_pending"),
        units_confirmed: get("units_confirmed"),
        units_failed: get("units_failed"),
        corrupt_orders: get("corrupt_orders"),
        user_totals_checked: get("user_totals_checked") == 1,
        user_total_mismatches: get("user_total_mismatches"),
        idempotency_dangling: get("idempotency_dangling"),
        stream_pending: get("stream_pending"),
        stream_lag: get("stream_lag"),
    }))
}
