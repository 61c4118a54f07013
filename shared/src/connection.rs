//! The one Redis connection a process shares for its non-blocking commands, and what a failed
//! call means.
//!
//! One node (`REDIS_URL`): a `ConnectionManager` multiplexes every in-flight call over one
//! socket (measured ~210k EVALSHA/s here, against ~45k/s for a pool) and reconnects by itself
//! after the socket breaks. It does not reconnect when the socket stays up but the server
//! behind it became a replica after a failover (every write answers `READONLY`):
//! [`Redis::reconnect`] replaces it, resolving the host again, so a `REDIS_URL` that follows
//! the primary reaches the new one.
//!
//! A cluster (`REDIS_CLUSTER_URLS`): redis-rs's cluster connection, one multiplexed socket per
//! node, following `MOVED`/`ASK` and failovers itself. It is built with explicit deadlines
//! (redis-rs's cluster client has no response timeout by default, and its retries wait at
//! least 1.28 s): every attempt and the whole call, retries and redirections included, are
//! bounded by `REDIS_TIMEOUT_MS`. [`Conn`] is either, so every caller runs the same code on
//! both; nothing sends a command or pipeline that spans two events (two hash slots).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd, RedisError, RedisFuture, RedisResult, Value};

use crate::config::RedisArgs;

/// A connection to one Redis node or to a cluster: what every call is made on.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Conn::Single",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs a keyless administrative command on every primary (one node: on it) and returns
    /// each node's answer. redis-rs would send `SCRIPT LOAD` to replicas too; the fence (see
    /// `shared::scripts`) must not be lifted on a replica that was never reconciled.
    pub async fn on_primaries(&mut self, cmd: &Cmd) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(c) => Ok(vec![cmd.query_async(c).await?]),
            Self::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                match c.route_command(cmd.clone(), routing).await? {
                    Value::Map(pairs) => pairs
                        .into_iter()
                        .map(|(_, value)| match value {
                            Value::ServerError(e) => Err(RedisError::from(e)),
                            value => Ok(value),
                        })
                        .collect(),
                    other => Ok(vec![other]),
                }
            }
        }
    }

    /// The replicas of a cluster (`host`, `port`), as a random node's `CLUSTER NODES` sees them,
    /// failed ones left out. One node: none (it is what `REDIS_URL` names, whatever its role).
    pub async fn replicas(&mut self) -> RedisResult<Vec<(String, u16)>> {
        let Self::Cluster(c) = self else { return Ok(Vec::new()) };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let text = match c.route_command(redis::cmd("CLUSTER").arg("NODES").clone(), routing).await? {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Value::VerbatimString { text, .. } => text,
            other => return Err(crate::reply::unexpected("a CLUSTER NODES text", &other)),
        };
        Ok(parse_replicas(&text))
    }

    /// Runs a command on one node of a cluster, by address (each node on its own: one that
    /// cannot be reached fails only its own call). One node: on it.
    pub async fn on_node(&mut self, host: &str, port: u16, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => {
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port });
                c.route_command(cmd.clone(), routing).await
            }
        }
    }

    /// The primaries of a cluster and the slots each serves, as a random node's `CLUSTER SLOTS`
    /// says (its view may lag a failover: ask the node itself what it is). A node that does
    /// not answer (a dead primary is still in the client's list until the cluster replaced
    /// it) is one of several tries, so it does not stop the others' checks. One node: none.
    pub async fn shards(&mut self) -> RedisResult<Vec<Shard>> {
        const TRIES: usize = 4;
        let Self::Cluster(c) = self else { return Ok(Vec::new()) };
        let mut last = None;
        for _ in 0..TRIES {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            match c.route_command(redis::cmd("CLUSTER").arg("SLOTS").clone(), routing).await {
                Ok(reply) => return parse_shards(&reply),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("at least one try"))
    }

    /// Runs a pipeline on one node of a cluster, by address, in one round trip (a keyed
    /// command in it is sent there whatever its slot). One node: on it.
    pub async fn pipeline_on_node(
        &mut self,
        host: &str,
        port: u16,
        pipeline: &redis::Pipeline,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(c) => pipeline.query_async(c).await,
            Self::Cluster(c) => {
                let route = SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port };
                c.route_pipeline(pipeline.clone(), 0, pipeline.len(), route).await
            }
        }
    }

    /// Runs a command on every primary and requires each to succeed (`SCRIPT LOAD`).
    pub async fn on_every_primary(&mut self, cmd: &Cmd) -> RedisResult<()> {
        match self {
            Self::Single(c) => cmd.exec_async(c).await,
            Self::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                c.route_command(cmd.clone(), routing).await.map(drop)
            }
        }
    }
}

