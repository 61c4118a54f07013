//! The purchase: one call of `lua/purchase.lua`, which checks the event, the idempotency
//! entry, the sale window, the stock and the per-user total, then reserves and enqueues.

use redis::RedisResult;
use redis::aio::ConnectionLike;

use crate::domain::{IdempotencyKey, OrderId, UserId};
use crate::keys::EventKeys;
use crate::order::OrderRecord;
use crate::reply::{Reply, unexpected};
use crate::scripts::PURCHASE;

/// The idempotency scope of a purchase within its event: (user, key). Without an
/// `Idempotency-Key` the scope is the user alone, so a plain retry is recognised. The two
/// live in separate namespaces: a user id never contains `|`, so `user` can never equal
/// `user|key`, whatever the key's text.
pub fn scope(user: &UserId, key: Option<&IdempotencyKey>) -> String {
    match key {
        None => user.as_str().to_owned(),
        Some(key) => format!("{user}|{key}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurchaseOutcome {
    /// Stock reserved and the order enqueued; `remaining` is the stock left after it (`None`
    /// when the script ran twice, see [`purchase`]: the second run does not say).
    Accepted {
        order_id: OrderId,
        order: OrderRecord,
        remaining: Option<u64>,
    },
    /// Same scope and payload as an earlier successful purchase: that order, as it is now.
    Replayed {
        order_id: OrderId,
        order: OrderRecord,
    },
    /// Same scope, different payload.
    KeyMismatch {
        order_id: OrderId,
    },
    EventNotFound,
    /// More units in one request than the event allows per user.
    QuantityOverLimit {
        limit: u32,
    },
    SaleNotActive,
    /// An operator paused the sale.
    SalePaused,
    SoldOut {
        remaining: u64,
    },
    LimitExceeded {
        held: u32,
        limit: u32,
    },
}

/// Runs the purchase script. `new_order_id` is used only if the purchase is accepted.
///
/// Plain EVALSHA, never reloading on NOSCRIPT: a missing purchase script means Redis has not
/// been reconciled with the ledger since it restarted (the fence, see `shared::scripts`), and
/// the caller gets that error (the script did not run, nothing changed).
pub async fn purchase(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    scope: &str,
    user: &UserId,
    quantity: u32,
    new_order_id: OrderId,
) -> RedisResult<PurchaseOutcome> {
    let reply: redis::Value = command(keys, scope, user, quantity, new_order_id).query_async(conn).await?;
    Ok(own_replay_is_new(parse(Reply::new(reply)?)?, new_order_id))
}

/// A replay of the very order this attempt created is that attempt's acceptance: a cluster
/// client re-sends an `EVALSHA` after a node timed out or a connection broke, and the script
/// may have run the first time. Only this attempt knows `new_order_id` (a fresh UUID), so the
/// request is answered as the new order it is, and counted once.
fn own_replay_is_new(outcome: PurchaseOutcome, new_order_id: OrderId) -> PurchaseOutcome {
    match outcome {
        PurchaseOutcome::Replayed { order_id, order } if order_id == new_order_id => {
            PurchaseOutcome::Accepted { order_id, order, remaining: None }
        }
        other => other,
    }
}

/// The purchase script's `EVALSHA` (what [`purchase`] sends; benchmarks and tests pipeline it).
pub fn command(
    keys: &EventKeys,
    scope: &str,
    user: &UserId,
    quantity: u32,
    new_order_id: OrderId,
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(PURCHASE.get_hash())
        .arg(5)
        .arg(&keys.purchase_keys())
        .arg(scope)
        .arg(user.as_str())
        .arg(quantity)
        .arg(new_order_id.to_string());
    cmd
}

fn parse(reply: Reply) -> RedisResult<PurchaseOutcome> {
    let order_id = |reply: &Reply| {
        let text = reply.str(1)?;
        OrderId::parse(text)
            .ok_or_else(|| unexpected("an order id", &redis::Value::SimpleString(text.into())))
    };
    let record = |reply: &Reply| {
        let text = reply.str(2)?;
        OrderRecord::parse(text)
            .ok_or_else(|| unexpected("an order record", &redis::Value::SimpleString(text.into())))
    };
    Ok(match reply.str(0)? {
        "accepted" => PurchaseOutcome::Accepted {
            order_id: order_id(&reply)?,
            order: record(&reply)?,
            remaining: Some(reply.int(3)?.max(0) as u64),
        },
        "replayed" => PurchaseOutcome::Replayed { order_id: order_id(&reply)?, order: record(&reply)? },
        "idempotency_key_mismatch" => PurchaseOutcome::KeyMismatch { order_id: order_id(&reply)? },
        "event_not_found" => PurchaseOutcome::EventNotFound,
        "quantity_over_limit" => PurchaseOutcome::QuantityOverLimit { limit: reply.int(1)? as u32 },
        "sale_not_active" => PurchaseOutcome::SaleNotActive,
        "sale_paused" => PurchaseOutcome::SalePaused,
        "sold_out" => PurchaseOutcome::SoldOut { remaining: reply.int(1)?.max(0) as u64 },
        "limit_exceeded" => {
            PurchaseOutcome::LimitExceeded { held: reply.int(1)? as u32, limit: reply.int(2)? as u32 }
        }
        other => return Err(unexpected("a purchase outcome", &redis::Value::SimpleString(other.into()))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implicit_and_explicit_scopes_never_collide() {
        let user = UserId::parse("alice").unwrap();
        let key = IdempotencyKey::parse(b"alice").unwrap();
        assert_eq!(scope(&user, None), "alice");
        assert_eq!(scope(&user, Some(&key)), "alice|alice");
        // Another user whose id looks like a scoped key cannot exist: `|` is not allowed.
        assert!(UserId::parse("alice|alice").is_err());
    }

    #[test]
    fn a_replay_of_this_attempts_own_order_is_its_acceptance() {
        let mine = OrderId::random();
        let order = OrderRecord::parse("p|1|1764064800000||alice").unwrap();
        let replay = |order_id| PurchaseOutcome::Replayed { order_id, order: order.clone() };
        assert_eq!(
            own_replay_is_new(replay(mine), mine),
            PurchaseOutcome::Accepted { order_id: mine, order: order.clone(), remaining: None }
        );
        // Somebody else's earlier order (a client's retry) stays a replay.
        let earlier = OrderId::random();
        assert_eq!(own_replay_is_new(replay(earlier), mine), replay(earlier));
    }
}
