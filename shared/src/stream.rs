//! The order stream of each event and its consumer group: creating the group, finalizing
//! delivered entries (`lua/finalize.lua`) and trimming acknowledged history (`lua/trim.lua`).

use redis::RedisResult;
use redis::aio::ConnectionLike;

use crate::domain::EventId;
use crate::keys::{CONSUMER_GROUP, EventKeys, STOCK_RETURNED_CHANNEL};
use crate::scripts::{FINALIZE, Reply, TRIM, unexpected};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// The order went from pending to confirmed.
    Confirmed,
    /// The order was already final: acknowledged, nothing counted.
    Duplicate,
    /// The entry was no longer pending (another worker finished it): nothing done.
    Skipped,
    /// Moved to the dead-letter stream, with the reason; a pending order it named failed.
    DeadLettered(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizedEntry {
    pub entry_id: String,
    pub outcome: EntryOutcome,
    pub quantity: u32,
    /// When the order was reserved (0 when the entry named no order).
    pub created_ms: i64,
    /// When it was confirmed or failed.
    pub done_ms: i64,
}

/// Finalizes delivered entries of one event's stream in one atomic script call.
pub async fn finalize(
    conn: &mut impl ConnectionLike,
    event: &EventId,
    keys: &EventKeys,
    entry_ids: &[String],
    max_deliveries: u32,
) -> RedisResult<Vec<FinalizedEntry>> {
    let mut invocation = FINALIZE.prepare_invoke();
    invocation
        .key(&keys.event)
        .key(&keys.orders)
        .key(&keys.users)
        .key(&keys.stream)
        .key(&keys.dead)
        .arg(CONSUMER_GROUP)
        .arg(max_deliveries)
        .arg(event.as_str())
        .arg(STOCK_RETURNED_CHANNEL)
        .arg(entry_ids);
    let reply = Reply::new(invocation.invoke_async(conn).await?)?;
    if reply.len() != entry_ids.len() * 5 {
        return Err(unexpected("five elements per entry", &redis::Value::Int(reply.len() as i64)));
    }
    (0..entry_ids.len())
        .map(|i| {
            let at = i * 5;
            let outcome = match reply.str(at + 1)? {
                "confirmed" => EntryOutcome::Confirmed,
                "duplicate" => EntryOutcome::Duplicate,
                "skipped" => EntryOutcome::Skipped,
                other => match other.strip_prefix("dead_lettered:") {
                    Some(reason) => EntryOutcome::DeadLettered(reason.to_owned()),
                    None => {
                        return Err(unexpected(
                            "an entry outcome",
                            &redis::Value::SimpleString(other.into()),
                        ));
                    }
                },
            };
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

/// Removes acknowledged history below the oldest pending entry; returns how many went.
pub async fn trim(conn: &mut impl ConnectionLike, keys: &EventKeys) -> RedisResult<u64> {
    TRIM.key(&keys.stream).arg(CONSUMER_GROUP).invoke_async(conn).await
}