/// A cluster primary and the slot ranges (inclusive) it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub host: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

/// The primaries of a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replica...],
/// ...]`, ranges of one primary gathered.
fn parse_shards(reply: &Value) -> RedisResult<Vec<Shard>> {
    let unexpected = || crate::reply::unexpected("a CLUSTER SLOTS reply", reply);
    let Value::Array(ranges) = reply else { return Err(unexpected()) };
    let mut shards: Vec<Shard> = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else { return Err(unexpected()) };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(unexpected());
        };
        let host = match primary.first() {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => return Err(unexpected()),
        };
        let Some(Value::Int(port)) = primary.get(1) else { return Err(unexpected()) };
        let (Ok(port), Ok(start), Ok(end)) =
            (u16::try_from(*port), u16::try_from(*start), u16::try_from(*end))
        else {
            return Err(unexpected());
        };
        match shards.iter_mut().find(|s| s.host == host && s.port == port) {
            Some(shard) => shard.slots.push((start, end)),
            None => shards.push(Shard { host, port, slots: vec![(start, end)] }),
        }
    }
    Ok(shards)
}

/// The live replicas' addresses in a `CLUSTER NODES` text:
/// `<id> <ip:port@cport[,host]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_replicas(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags: Vec<&str> = fields.get(2)?.split(',').collect();
            if !flags.contains(&"slave") || flags.iter().any(|f| matches!(*f, "fail" | "fail?" | "noaddr")) {
                return None;
            }
            let (host, port) = fields.get(1)?.split(['@', ',']).next()?.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

enum Backend {
    Single {
        client: Client,
        config: ConnectionManagerConfig,
        current: ArcSwap<ConnectionManager>,
        /// When the connection was last replaced (ms since `epoch`), so that a burst of
        /// READONLY answers (every request in flight gets one) replaces it once, not once per
        /// request.
        replaced_ms: AtomicU64,
        epoch: Instant,
    },
    Cluster {
        args: RedisArgs,
        conn: ClusterConnection,
    },
}

struct Inner {
    backend: Backend,
    timeout: Duration,
}

/// At most one replacement of the connection per this interval.
const MIN_RECONNECT_INTERVAL: Duration = Duration::from_millis(500);

/// Retries of one cluster call (after a node's connection broke, `TRYAGAIN`, a failover under
/// way): the call as a whole still ends within `REDIS_TIMEOUT_MS`.
const CLUSTER_RETRIES: u32 = 3;

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("cluster", &self.is_cluster()).finish_non_exhaustive()
    }
}

/// A cluster client whose every attempt and whole call end within `response_timeout`, with
/// retry waits well under it (redis-rs waits at least 1.28 s by default).
fn cluster_client(args: &RedisArgs, response_timeout: Duration) -> RedisResult<ClusterClient> {
    let urls = args.redis_cluster_urls.as_ref().expect("cluster mode");
    let wait_ms = (args.timeout().as_millis() as u64 / 8).max(5);
    let mut builder = ClusterClient::builder(urls.urls().iter().map(|u| u.info().clone()))
        .connection_timeout(args.timeout())
        .response_timeout(response_timeout)
        .overall_response_timeout(Some(response_timeout))
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(wait_ms / 2)
        .max_retry_wait(wait_ms);
    if let Some(first) = urls.urls().first() {
        // The tcp settings (TCP_NODELAY) of the seed URLs apply to every node.
        builder = builder.tcp_settings(first.info().tcp_settings().clone());
    }
    builder.build()
}

fn cluster_connection(
    client: &ClusterClient,
    response_timeout: Duration,
    args: &RedisArgs,
) -> ClusterConnection {
    // `with_config` replaces the builder's response timeout: give it again here.
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(args.timeout())
        .set_response_timeout(response_timeout);
    client.get_pending_async_connection_with_config(config)
}

