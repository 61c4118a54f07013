//! The order stream of each event and its consumer group: the group itself, the three ways a
//! worker gets entries (new ones, its own pending ones, idle ones of other consumers), their
//! finalization (`lua/finalize.lua`) and trimming of acknowledged history (`lua/trim.lua`).
//!
//! Only one of the three reads raises an entry's delivery count: `XREADGROUP ... >`, once per
//! entry. A worker's own pending entries are listed with `XPENDING` and idle entries taken with
//! `XAUTOCLAIM ... JUSTID`, neither of which counts a delivery (`XREADGROUP ... 0` and a plain
//! `XAUTOCLAIM` do, even while Redis is full). Poison is counted by the finalize script itself,
//! with a write a full Redis refuses, so no infrastructure fault can make an order look poison.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};

use crate::keys::{CONSUMER_GROUP, EventKeys};
use crate::scripts::{FINALIZE, Reply, TRIM, integer, text, unexpected};

/// Creates the consumer group at id 0 with MKSTREAM, so entries added before the group
/// existed are still delivered. An existing group (BUSYGROUP) is success.
pub async fn ensure_group(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.stream)
        .arg(CONSUMER_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Entries delivered from one of the streams a read asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Index of the stream in the slice given to [`read_new`].
    pub stream: usize,
    pub ids: Vec<String>,
}

/// Reads up to `count` new entries per stream for `consumer`, blocking up to `block_ms` when
/// there are none. The one read that counts a delivery. Blocking: call it on a connection of
/// its own, never the shared multiplexed one.
pub async fn read_new(
    conn: &mut impl ConnectionLike,
    streams: &[&EventKeys],
    consumer: &str,
    count: u32,
    block_ms: u64,
) -> RedisResult<Vec<Delivered>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(CONSUMER_GROUP).arg(consumer).arg("COUNT").arg(count);
    cmd.arg("BLOCK").arg(block_ms).arg("STREAMS");
    for keys in streams {
        cmd.arg(&keys.stream);
    }
    for _ in streams {
        cmd.arg(">");
    }
    let reply: Value = cmd.query_async(conn).await?;
    Ok(delivered(reply, streams))
}

/// The ids of an XREADGROUP reply, per stream. Parsed by hand: only the ids matter (the
/// script reads each entry itself).
fn delivered(reply: Value, streams: &[&EventKeys]) -> Vec<Delivered> {
    let Value::Array(per_stream) = reply else { return Vec::new() };
    let mut batches = Vec::new();
    for item in per_stream {
        let Value::Array(pair) = item else { continue };
        let [key, Value::Array(entries)] = pair.as_slice() else { continue };
        let Some(stream) = text(key).and_then(|k| streams.iter().position(|s| s.stream == k)) else {
            continue;
        };
        let ids: Vec<String> = entries
            .iter()
            .filter_map(|entry| match entry {
                Value::Array(parts) => parts.first().and_then(text).map(str::to_owned),
                _ => None,
            })
            .collect();
        if !ids.is_empty() {
            batches.push(Delivered { stream, ids });
        }
    }
    batches
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
        if crate::scripts::field(fields, "name").and_then(text) != Some(CONSUMER_GROUP) {
            continue;
        }
        let int = |name: &str| crate::scripts::field(fields, name).and_then(integer);
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
    pub quantity: u32,
    /// When the order was reserved (0 when the entry named no order).
    pub created_ms: i64,
    /// When it was confirmed (or dead-lettered).
    pub done_ms: i64,
}

/// Finalizes entries of one event's stream that this worker holds, in one atomic script call.
/// `max_attempts` failed attempts are allowed per entry; the next one parks it.
pub async fn finalize(
    conn: &mut impl ConnectionLike,
    keys: &EventKeys,
    entry_ids: &[String],
    max_attempts: u32,
) -> RedisResult<Vec<FinalizedEntry>> {
    let mut invocation = FINALIZE.prepare_invoke();
    invocation
        .key(&keys.event)
        .key(&keys.orders)
        .key(&keys.stream)
        .key(&keys.dead)
        .key(&keys.attempts)
        .arg(CONSUMER_GROUP)
        .arg(max_attempts)
        .arg(entry_ids);
    let reply = Reply::new(invocation.invoke_async(conn).await?)?;
    if reply.len() != entry_ids.len() * 5 {
        return Err(unexpected("five elements per entry", &Value::Int(reply.len() as i64)));
    }
    (0..entry_ids.len())
        .map(|i| {
            let at = i * 5;
            let outcome = parse_outcome(reply.str(at + 1)?)?;
            Ok(FinalizedEntry {
                entry_id: reply.str(at)?.to_owned(),
                outcome,
                quantity: reply.int(at + 2)? as u32,
                created_ms: reply.int(at + 3)?,
                done_ms: reply.int(at + 4).unwrap_or(0),
            })
        })
        .collect()
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
