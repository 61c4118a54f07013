//! The Lua scripts of `lua/`, compiled into both binaries with `include_str!`.
//!
//! Each script's header documents its KEYS, ARGV and reply. [`Invocation::invoke_async`] sends
//! EVALSHA and, on NOSCRIPT (a restarted, flushed or newly promoted node), sends the source
//! with EVAL to the node that owns the keys, which also caches it there: a node restart heals
//! itself, and a cluster node that cannot be reached never fails calls on the others (a
//! `SCRIPT LOAD` goes to every node). [`load_all`] warms fresh servers up front.
//!
//! Except the purchase script, which is the **fence**: Redis's script cache is the one state
//! a restart never brings back (not in a snapshot, not in the AOF, empty on a promoted
//! replica), so "the purchase script is loaded" means "this Redis was reconciled with the
//! ledger since it (re)started". The gateway never loads it and never retries a purchase on
//! NOSCRIPT (it answers 503: reconciling); a worker loads it ([`lift_fence`]) only after it
//! restored, from the ledger, every order Redis may have forgotten. A Redis restarted from an
//! older snapshot therefore never sells a unit the ledger knows was sold.
//!
//! The script cache alone follows the process, not the data: Redis keeps it through
//! `REPLICAOF` and a full resync, so a former primary that resynced from another node and is
//! promoted again would sell from the other node's (older) data with its old script still
//! loaded. So the fence also follows the data ([`FenceState`]; one node, or each cluster
//! primary with its own marker, [`fence_state_on`]): a replica never
//! keeps the purchase script (a worker flushes it there: once promoted, it is fenced from its
//! first moment), and a primary sells only while the identity it was reconciled under
//! ([`crate::keys::RECONCILED`], written after each reconciliation) is still its own
//! (`master_replid`, new at every promotion; `run_id`, new at every restart).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, FromRedisValue, RedisResult, Script, ToRedisArgs};

use crate::connection::{Conn, ServerInfo, Shard};

/// A script's source (the schema's prelude, then the file of `lua/`) and its compiled handle
/// (which carries the SHA1 for EVALSHA).
#[derive(Debug)]
pub struct LuaScript {
    source: LazyLock<String>,
    compiled: LazyLock<Script>,
}

impl LuaScript {
    /// The Lua source (what `SCRIPT LOAD` sends).
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl LuaScript {
    /// A call of this script with a first key.
    pub fn key<T: ToRedisArgs>(&'static self, key: T) -> Invocation {
        let mut invocation = self.prepare_invoke();
        invocation.key(key);
        invocation
    }

    /// A call of this script, keys and arguments to be added.
    pub fn prepare_invoke(&'static self) -> Invocation {
        Invocation { script: self, keys: Vec::new(), args: Vec::new() }
    }
}

/// A prepared call of a script (the same shape as redis-rs's `ScriptInvocation`, whose NOSCRIPT
/// path loads the script on every node and so fails when one node is down).
#[derive(Debug)]
pub struct Invocation {
    script: &'static LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation {
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn command(&self, name: &str, body: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(body).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }

    /// EVALSHA; on NOSCRIPT, EVAL of the source (routed by the first key, like EVALSHA).
    pub async fn invoke_async<T: FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        match self.command("EVALSHA", self.script.get_hash()).query_async(conn).await {
            Err(error) if error.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.command("EVAL", self.script.source()).query_async(conn).await
            }
            result => result,
        }
    }
}

impl std::ops::Deref for LuaScript {
    type Target = Script;

    fn deref(&self) -> &Script {
        &self.compiled
    }
}

macro_rules! lua {
    ($file:literal) => {
        LuaScript {
            source: LazyLock::new(|| {
                let body = include_str!(concat!("../../lua/", $file));
                crate::schema::lua::prelude_for(body) + body
            }),
            compiled: LazyLock::new(|| {
                let body = include_str!(concat!("../../lua/", $file));
                Script::new(&(crate::schema::lua::prelude_for(body) + body))
            }),
        }
    };
}