impl Redis {
    /// Connects lazily, so a process starts (and reports not-ready) while Redis is down.
    pub fn new(args: &RedisArgs) -> RedisResult<Self> {
        let backend = if args.redis_cluster_urls.is_some() {
            let client = cluster_client(args, args.timeout())?;
            Backend::Cluster { conn: cluster_connection(&client, args.timeout(), args), args: args.clone() }
        } else {
            let client = args.client()?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(args.timeout()))
                .set_connection_timeout(Some(args.timeout()))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
            Backend::Single {
                client,
                config,
                current: ArcSwap::from_pointee(manager),
                replaced_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }
        };
        Ok(Self { inner: Arc::new(Inner { backend, timeout: args.timeout() }) })
    }

    /// Whether this is a Redis Cluster (`REDIS_CLUSTER_URLS`).
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.backend, Backend::Cluster { .. })
    }

    /// The shared connection (a clone is a reference-count increment).
    pub fn get(&self) -> Conn {
        match &self.inner.backend {
            Backend::Single { current, .. } => Conn::Single(ConnectionManager::clone(&current.load())),
            Backend::Cluster { conn, .. } => Conn::Cluster(conn.clone()),
        }
    }

    /// A connection of its own, for blocking reads (`XREADGROUP ... BLOCK`, which would hold
    /// up every other call on a multiplexed socket), whose deadline is `response_timeout`.
    /// In a cluster it opens a socket per node it talks to: one such connection per event
    /// stream a worker reads.
    pub async fn dedicated(&self, response_timeout: Duration) -> RedisResult<Conn> {
        match &self.inner.backend {
            Backend::Single { client, .. } => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(self.inner.timeout))
                    .set_number_of_retries(1);
                Ok(Conn::Single(ConnectionManager::new_with_config(client.clone(), config).await?))
            }
            Backend::Cluster { args, .. } => {
                let client = cluster_client(args, response_timeout)?;
                Ok(Conn::Cluster(cluster_connection(&client, response_timeout, args)))
            }
        }
    }

    /// A pub/sub connection. One node: that node. A cluster: the seed node `attempt` names
    /// (modulo their number), so a subscriber whose node failed moves on to the next; a plain
    /// `PUBLISH` on any node reaches the subscribers of every node.
    pub async fn pubsub(&self, attempt: usize) -> RedisResult<redis::aio::PubSub> {
        match &self.inner.backend {
            Backend::Single { client, .. } => client.get_async_pubsub().await,
            Backend::Cluster { args, .. } => {
                let urls = args.redis_cluster_urls.as_ref().expect("cluster mode").urls();
                let url = &urls[attempt % urls.len()];
                Client::open(url.info().clone())?.get_async_pubsub().await
            }
        }
    }

    /// Replaces the shared connection with a new one (at most every 500 ms). Calls in flight on
    /// the old one finish there; every later call goes to the new one. A cluster connection
    /// follows failovers itself (it refreshes its slot map on `MOVED` and broken sockets).
    pub fn reconnect(&self) {
        let Backend::Single { client, config, current, replaced_ms, epoch } = &self.inner.backend else {
            return;
        };
        let now = epoch.elapsed().as_millis() as u64 + MIN_RECONNECT_INTERVAL.as_millis() as u64;
        let last = replaced_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < MIN_RECONNECT_INTERVAL.as_millis() as u64
            || replaced_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err()
        {
            return;
        }
        match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(manager) => {
                current.store(Arc::new(manager));
                tracing::info!("Redis connection replaced");
            }
            Err(error) => tracing::warn!(%error, "cannot replace the Redis connection"),
        }
    }

    /// What every caller does with a failed call: a server that refuses writes as a replica
    /// gets a new connection. Returns what the failure was.
    pub fn observe(&self, error: &RedisError) -> Fault {
        let fault = Fault::of(error);
        if fault == Fault::ReadOnly {
            self.reconnect();
        }
        fault
    }
}

/// Why a Redis call failed, as far as anyone outside Redis can fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No answer within the deadline: the command may have run.
    Timeout,
    /// `OOM`: Redis is full (maxmemory under noeviction) and refuses writes.
    OutOfMemory,
    /// `READONLY`: the server is a replica (a failover happened or is under way).
    ReadOnly,
    /// The connection was refused or could not be made: nothing was sent.
    Refused,
    /// The connection broke while the command was out: it may have run.
    ConnectionLost,
    /// `LOADING`, `BUSY`, `MISCONF`, `MASTERDOWN`, ... (the rest of
    /// [`crate::schema::INFRA_ERRORS`]): Redis refused to run the command now.
    Unavailable,
    /// `NOSCRIPT` for the purchase script: Redis (re)started and is not reconciled with the
    /// ledger yet (the fence, see `shared::scripts`); nothing ran.
    Fenced,
    /// Anything else: the reply was not what our code expects (a bug).
    Other,
}

impl Fault {
    pub fn of(error: &RedisError) -> Self {
        match error.code() {
            Some("OOM") => return Self::OutOfMemory,
            Some("NOSCRIPT") => return Self::Fenced,
            Some("READONLY") => return Self::ReadOnly,
            Some(code) if crate::schema::is_infra_error(code) => return Self::Unavailable,
            _ => {}
        }
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connection_refusal() {
            Self::Refused
        } else if error.is_io_error() || error.is_connection_dropped() {
            Self::ConnectionLost
        } else {
            Self::Other
        }
    }

