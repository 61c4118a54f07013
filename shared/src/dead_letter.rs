//! Dead letters: stream entries the worker could not finalize, kept in `fs:{ev:E}:dead` with
//! their reason until an operator resolves them.
//!
//! Two kinds (see `lua/finalize.lua`): entries that cannot be understood (`unparseable`,
//! `entry_missing`, `unknown_order`, `corrupt_order`) hold nothing; *parked* entries
//! (`max_attempts`) name an order that stays pending, its units held, until an operator
//! redrives it (back on the stream, a worker confirms it) or fails it (units back on sale), each
//! one atomic step in `lua/resolve_dead_letter.lua`. No order is ever failed automatically.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};
use serde::Serialize;

use crate::domain::EventId;
use crate::keys::{EventKeys, STOCK_RETURNED_CHANNEL};
use crate::order::{OrderRecord, OrderStatus};
use crate::reply::{Reply, text, unexpected};
use crate::schema::dead_letter as fields;
use crate::scripts::RESOLVE_DEAD_LETTER;

/// Every reason the finalize script writes: the label values of
/// `flashsale_orders_dead_lettered_total{reason}` (a fixed set, so bounded).
pub const REASONS: [&str; 5] =
    ["unparseable", "entry_missing", "unknown_order", "corrupt_order", PARKED_REASON];

/// The reason of a parked entry: its order is pending and waits for an operator.
pub const PARKED_REASON: &str = "max_attempts";

/// One dead letter, as `flashsale-worker dead-letters list` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream: what `redrive` and `fail` take.
    pub id: String,
    /// The order stream entry it came from.
    pub entry: String,
    pub reason: String,
    /// Failed finalize attempts (0 for entries that were not understood).
    pub deliveries: u64,
    /// The order it names, if any.
    pub order_id: Option<String>,
    /// That order's status now (`pending` while parked), if it exists.
    pub order_status: Option<OrderStatus>,
    /// The entry's fields, as JSON.
    pub payload: String,
    /// The last error, for parked entries.
    pub error: Option<String>,
    /// When it was dead-lettered (Unix ms).
    pub at_ms: i64,
}

impl DeadLetter {
    /// Parked: its order is pending and holds units until an operator decides.
    pub fn is_parked(&self) -> bool {
        self.order_status == Some(OrderStatus::Pending)
    }
}

/// How many dead letters the event has (resolved ones are removed).
pub async fn count(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<u64> {
    redis::cmd("XLEN").arg(&keys.dead).query_async(conn).await
}

/// Dead letters after `after` (exclusive; `None` from the start), at most `count`, oldest
/// first, each with its order's status now. Page with the last id returned.
pub async fn list(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    after: Option<&str>,
    count: usize,
) -> RedisResult<Vec<DeadLetter>> {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let reply: Value = redis::cmd("XRANGE")
        .arg(&keys.dead)
        .arg(start)
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let Value::Array(rows) = reply else { return Err(unexpected("an XRANGE reply", &reply)) };
    let mut letters = Vec::with_capacity(rows.len());
    for row in &rows {
        let Value::Array(parts) = row else { continue };
        let [id, Value::Array(fields)] = parts.as_slice() else { continue };
        let get = |name: &str| crate::reply::field(fields, name).and_then(text).map(str::to_owned);
        letters.push(DeadLetter {
            id: text(id).unwrap_or_default().to_owned(),
            entry: get(fields::ENTRY).unwrap_or_default(),
            reason: get(fields::REASON).unwrap_or_default(),
            deliveries: get(fields::DELIVERIES).and_then(|d| d.parse().ok()).unwrap_or(0),
            order_id: get(fields::ORDER).filter(|o| !o.is_empty()),
            order_status: None,
            payload: get(fields::PAYLOAD).unwrap_or_default(),
            error: get(fields::ERROR).filter(|e| !e.is_empty()),
            at_ms: get(fields::AT).and_then(|a| a.parse().ok()).unwrap_or(0),
        });
    }
    let named: Vec<&str> = letters.iter().filter_map(|l| l.order_id.as_deref()).collect();
    if !named.is_empty() {
        let records: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&keys.orders).arg(&named).query_async(conn).await?;
        let mut records = records.into_iter();
        for letter in letters.iter_mut().filter(|l| l.order_id.is_some()) {
            letter.order_status =
                records.next().flatten().as_deref().and_then(OrderRecord::parse).map(|r| r.status);
        }
    }
    Ok(letters)
}

