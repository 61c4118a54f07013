//! The order stream of each event and its consumer group: the group itself, the three ways a
//! worker gets entries (new ones, its own pending ones, idle ones of other consumers), their
//! finalization (`lua/finalize.lua`) and trimming of acknowledged history (`lua/trim.lua`).
//!
//! Only one of the three reads raises an entry's delivery count: `XREADGROUP ... >`, once per
//! entry. A worker's own pending entries are listed with `XPENDING` and idle entries taken with
//! `XAUTOCLAIM ... JUSTID`, neither of which counts a delivery (`XREADGROUP ... 0` and a plain
//! `XAUTOCLAIM` do, even while Redis is full). Poison is counted by the finalize script itself,
//! with a write a full Redis refuses, so no infrastructure fault can make an order look poison.

use std::borrow::Cow;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use crate::domain::OrderId;
use crate::keys::{CONSUMER_GROUP, EventKeys};
use crate::reply::{Reply, integer, text, unexpected};
use crate::schema;
use crate::scripts::{ENSURE_GROUP, FINALIZE, TRIM};

/// Creates the consumer group at id 0 with MKSTREAM, so entries added before the group
/// existed are still delivered, but only while the event exists (`lua/ensure_group.lua`): a
/// stream is never brought back for an event that left Redis. An existing group is success.
pub async fn ensure_group(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<()> {
    ENSURE_GROUP.key(&keys.event).key(&keys.stream).arg(CONSUMER_GROUP).invoke_async::<i64>(conn).await?;
    Ok(())
}

/// One entry of an order stream: `{order = id, scope = idempotency scope}` as
/// `lua/purchase.lua` (or an operator's redrive or fail) wrote it, parsed once here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    /// The order it names, as far as the worker read it.
    pub order: EntryOrder,
    /// Empty for entries written before the scope was recorded.
    pub scope: String,
}

/// What an entry's `order` field says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOrder {
    /// An order id, spelled as the gateway writes them (the field of the event's `orders`
    /// hash).
    Id(OrderId),
    /// An `order` field that is no such id (a foreign producer, a hand-made entry): passed to
    /// the finalize script as it is, which dead-letters it (`unknown_order`).
    Malformed(String),
    /// No `order` field, or the entry's fields were not read (it is gone): the finalize script
    /// reads the entry itself and dead-letters it.
    Unread,
}

impl EntryOrder {
    /// Parses an `order` field. Only the gateway's own spelling (a lower-case hyphenated UUID)
    /// is an [`EntryOrder::Id`]: any other spelling names no field of the orders hash.
    fn parse(text: String) -> Self {
        match OrderId::parse(&text) {
            Some(id) if id.to_string() == text => Self::Id(id),
            _ => Self::Malformed(text),
        }
    }

    /// The order as the finalize script and the orders hash know it (`None` when unread).
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Self::Id(id) => Some(Cow::Owned(id.to_string())),
            Self::Malformed(text) => Some(Cow::Borrowed(text)),
            Self::Unread => None,
        }
    }
}

impl Entry {
    fn parse(id: &str, fields: &[Value]) -> Self {
        let get = |name: &str| crate::reply::field(fields, name).and_then(text).map(str::to_owned);
        let order = get(schema::stream::ORDER).map_or(EntryOrder::Unread, EntryOrder::parse);
        Self { id: id.to_owned(), order, scope: get(schema::stream::SCOPE).unwrap_or_default() }
    }

    /// An entry known only by its id (its fields are read by the finalize script).
    pub fn unread(id: String) -> Self {
        Self { id, order: EntryOrder::Unread, scope: String::new() }
    }
}

/// Reads up to `count` new entries of one event's stream for `consumer`, blocking up to
/// `block_ms` when there are none. The one read that counts a delivery. Blocking: call it on a
/// connection of its own, never the shared multiplexed one. One stream per read: a command
/// spanning two events would be refused by a Redis Cluster (`CROSSSLOT`).
pub async fn read_new(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    consumer: &str,
    count: u32,
    block_ms: u64,
) -> RedisResult<Vec<Entry>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(CONSUMER_GROUP).arg(consumer).arg("COUNT").arg(count);
    cmd.arg("BLOCK").arg(block_ms).arg("STREAMS").arg(&keys.stream).arg(">");
    let reply: Value = cmd.query_async(conn).await?;
    Ok(delivered(reply, keys))
}