    /// Whether a command that failed this way may still have taken effect.
    pub fn outcome_unknown(self) -> bool {
        matches!(self, Self::Timeout | Self::ConnectionLost)
    }

    /// Whether this is Redis being unavailable (as opposed to a bug of ours).
    pub fn is_infrastructure(self) -> bool {
        self != Self::Other
    }
}

/// What `INFO` says about the server that matters for selling safely. `INFO` works where
/// `CONFIG` is disabled (managed Redis).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// `master` or `slave`.
    pub role: String,
    pub maxmemory_policy: String,
    /// Changes at every restart of the server.
    pub run_id: String,
    /// The replication history this node's data belongs to (`INFO replication`): a new one at
    /// every promotion (`REPLICAOF NO ONE`, a failover), and a replica takes its primary's
    /// when it syncs. The sales fence compares it with what the node was reconciled under
    /// (see `shared::scripts::FenceState`).
    pub master_replid: String,
    /// The history this node's data continued from at its last promotion (`INFO
    /// replication`); all zeros while it has none (never promoted since it started or since
    /// it last synced as a replica).
    pub master_replid2: String,
}

impl ServerInfo {
    pub fn parse(info: &str) -> Self {
        let mut parsed = Self::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim_end().split_once(':') else { continue };
            match name {
                "role" => parsed.role = value.to_owned(),
                "maxmemory_policy" => parsed.maxmemory_policy = value.to_owned(),
                "run_id" => parsed.run_id = value.to_owned(),
                "master_replid" => parsed.master_replid = value.to_owned(),
                "master_replid2" => parsed.master_replid2 = value.to_owned(),
                _ => {}
            }
        }
        parsed
    }

    /// Several servers' infos as one (see [`server_info`]).
    pub fn combine(infos: Vec<Self>) -> Self {
        let mut infos = infos.into_iter();
        let Some(mut combined) = infos.next() else { return Self::default() };
        for info in infos {
            if !info.is_primary() {
                combined.role.clone_from(&info.role);
            }
            if info.may_evict_events() && !combined.may_evict_events() {
                combined.maxmemory_policy = info.maxmemory_policy;
            }
            combined.run_id.push(',');
            combined.run_id.push_str(&info.run_id);
            combined.master_replid.push(',');
            combined.master_replid.push_str(&info.master_replid);
        }
        combined
    }

    /// Whether the eviction policy could evict keys of a live event. None of them has a TTL
    /// (`shared::keys`), so `noeviction` and the `volatile-*` policies never touch them; the
    /// `allkeys-*` policies may evict anything, an idempotency entry included.
    pub fn may_evict_events(&self) -> bool {
        self.maxmemory_policy.starts_with("allkeys-")
    }

    /// The identity a reconciliation with the ledger is recorded under (the value of
    /// [`crate::keys::RECONCILED`]): the data's replication history and the process. Either
    /// changing means the data may have come from somewhere the ledger was not compared with:
    /// a promotion (new `master_replid`), a resync from another node followed by a promotion
    /// (ditto), a restart from a snapshot (new `run_id`, and a new `master_replid` too).
    pub fn fence_identity(&self) -> String {
        format!("{}/{}", self.master_replid, self.run_id)
    }

    /// Whether this node's data may have come from elsewhere since it was reconciled under
    /// `marker` (a [`Self::fence_identity`]): it restarted (another `run_id`), or it was
    /// promoted (another `master_replid`, the previous one kept in `master_replid2`).
    ///
    /// A primary also takes a new `master_replid` when it creates its replication backlog
    /// for a first replica (checked on 7.0.15), but then `master_replid2` is all zeros: no
    /// promotion happened, its data is its own. Accepting that case spares a whole
    /// reconciliation (503s meanwhile) each time a replica is added to a primary. It is safe:
    /// data arrives from elsewhere only by a restart or by a sync as a replica, and a replica
    /// becomes a primary only by a promotion, which keeps the replica-era id in
    /// `master_replid2` (zeros again only after the backlog was freed, `repl-backlog-ttl`, an
    /// hour by default, long after a worker saw the new id).
    pub fn moved_since(&self, marker: &str) -> bool {
        let Some((replid, run_id)) = marker.split_once('/') else { return true };
        let no_promotion = !self.master_replid2.is_empty() && self.master_replid2.bytes().all(|b| b == b'0');
        run_id != self.run_id || (replid != self.master_replid && !no_promotion)
    }

    /// Whether the server accepts writes as a primary (a replica answers READONLY, or worse,
    /// accepts writes it will lose).
    pub fn is_primary(&self) -> bool {
        self.role == "master"
    }
}