/// The orders parked in the event's dead-letter stream (named by a dead letter and pending in
/// Redis), read a page at a time. What heals a ledger that still says `confirmed` for one (a
/// worker stopped between the park and its ledger update): `worker/src/batch.rs`.
pub async fn parked_orders(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
) -> RedisResult<Vec<crate::domain::OrderId>> {
    const PAGE: usize = 200;
    let (mut after, mut parked) = (None::<String>, Vec::new());
    loop {
        let page = list(conn, keys, after.as_deref(), PAGE).await?;
        parked.extend(
            page.iter()
                .filter(|letter| letter.is_parked())
                .filter_map(|letter| letter.order_id.as_deref().and_then(crate::domain::OrderId::parse)),
        );
        if page.len() < PAGE {
            break;
        }
        after = page.last().map(|letter| letter.id.clone());
    }
    parked.sort_unstable_by_key(|id| id.as_uuid());
    parked.dedup();
    Ok(parked)
}

/// Parks an order again whose dead letter Redis lost (it restarted from an older snapshot, or
/// empty, and the ledger brought the order back pending, as `parked`): without a dead letter
/// no operator could decide it. The letter names no stream entry (that entry is gone too) and
/// carries the order's scope, as `lua/finalize.lua` would. Two workers reconciling at once may
/// both add one: resolving the first decides the order, the second is then just removed.
pub async fn park_again(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    order_id: &crate::domain::OrderId,
    scope: &str,
) -> RedisResult<()> {
    use crate::schema::stream as entry;
    let order = order_id.to_string();
    // The JSON array cjson.encode gives finalize.lua's letters (serde_json is no dependency
    // of this crate for one line).
    let quote = |text: &str| {
        let mut out = String::from('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    };
    let payload =
        format!("[{},{},{},{}]", quote(entry::ORDER), quote(&order), quote(entry::SCOPE), quote(scope));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    redis::cmd("XADD")
        .arg(&keys.dead)
        .arg("*")
        .arg(fields::ENTRY)
        .arg("")
        .arg(fields::REASON)
        .arg(PARKED_REASON)
        .arg(fields::DELIVERIES)
        .arg(0)
        .arg(fields::ORDER)
        .arg(&order)
        .arg(fields::PAYLOAD)
        .arg(payload)
        .arg(fields::AT)
        .arg(now_ms)
        .arg(fields::ERROR)
        .arg("parked again after a Redis restart: the ledger records it parked")
        .exec_async(conn)
        .await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Put the order back on the stream for a worker to confirm.
    Redrive,
    /// Fail the order: units back to the stock and to the buyer's allowance.
    Fail,
}

/// What resolving a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Resolution {
    /// The order is back on the stream as `entry`.
    Redriven { order_id: String, entry: String },
    /// The order failed and `units` went back on sale.
    Failed { order_id: String, units: u64 },
    /// There was no pending order to fail; the dead letter was removed.
    Removed { order_id: Option<String> },
    /// No dead letter has this id.
    NotFound,
    /// Redrive refused: the order is not pending (`status` is what it is, or `none`).
    NotPending { order_id: Option<String>, status: String },
}

/// Redrives or fails one dead letter, atomically (`lua/resolve_dead_letter.lua`).
pub async fn resolve(
    conn: &mut impl ConnectionLike,
    event: &EventId,
    keys: &EventKeys,
    action: Action,
    dead_letter_id: &str,
) -> RedisResult<Resolution> {
    let mode = match action {
        Action::Redrive => "redrive",
        Action::Fail => "fail",
    };
    let reply = Reply::new(
        RESOLVE_DEAD_LETTER
            .key(&keys.event)
            .key(&keys.orders)
            .key(&keys.users)
            .key(&keys.stream)
            .key(&keys.dead)
            .key(&keys.attempts)
            .arg(mode)
            .arg(dead_letter_id)
            .arg(event.as_str())
            .arg(STOCK_RETURNED_CHANNEL)
            .invoke_async(conn)
            .await?,
    )?;
    let order_id = || Some(reply.str(1).ok()?.to_owned()).filter(|o| !o.is_empty());
    let detail = reply.str(2)?.to_owned();
    Ok(match reply.str(0)? {
        "redriven" => Resolution::Redriven { order_id: order_id().unwrap_or_default(), entry: detail },
        "failed" => Resolution::Failed {
            order_id: order_id().unwrap_or_default(),
            units: detail.parse().map_err(|_| unexpected("a unit count", &Value::SimpleString(detail)))?,
        },
        "removed" => Resolution::Removed { order_id: order_id() },
        "not_found" => Resolution::NotFound,
        "not_pending" => Resolution::NotPending { order_id: order_id(), status: detail },
        other => return Err(unexpected("a resolution", &Value::SimpleString(other.into()))),
    })
}