/// The entries of an XREADGROUP reply. Parsed by hand: an entry deleted while pending comes
/// back with nil fields, which typed parsing rejects.
fn delivered(reply: Value, keys: &EventKeys) -> Vec<Entry> {
    let Value::Array(per_stream) = reply else { return Vec::new() };
    let mut delivered = Vec::new();
    for item in per_stream {
        let Value::Array(pair) = item else { continue };
        let [key, Value::Array(entries)] = pair.as_slice() else { continue };
        if text(key) == Some(keys.stream.as_str()) {
            delivered.extend(entries.iter().filter_map(entry_of));
        }
    }
    delivered
}

/// `[id, [field, value, ...]]` as XREADGROUP and XRANGE give it (fields may be nil).
fn entry_of(value: &Value) -> Option<Entry> {
    let Value::Array(parts) = value else { return None };
    let id = parts.first().and_then(text)?;
    Some(match parts.get(1) {
        Some(Value::Array(fields)) => Entry::parse(id, fields),
        _ => Entry::unread(id.to_owned()),
    })
}

/// Reads the fields of entries known by id (own pending ones, claimed ones), in one
/// pipelined round trip of single-entry `XRANGE`s; an entry gone from the stream comes back
/// unread (the finalize script dead-letters it).
pub async fn describe(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    ids: &[String],
) -> RedisResult<Vec<Entry>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("XRANGE").arg(&keys.stream).arg(id).arg(id);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    Ok(ids
        .iter()
        .zip(replies)
        .map(|(id, reply)| match reply {
            Value::Array(found) => {
                found.first().and_then(entry_of).unwrap_or_else(|| Entry::unread(id.clone()))
            }
            _ => Entry::unread(id.clone()),
        })
        .collect())
}

/// Resets the idle time of entries this consumer holds (`XCLAIM ... 0 ... JUSTID`, which
/// counts no delivery), so that no other worker claims them while this one waits for the
/// ledger to come back.
pub async fn keep(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    consumer: &str,
    ids: &[String],
) -> RedisResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XCLAIM")
        .arg(&keys.stream)
        .arg(CONSUMER_GROUP)
        .arg(consumer)
        .arg(0)
        .arg(ids)
        .arg("JUSTID")
        .exec_async(conn)
        .await
}

/// The first `count` entries pending with `consumer` (delivered, not acknowledged), oldest
/// first. `XPENDING` does not count a delivery.
pub async fn own_pending(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    consumer: &str,
    count: u32,
) -> RedisResult<Vec<String>> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(&keys.stream)
        .arg(CONSUMER_GROUP)
        .arg("-")
        .arg("+")
        .arg(count)
        .arg(consumer)
        .query_async(conn)
        .await?;
    let Value::Array(rows) = reply else { return Err(unexpected("an XPENDING list", &reply)) };
    Ok(rows
        .iter()
        .filter_map(|row| match row {
            Value::Array(fields) => fields.first().and_then(text).map(str::to_owned),
            _ => None,
        })
        .collect())
}

/// One step of taking over entries idle for at least `min_idle_ms` in any consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub ids: Vec<String>,
    /// Where the next step starts; `None` once the whole pending list was scanned.
    pub next: Option<String>,
}

/// `XAUTOCLAIM ... JUSTID` from `cursor` (start with `"0-0"`): the entries become
/// `consumer`'s, their idle time is reset, and their delivery count is left alone.
pub async fn claim_idle(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: u32,
) -> RedisResult<Claimed> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(&keys.stream)
        .arg(CONSUMER_GROUP)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .arg("JUSTID")
        .query_async(conn)
        .await?;
    let Value::Array(parts) = &reply else { return Err(unexpected("an XAUTOCLAIM reply", &reply)) };
    let (Some(next), Some(Value::Array(ids))) = (parts.first().and_then(text), parts.get(1)) else {
        return Err(unexpected("an XAUTOCLAIM reply", &reply));
    };
    Ok(Claimed {
        ids: ids.iter().filter_map(text).map(str::to_owned).collect(),
        next: (next != "0-0").then(|| next.to_owned()),
    })
}

/// The consumer group's counts on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupStats {
    /// Delivered to a consumer, not acknowledged.
    pub pending: i64,
    /// Not delivered yet; `None` when Redis cannot tell (after some deletions).
    pub lag: Option<i64>,
}