pub static PURCHASE: LuaScript = lua!("purchase.lua");
pub static PUT_EVENT: LuaScript = lua!("put_event.lua");
pub static FINALIZE: LuaScript = lua!("finalize.lua");
pub static TRIM: LuaScript = lua!("trim.lua");
pub static PURGE: LuaScript = lua!("purge.lua");
pub static RESOLVE_DEAD_LETTER: LuaScript = lua!("resolve_dead_letter.lua");
pub static REMOVE_EVENT: LuaScript = lua!("remove_event.lua");
pub static ENSURE_GROUP: LuaScript = lua!("ensure_group.lua");

pub static RESTORE_ORDERS: LuaScript = lua!("restore_orders.lua");
pub static CONTROL: LuaScript = lua!("control.lua");

/// Every script but the purchase one (the fence).
static ALL: [&LuaScript; 9] = [
    &PUT_EVENT,
    &FINALIZE,
    &TRIM,
    &PURGE,
    &RESOLVE_DEAD_LETTER,
    &REMOVE_EVENT,
    &ENSURE_GROUP,
    &RESTORE_ORDERS,
    &CONTROL,
];

/// SCRIPT LOAD every script but the purchase one (see the module doc: the fence), so the first
/// call after a (re)start needs no second trip. Each is its own command (a keyless command in
/// a cluster pipeline reaches one random node; on its own, `SCRIPT LOAD` reaches every node).
pub async fn load_all(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    for script in ALL {
        redis::cmd("SCRIPT").arg("LOAD").arg(script.source()).exec_async(conn).await?;
    }
    Ok(())
}

/// Loads the purchase script on every primary: sales may start. Only once Redis holds every
/// order the ledger has (a worker's reconciliation; or a Redis known to be new and empty, as
/// in tests). Never on a replica: one promoted later must be reconciled first, since
/// replication is asynchronous and it may have missed the last orders.
pub async fn lift_fence(conn: &mut Conn) -> RedisResult<()> {
    conn.on_every_primary(redis::cmd("SCRIPT").arg("LOAD").arg(PURCHASE.source())).await
}

/// Whether sales are fenced: the purchase script is not loaded (Redis (re)started or was
/// flushed, and no worker has reconciled it with the ledger yet). In a cluster: on some
/// primary (`SCRIPT EXISTS` is asked of every primary and the answers combined with AND).
pub async fn is_fenced(conn: &mut impl ConnectionLike) -> RedisResult<bool> {
    let present: Vec<i64> =
        redis::cmd("SCRIPT").arg("EXISTS").arg(PURCHASE.get_hash()).query_async(conn).await?;
    Ok(present.first() != Some(&1))
}

/// What the fence sees of one node (`REDIS_URL`), read in one round trip by [`fence_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceState {
    /// A primary reconciled with the ledger under its current identity, the purchase script
    /// loaded: sales are open.
    Open,
    /// A replica. It never sells, but it may be promoted at any moment and its script cache
    /// survives that: `holds_purchase_script` means a worker must flush it now.
    Replica { holds_purchase_script: bool },
    /// A primary that must be reconciled before it sells: its script is missing (restart,
    /// flush) or its data may have come from elsewhere (its identity is not the one it was
    /// last reconciled under). `identity` is what to record once reconciled;
    /// `holds_purchase_script` means the fence must be raised (the script flushed) first.
    Stale { identity: String, holds_purchase_script: bool },
}

impl FenceState {
    /// The decision, apart from I/O: `marker` is [`crate::keys::RECONCILED`]'s value.
    pub fn of(holds_purchase_script: bool, info: &ServerInfo, marker: Option<&str>) -> Self {
        if !info.is_primary() {
            return Self::Replica { holds_purchase_script };
        }
        match marker {
            Some(marker) if holds_purchase_script && !info.moved_since(marker) => Self::Open,
            _ => Self::Stale { identity: info.fence_identity(), holds_purchase_script },
        }
    }
}

/// Reads what the fence needs of one node, pipelined: `SCRIPT EXISTS`, `INFO server
/// replication` (role, `master_replid`, `run_id`: about 930 bytes and 4 us of Redis time,
/// measured on 7.0.15 here; `SCRIPT EXISTS` 0.2 us) and `GET` of the marker.
/// One node only: in a cluster a keyless command in a pipeline reaches one random node (see
/// [`fence_state_on`]).
pub async fn fence_state(conn: &mut impl ConnectionLike) -> RedisResult<FenceState> {
    let replies: Vec<redis::Value> = fence_reads(crate::keys::RECONCILED).query_async(conn).await?;
    fence_state_of(&replies)
}

