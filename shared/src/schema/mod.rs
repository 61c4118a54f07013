//! The Redis schema, in one place: every key, hash field, record format, status and stream
//! field the gateway, the worker and the Lua scripts share.
//!
//! ```text
//! fs:events                  SET     every event id, so workers discover new events
//! fs:stock-returned          channel an event id, published when a failed order returns units
//! fs:write-probe             STRING  written by /readyz (expires after 10 s)
//! fs:reconciled              STRING  "master_replid/run_id" the node was last reconciled with the
//!                                    ledger under (the sales fence, one node; never expires)
//! fs:{fence:N}:reconciled    STRING  the same, of one cluster primary: N puts the key in a slot that
//!                                    primary serves ([`keys::node_reconciled`])
//! fs:{ev:E}:event            HASH    configuration and counters: [`EventField`]
//! fs:{ev:E}:orders           HASH    order id -> record "status|quantity|created_ms|done_ms|user_id"
//!                                    ([`record`]; status letters of [`OrderStatus`])
//! fs:{ev:E}:idem             HASH    idempotency scope -> order id (purged after retention)
//! fs:{ev:E}:users            HASH    user id -> units held (purged after retention)
//! fs:{ev:E}:stream           STREAM  [`stream::ORDER`], [`stream::SCOPE`], read by the worker group
//! fs:{ev:E}:dead             STREAM  dead letters: [`dead_letter`] fields
//! fs:{ev:E}:attempts         HASH    stream entry id -> failed finalize attempts (usually absent)
//! ```
//!
//! No key of an event carries a TTL: under a `volatile-*` eviction policy those are the keys
//! Redis evicts first. The worker removes what is no longer needed (`lua/purge.lua`).
//!
//! The Lua scripts read the same names from a prelude generated from this module
//! ([`lua::prelude_for`]): `EV_REMAINING` is [`EventField::Remaining`], `PENDING` the pending
//! status letter, `PENDING_RECORD` the format `lua/purchase.lua` writes. A test holds every
//! script to it (no field name, status letter or record pattern spelled out in a script), so
//! a new counter or status is one edit here and one where a script uses it.

pub mod event_hash;
pub mod keys;
pub mod lua;
pub mod record;

pub use event_hash::{EventField, EventHash, EventStateMark};
pub use record::{OrderRecord, OrderStatus};

/// The fields of an order stream entry, as `lua/purchase.lua`, an operator's redrive or fail
/// (`lua/resolve_dead_letter.lua`) write them.
pub mod stream {
    /// The order id.
    pub const ORDER: &str = "order";
    /// The idempotency scope, so that the ledger can rebuild Redis's entry.
    pub const SCOPE: &str = "scope";
}

/// The fields of a dead letter (`lua/finalize.lua` writes them).
pub mod dead_letter {
    /// The id of the order stream entry that was dead-lettered.
    pub const ENTRY: &str = "entry";
    pub const REASON: &str = "reason";
    /// Failed attempts counted before it was parked.
    pub const DELIVERIES: &str = "deliveries";
    /// The order id ('' when the entry named none).
    pub const ORDER: &str = "order";
    /// The entry's fields, as JSON.
    pub const PAYLOAD: &str = "payload";
    /// When (Redis time, ms).
    pub const AT: &str = "at";
    /// The last error ('' when none).
    pub const ERROR: &str = "error";
}

/// Redis error codes no stream entry is to blame for: out of memory, a read-only replica, a
/// failover or resharding in progress. `lua/finalize.lua` re-raises them instead of counting
/// a failed attempt, and the worker retries the whole batch later.
pub const INFRA_ERRORS: [&str; 11] = [
    "OOM",
    "READONLY",
    "MISCONF",
    "NOREPLICAS",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "MOVED",
    "ASK",
];

/// Whether a Redis error code (the first word of an error reply) is one of [`INFRA_ERRORS`].
pub fn is_infra_error(code: &str) -> bool {
    INFRA_ERRORS.contains(&code)
}