/// `None` when the stream or the group does not exist (yet).
pub async fn group_stats(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
) -> RedisResult<Option<GroupStats>> {
    let reply: RedisResult<Value> =
        redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream).query_async(conn).await;
    let reply = match reply {
        // No stream yet: no group either.
        Err(e) if e.code() == Some("ERR") => return Ok(None),
        other => other?,
    };
    let Value::Array(groups) = reply else { return Ok(None) };
    for group in &groups {
        let Value::Array(fields) = group else { continue };
        if crate::reply::field(fields, "name").and_then(text) != Some(CONSUMER_GROUP) {
            continue;
        }
        let int = |name: &str| crate::reply::field(fields, name).and_then(integer);
        return Ok(Some(GroupStats { pending: int("pending").unwrap_or(0), lag: int("lag") }));
    }
    Ok(None)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// The order went from pending to confirmed.
    Confirmed,
    /// The order was already final: acknowledged, nothing counted.
    Duplicate,
    /// The entry was no longer pending (another worker finished it): nothing done.
    Skipped,
    /// Not understood (the reason says why), moved to the dead-letter stream; holds nothing.
    DeadLettered(String),
    /// Its order is pending but it failed too often: moved to the dead-letter stream, the
    /// order left pending with its units held until an operator decides.
    Parked(String),
    /// Processing it raised this error; the attempt was counted and it stays pending.
    Retry(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizedEntry {
    pub entry_id: String,
    pub outcome: EntryOutcome,
    /// When the batch was finalized (Redis's clock).
    pub done_ms: i64,
}

impl FinalizedEntry {
    /// Milliseconds from the purchase to its confirmation. The entry id's first part is the
    /// time purchase.lua added the entry, in the same script that reserved the stock.
    pub fn lag_ms(&self) -> i64 {
        (self.done_ms - stream_id_order(&self.entry_id).0 as i64).max(0)
    }
}

/// One entry to finalize: its id, the order it names if the worker read it, and why the
/// ledger refused that order, if it did (which counts as a failed attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToFinalize<'a> {
    pub entry_id: &'a str,
    pub order: &'a EntryOrder,
    pub refusal: Option<&'a str>,
}

impl<'a> ToFinalize<'a> {
    pub fn of(entry: &'a Entry) -> Self {
        Self { entry_id: &entry.id, order: &entry.order, refusal: None }
    }

    /// An entry known by its id only (the script reads the order from the entry).
    pub fn by_id(entry_id: &'a str) -> Self {
        Self { entry_id, order: &EntryOrder::Unread, refusal: None }
    }
}