/// [`fence_state`] of one cluster primary, by address, its marker `marker_key`
/// ([`crate::keys::node_reconciled`] of its slots): the same three commands in one round trip
/// to that node.
pub async fn fence_state_on(conn: &mut Conn, shard: &Shard, marker_key: &str) -> RedisResult<FenceState> {
    let replies = conn.pipeline_on_node(&shard.host, shard.port, &fence_reads(marker_key)).await?;
    fence_state_of(&replies)
}

fn fence_reads(marker_key: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("SCRIPT").arg("EXISTS").arg(PURCHASE.get_hash());
    pipe.cmd("INFO").arg("server").arg("replication");
    pipe.cmd("GET").arg(marker_key);
    pipe
}

fn fence_state_of(replies: &[redis::Value]) -> RedisResult<FenceState> {
    let [present, info, marker] = replies else {
        return Err(crate::reply::unexpected("three fence replies", &redis::Value::Array(replies.to_vec())));
    };
    let present = Vec::<i64>::from_redis_value(present.clone())?;
    let marker = Option::<String>::from_redis_value(marker.clone())?;
    let info = crate::connection::parse_info_reply(info)?;
    Ok(FenceState::of(present.first() == Some(&1), &info, marker.as_deref()))
}

/// Raises the fence on one node: `SCRIPT FLUSH` (every script: the others load themselves
/// again on their next call, see [`Invocation::invoke_async`]). Harmless when repeated, and
/// allowed on a replica.
pub async fn raise_fence(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    redis::cmd("SCRIPT").arg("FLUSH").exec_async(conn).await
}

/// Records that this node was reconciled with the ledger under `identity` (read before the
/// reconciliation began: if the node changed hands meanwhile, the marker names the old
/// identity and the next check reconciles again). A replica refuses it (READONLY).
pub async fn mark_reconciled(conn: &mut impl ConnectionLike, identity: &str) -> RedisResult<()> {
    redis::cmd("SET").arg(crate::keys::RECONCILED).arg(identity).exec_async(conn).await
}

/// [`raise_fence`] on one cluster node, by address.
pub async fn raise_fence_on(conn: &mut Conn, shard: &Shard) -> RedisResult<()> {
    conn.on_node(&shard.host, shard.port, redis::cmd("SCRIPT").arg("FLUSH")).await.map(drop)
}

/// [`mark_reconciled`] on one cluster primary, by address: `marker_key` is its
/// [`crate::keys::node_reconciled`], a key of a slot it serves (if it no longer does, the
/// write fails or lands elsewhere, and the next check reconciles it again).
pub async fn mark_reconciled_on(
    conn: &mut Conn,
    shard: &Shard,
    marker_key: &str,
    identity: &str,
) -> RedisResult<()> {
    conn.on_node(&shard.host, shard.port, redis::cmd("SET").arg(marker_key).arg(identity)).await.map(drop)
}

/// [`lift_fence`] on one cluster primary only, by address: the other shards are not touched,
/// whether or not they are reconciled (or reachable).
pub async fn lift_fence_on(conn: &mut Conn, shard: &Shard) -> RedisResult<()> {
    conn.on_node(&shard.host, shard.port, redis::cmd("SCRIPT").arg("LOAD").arg(PURCHASE.source()))
        .await
        .map(drop)
}

/// A cluster: flushes the script cache of every replica that holds the purchase script (the
/// [`FenceState::Replica`] rule of one node), so that a later promotion starts fenced: a
/// primary that failed over keeps its script cache as a replica, and would otherwise sell
/// from its first moment when it is promoted back. Each node on its own, best effort: an
/// unreachable replica is skipped (it sells nothing while unreachable) and fences no one.
/// Returns the replicas flushed. Per call: `CLUSTER NODES` on one node and `SCRIPT EXISTS`
/// on each replica; `ROLE` and `SCRIPT FLUSH` only on one found holding the script.
pub async fn flush_replicas(conn: &mut Conn) -> RedisResult<usize> {
    let mut flushed = 0;
    for (host, port) in conn.replicas().await? {
        let exists = redis::cmd("SCRIPT").arg("EXISTS").arg(PURCHASE.get_hash()).clone();
        let Ok(present) = conn.on_node(&host, port, &exists).await else { continue };
        if Vec::<i64>::from_redis_value(present).ok().and_then(|p| p.first().copied()) != Some(1) {
            continue;
        }
        // The node's own word (another node's view of roles may lag a failover); a primary
        // flushed by mistake would only be reconciled again, never sell stale data.
        let Ok(role) = conn.on_node(&host, port, &redis::cmd("ROLE")).await else { continue };
        let is_replica = matches!(&role, redis::Value::Array(items)
            if matches!(items.first(), Some(redis::Value::BulkString(b)) if b.as_slice() == b"slave"));
        if is_replica && conn.on_node(&host, port, &redis::cmd("SCRIPT").arg("FLUSH").clone()).await.is_ok() {
            flushed += 1;
        }
    }
    Ok(flushed)
}