/// [`ServerInfo`] of the server (one node), or of the cluster's primaries taken together: a
/// primary only if every answer is one, the first policy that may evict an event (else the
/// first policy), and every run id (any restart changes it).
pub async fn server_info(conn: &mut Conn) -> RedisResult<ServerInfo> {
    Ok(ServerInfo::combine(server_infos(conn).await?))
}

/// Reads [`ServerInfo`] of every primary (one node: of it), with `INFO` and its default
/// sections: a few KB, well under a millisecond each.
pub async fn server_infos(conn: &mut Conn) -> RedisResult<Vec<ServerInfo>> {
    let replies = conn.on_primaries(&redis::cmd("INFO")).await?;
    replies.iter().map(parse_info_reply).collect()
}

/// [`ServerInfo`] of an `INFO` reply (a bulk string in RESP2, a verbatim string in RESP3).
pub fn parse_info_reply(reply: &Value) -> RedisResult<ServerInfo> {
    match reply {
        Value::BulkString(bytes) => Ok(ServerInfo::parse(&String::from_utf8_lossy(bytes))),
        Value::VerbatimString { text, .. } => Ok(ServerInfo::parse(text)),
        Value::SimpleString(text) => Ok(ServerInfo::parse(text)),
        other => Err(crate::reply::unexpected("an INFO text", other)),
    }
}

/// One small write, to learn whether Redis accepts writes now: a full Redis (`OOM`), a
/// replica (`READONLY`) or one that cannot persist (`MISCONF`) refuses it.
pub async fn probe_write(conn: &mut impl redis::aio::ConnectionLike) -> RedisResult<()> {
    redis::cmd("SET").arg(crate::keys::WRITE_PROBE).arg(1).arg("PX").arg(10_000).exec_async(conn).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_allkeys_policies_can_evict_an_event() {
        let info = |policy: &str| {
            ServerInfo::parse(&format!("# Memory\r\nmaxmemory_policy:{policy}\r\nrole:master\r\n"))
        };
        for safe in ["noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"] {
            assert!(!info(safe).may_evict_events(), "{safe}");
        }
        for unsafe_ in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert!(info(unsafe_).may_evict_events(), "{unsafe_}");
        }
        assert!(info("noeviction").is_primary());
        let cluster = ServerInfo::combine(vec![info("noeviction"), info("allkeys-lru"), info("noeviction")]);
        assert!(cluster.may_evict_events() && cluster.is_primary());
        assert!(
            !ServerInfo::combine(vec![info("noeviction"), ServerInfo::parse("role:slave\r\n")]).is_primary()
        );
        assert!(!ServerInfo::parse("role:slave\r\n").is_primary());
    }

    use super::*;

    #[test]
    fn only_live_replicas_are_listed() {
        let nodes = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30004@40004 slave a1 0 1 1 connected
c3 127.0.0.1:30005@40005,node-5 myself,slave d4 0 1 2 connected
e5 127.0.0.1:30006@40006 slave,fail d4 0 1 2 disconnected
";
        assert_eq!(
            parse_replicas(nodes),
            vec![("127.0.0.1".to_owned(), 30004), ("127.0.0.1".to_owned(), 30005)]
        );
    }

    #[test]
    fn shards_gather_each_primarys_ranges() {
        let node = |port: i64| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let range = |start, end, primary, replica| {
            Value::Array(vec![Value::Int(start), Value::Int(end), node(primary), node(replica)])
        };
        let reply = Value::Array(vec![
            range(0, 5460, 30001, 30004),
            range(5461, 10922, 30002, 30005),
            range(10923, 16383, 30001, 30004),
        ]);
        let shard = |port, slots| Shard { host: "127.0.0.1".into(), port, slots };
        assert_eq!(
            parse_shards(&reply).unwrap(),
            vec![shard(30001, vec![(0, 5460), (10923, 16383)]), shard(30002, vec![(5461, 10922)])]
        );
        assert!(parse_shards(&Value::Int(1)).is_err());
    }

    #[test]
    fn server_refusals_are_known_not_to_have_run() {
        assert!(!Fault::OutOfMemory.outcome_unknown());
        assert!(!Fault::ReadOnly.outcome_unknown());
        assert!(!Fault::Refused.outcome_unknown());
        assert!(Fault::Timeout.outcome_unknown());
        assert!(Fault::ConnectionLost.outcome_unknown());
        let timeout = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(Fault::of(&timeout), Fault::Timeout);
        let refused = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"));
        assert_eq!(Fault::of(&refused), Fault::Refused);
    }
}