/// Finalizes entries of one event's stream that this worker holds, in one atomic script call.
/// `max_attempts` failed attempts are allowed per entry; the next one parks it.
pub async fn finalize(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    entries: &[ToFinalize<'_>],
    max_attempts: u32,
) -> RedisResult<Vec<FinalizedEntry>> {
    // In stream order: the script takes the first and last as the range of its one XPENDING.
    let mut entries = entries.to_vec();
    entries.sort_by_key(|e| stream_id_order(e.entry_id));
    let mut invocation = FINALIZE.prepare_invoke();
    invocation
        .key(&keys.event)
        .key(&keys.orders)
        .key(&keys.stream)
        .key(&keys.dead)
        .key(&keys.attempts)
        .arg(CONSUMER_GROUP)
        .arg(max_attempts)
        .arg(entries.len());
    for entry in &entries {
        invocation.arg(entry.entry_id).arg(entry.order.as_text().as_deref().unwrap_or(""));
    }
    for (position, entry) in entries.iter().enumerate() {
        if let Some(refusal) = entry.refusal {
            invocation.arg(position + 1).arg(refusal);
        }
    }
    let reply = Reply::new(invocation.invoke_async(conn).await?)?;
    let done_ms = reply.int(0)?;
    parse_outcomes(&reply, entries.len())?
        .into_iter()
        .zip(&entries)
        .map(|(outcome, entry)| Ok(FinalizedEntry { entry_id: entry.entry_id.to_owned(), outcome, done_ms }))
        .collect()
}

/// The script lists only the entries it did not confirm, as (position, outcome) pairs after
/// its time: every other entry of the batch was confirmed.
fn parse_outcomes(reply: &Reply, entries: usize) -> RedisResult<Vec<EntryOutcome>> {
    if reply.len() % 2 != 1 || reply.len() > 1 + entries * 2 {
        return Err(unexpected(
            "the time, then (position, outcome) per entry not confirmed",
            &Value::Int(reply.len() as i64),
        ));
    }
    let mut outcomes = vec![EntryOutcome::Confirmed; entries];
    for at in (1..reply.len()).step_by(2) {
        let position = reply.int(at)?;
        let slot = usize::try_from(position)
            .ok()
            .and_then(|p| p.checked_sub(1))
            .and_then(|i| outcomes.get_mut(i))
            .ok_or_else(|| unexpected("a position in the batch", &Value::Int(position)))?;
        *slot = parse_outcome(reply.str(at + 1)?)?;
    }
    Ok(outcomes)
}

/// A stream id's (milliseconds, sequence), for ordering; malformed ids sort first.
fn stream_id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn parse_outcome(text: &str) -> RedisResult<EntryOutcome> {
    let tagged = |prefix: &str| text.strip_prefix(prefix).map(str::to_owned);
    Ok(match text {
        "confirmed" => EntryOutcome::Confirmed,
        "duplicate" => EntryOutcome::Duplicate,
        "skipped" => EntryOutcome::Skipped,
        _ => {
            if let Some(reason) = tagged("dead_lettered:") {
                EntryOutcome::DeadLettered(reason)
            } else if let Some(reason) = tagged("parked:") {
                EntryOutcome::Parked(reason)
            } else if let Some(error) = tagged("retry:") {
                EntryOutcome::Retry(error)
            } else {
                return Err(unexpected("an entry outcome", &Value::SimpleString(text.into())));
            }
        }
    })
}

/// Removes acknowledged history below the oldest pending entry; returns how many went.
pub async fn trim(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<u64> {
    TRIM.key(&keys.stream).arg(CONSUMER_GROUP).invoke_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(items: Vec<Value>) -> Reply {
        Reply::new(Value::Array(items)).unwrap()
    }

    #[test]
    fn entries_the_script_does_not_list_were_confirmed() {
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let got = parse_outcomes(
            &reply(vec![
                Value::Int(1_000),
                Value::Int(2),
                text("skipped"),
                Value::Int(4),
                text("retry:ERR x"),
            ]),
            4,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                EntryOutcome::Confirmed,
                EntryOutcome::Skipped,
                EntryOutcome::Confirmed,
                EntryOutcome::Retry("ERR x".into())
            ]
        );
        assert_eq!(
            parse_outcomes(&reply(vec![Value::Int(1_000)]), 3).unwrap(),
            vec![EntryOutcome::Confirmed; 3]
        );
        // A position outside the batch, or a reply cut in half, is not understood.
        assert!(parse_outcomes(&reply(vec![Value::Int(1), Value::Int(5), text("skipped")]), 4).is_err());
        assert!(parse_outcomes(&reply(vec![Value::Int(1), Value::Int(0), text("skipped")]), 4).is_err());
        assert!(parse_outcomes(&reply(vec![Value::Int(1), Value::Int(2)]), 4).is_err());
    }

    #[test]
    fn only_the_gateways_spelling_of_an_order_id_names_an_order() {
        let id = OrderId::random();
        assert_eq!(EntryOrder::parse(id.to_string()), EntryOrder::Id(id));
        let upper = id.to_string().to_uppercase();
        assert_eq!(EntryOrder::parse(upper.clone()), EntryOrder::Malformed(upper));
        assert_eq!(EntryOrder::parse("not-a-uuid".into()), EntryOrder::Malformed("not-a-uuid".into()));
        assert_eq!(EntryOrder::Malformed("x".into()).as_text().as_deref(), Some("x"));
        assert_eq!(EntryOrder::Unread.as_text(), None);
    }

    #[test]
    fn the_lag_runs_from_the_entry_id_to_the_batch() {
        let entry =
            FinalizedEntry { entry_id: "1000-3".into(), outcome: EntryOutcome::Confirmed, done_ms: 1_250 };
        assert_eq!(entry.lag_ms(), 250);
        assert_eq!(FinalizedEntry { done_ms: 900, ..entry }.lag_ms(), 0);
    }

    #[test]
    fn every_outcome_the_script_writes_is_understood() {
        assert_eq!(parse_outcome("confirmed").unwrap(), EntryOutcome::Confirmed);
        assert_eq!(
            parse_outcome("dead_lettered:unparseable").unwrap(),
            EntryOutcome::DeadLettered("unparseable".into())
        );
        assert_eq!(
            parse_outcome("parked:max_attempts").unwrap(),
            EntryOutcome::Parked("max_attempts".into())
        );
        assert_eq!(parse_outcome("retry:ERR x").unwrap(), EntryOutcome::Retry("ERR x".into()));
        assert!(parse_outcome("exploded").is_err());
    }
}