/// Whether Redis has every script but the purchase one cached (what `/readyz` reports).
pub async fn all_loaded(conn: &mut impl ConnectionLike) -> RedisResult<bool> {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("EXISTS");
    for script in ALL {
        cmd.arg(script.get_hash());
    }
    let present: Vec<i64> = cmd.query_async(conn).await?;
    Ok(present.iter().all(|&p| p == 1))
}

/// Elements per call of every walk over an event's collections (`HSCAN`, `XRANGE`): the check
/// and the sold-out snapshot. Measured here on 300,000-element hashes, one `HSCAN ... COUNT
/// 1000` took 1.2 ms in the median but 10-15 ms at times on a busy 2-core machine; 200 keeps
/// each call a fraction of a millisecond, and a walk of 300,000 orders still takes about a
/// second.
pub const SCAN_CHUNK: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: &str = "0000000000000000000000000000000000000000";

    fn node(role: &str, replid: &str, run_id: &str) -> ServerInfo {
        with_history(role, replid, "r0", run_id)
    }

    fn with_history(role: &str, replid: &str, replid2: &str, run_id: &str) -> ServerInfo {
        ServerInfo::parse(&format!(
            "run_id:{run_id}\r\nrole:{role}\r\nmaster_replid:{replid}\r\nmaster_replid2:{replid2}\r\n"
        ))
    }

    #[test]
    fn a_primary_sells_only_under_the_identity_it_was_reconciled_under() {
        let primary = node("master", "r1", "p1");
        let marker = primary.fence_identity();
        assert_eq!(FenceState::of(true, &primary, Some(&marker)), FenceState::Open);
        // Promoted (a failover, or a failback after a resync from another node): new replid.
        let promoted = node("master", "r2", "p1");
        assert_eq!(
            FenceState::of(true, &promoted, Some(&marker)),
            FenceState::Stale { identity: promoted.fence_identity(), holds_purchase_script: true }
        );
        // Restarted: new run_id (and its script cache is empty anyway).
        let restarted = node("master", "r1", "p2");
        assert!(matches!(FenceState::of(true, &restarted, Some(&marker)), FenceState::Stale { .. }));
        // A first replica made it start a new history on its own data (no promotion).
        assert_eq!(
            FenceState::of(true, &with_history("master", "r5", NONE, "p1"), Some(&marker)),
            FenceState::Open
        );
        assert!(matches!(
            FenceState::of(true, &with_history("master", "r5", NONE, "p2"), Some(&marker)),
            FenceState::Stale { .. }
        ));
        assert!(matches!(FenceState::of(true, &primary, Some("garbage")), FenceState::Stale { .. }));
        // Never reconciled, or the script flushed.
        assert!(matches!(FenceState::of(true, &primary, None), FenceState::Stale { .. }));
        assert_eq!(
            FenceState::of(false, &primary, Some(&marker)),
            FenceState::Stale { identity: marker.clone(), holds_purchase_script: false }
        );
    }

    #[test]
    fn a_replica_never_sells_whatever_its_marker() {
        // A replica takes its primary's replid and data, marker included: it still must not
        // keep the script, since it would sell from the first moment of a promotion.
        let replica = node("slave", "r1", "p3");
        let marker = replica.fence_identity();
        assert_eq!(
            FenceState::of(true, &replica, Some(&marker)),
            FenceState::Replica { holds_purchase_script: true }
        );
        assert_eq!(
            FenceState::of(false, &replica, None),
            FenceState::Replica { holds_purchase_script: false }
        );
    }
}
