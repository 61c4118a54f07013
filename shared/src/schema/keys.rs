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
}
