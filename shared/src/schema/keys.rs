//! Every Redis key and channel name, built here and nowhere else (the layout: [`super`]).
//!
//! Every key of one event carries the hash tag `{ev:E}`, so all of them live in one Redis
//! Cluster slot and each script may touch them all. `fs:events` is only ever used on its own.

use crate::domain::EventId;

/// Set of all event ids; workers poll it to find new streams without a restart.
pub const EVENTS: &str = "fs:events";

/// Pub/sub channel carrying an event id whenever units return to that event's stock.
pub const STOCK_RETURNED_CHANNEL: &str = "fs:stock-returned";

/// A throwaway key (expires in seconds) that `/readyz` writes to learn whether Redis accepts
/// writes; never read.
pub const WRITE_PROBE: &str = "fs:write-probe";

/// The identity (`master_replid/run_id`, see `connection::ServerInfo::fence_identity`) under
/// which a worker last reconciled this node with the ledger (one node, `REDIS_URL`). It is
/// data, so it replicates and comes back from snapshots: a node whose identity differs from
/// it holds data that came from somewhere else and is reconciled again before it sells (the
/// sales fence, `shared::scripts::FenceState`).
pub const RECONCILED: &str = "fs:reconciled";

/// The pattern of [`node_reconciled`]: `fs:{fence:N}:reconciled`, N the hash tag's number.
const NODE_RECONCILED_PREFIX: &str = "fs:{fence:";

/// Redis Cluster has this many hash slots.
pub const CLUSTER_SLOTS: u16 = 16384;

/// [`RECONCILED`] of one cluster primary: `fs:{fence:N}:reconciled`, where N is the smallest
/// number whose hash tag lands in one of the slot ranges (inclusive) that primary serves, so
/// the marker lives on that node, moves with its data (it replicates, and a promoted replica
/// serves the same slots) and every worker names the same key. `None` for a primary without
/// slots. A primary whose slots change may get another key, whose absence means one more
/// reconciliation: never a sale from unreconciled data.
pub fn node_reconciled(slots: &[(u16, u16)]) -> Option<String> {
    if slots.iter().all(|(start, end)| start > end) {
        return None;
    }
    // One slot of 16384 is met within a few tens of thousands of tries (each a CRC16 of a few
    // bytes); three primaries' ranges within a handful.
    (0u32..1 << 22).map(node_reconciled_key).find(|key| {
        let slot = slot_of(key);
        slots.iter().any(|(start, end)| (*start..=*end).contains(&slot))
    })
}

fn node_reconciled_key(tag: u32) -> String {
    format!("{NODE_RECONCILED_PREFIX}{tag}}}:reconciled")
}

/// The cluster hash slot of `key` (`CLUSTER KEYSLOT`): CRC16/XMODEM of its hash tag (the text
/// between the first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
/// (redis-rs computes it too, but keeps the number to itself.)
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let close = bytes[open + 1..].iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for byte in hashed {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % CLUSTER_SLOTS
}

/// The consumer group every worker joins on every order stream.
pub const CONSUMER_GROUP: &str = "flashsale-workers";

const TAG_PREFIX: &str = "fs:{ev:";

/// All keys of one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventKeys {
    pub event: String,
    pub orders: String,
    pub idem: String,
    pub users: String,
    pub stream: String,
    pub dead: String,
    pub attempts: String,
}

impl EventKeys {
    pub fn new(id: &EventId) -> Self {
        let key = |suffix: &str| format!("{TAG_PREFIX}{id}}}:{suffix}");
        Self {
            event: key("event"),
            orders: key("orders"),
            idem: key("idem"),
            users: key("users"),
            stream: key("stream"),
            dead: key("dead"),
            attempts: key("attempts"),
        }
    }

    /// The keys of `lua/purchase.lua`, in its KEYS order.
    pub fn purchase_keys(&self) -> [&str; 5] {
        [&self.event, &self.idem, &self.users, &self.orders, &self.stream]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_an_event_shares_one_hash_tag() {
        let id = EventId::parse("drop-1").unwrap();
        let keys = EventKeys::new(&id);
        for key in
            [&keys.event, &keys.orders, &keys.idem, &keys.users, &keys.stream, &keys.dead, &keys.attempts]
        {
            assert!(key.starts_with("fs:{ev:drop-1}:"), "{key}");
        }
    }

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // The examples of the Redis Cluster specification and `CLUSTER KEYSLOT` on 7.0.15.
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_ne!(slot_of("foo{}{bar}"), slot_of("bar"), "an empty first tag hashes the whole key");
        let event = EventKeys::new(&EventId::parse("drop-1").unwrap());
        assert_eq!(slot_of(&event.event), slot_of(&event.stream));
    }

    #[test]
    fn a_nodes_marker_lands_in_its_own_slots() {
        for slots in [vec![(0, 5460)], vec![(5461, 10922)], vec![(10923, 16383)], vec![(7000, 7000)]] {
            let key = node_reconciled(&slots).unwrap();
            let slot = slot_of(&key);
            assert!(slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)), "{key} -> {slot}");
            assert!(key.starts_with("fs:{fence:") && key.ends_with("}:reconciled"), "{key}");
            assert_eq!(node_reconciled(&slots), Some(key), "every worker names the same key");
        }
        assert_eq!(node_reconciled(&[]), None);
    }
}
