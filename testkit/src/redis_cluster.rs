//! A private six-node Redis Cluster (three primaries, each with one replica) on loopback, for
//! tests of the cluster mode: failover, a killed primary, slot migration while buyers buy.
//!
//! Quick reads of the cluster's state (`primaries`, `slot_of`, ...) are blocking: one round
//! trip on a fresh connection, harmless inside an async test. Everything that waits for the
//! cluster to change (`failover`, `wait_promoted`, `migrate_slot`, ...) is async and polls
//! with a deadline, so a test can run it concurrently with its buyers.
//!
//! Facts these helpers rely on (checked on Redis 7.0.15):
//! - `SCRIPT LOAD` is not replicated: a promoted replica has an empty script cache, so it is
//!   *fenced* (see `flashsale_shared::scripts`) until someone lifts the fence on it, as in
//!   production. [`RedisCluster::lift_fence_everywhere`] does what a worker would.
//! - With `cluster-require-full-coverage no` a node says `cluster_state:ok` even while the
//!   slots of a failed primary have no live owner; "settled" therefore also requires
//!   `cluster_slots_ok:16384` on every node.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale_shared::{EventId, EventKeys};

/// How long start-up and the fault helpers wait for the cluster to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `cluster-node-timeout`: a killed primary is marked failed after this and its replica
/// promoted about a second later. Short, so a failover test takes seconds; not so short
/// that two busy shared cores make a live node look dead.
const NODE_TIMEOUT_MS: u64 = 2000;

/// Redis Cluster has this many hash slots.
pub const SLOTS: u16 = 16384;

/// One node of a [`RedisCluster`], named by its port. Its role changes (a failover swaps a
/// primary and its replica); ask the cluster ([`RedisCluster::primaries`]) for the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterNode(u16);

impl ClusterNode {
    pub fn port(self) -> u16 {
        self.0
    }

    pub fn url(self) -> String {
        format!("redis://127.0.0.1:{}", self.0)
    }

    /// A plain (non-cluster) client of this one node: it sees MOVED/ASK replies as errors.
    pub fn client(self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid URL")
    }

    /// Whether the purchase script (the sales fence) is loaded on this node (`false` when the
    /// node cannot answer the question, e.g. while it is loading).
    pub async fn holds_purchase_script(self) -> bool {
        crate::redis_server::purchase_script_loaded(&mut self.conn().await).await.unwrap_or(false)
    }

    pub async fn conn(self) -> redis::aio::MultiplexedConnection {
        self.client().get_multiplexed_async_connection().await.expect("connect to cluster node")
    }

    /// A blocking connection that gives up after a second (a killed or stopped node).
    fn blocking(self) -> redis::RedisResult<redis::Connection> {
        let conn = self.client().get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(conn)
    }

    fn query<T: redis::FromRedisValue>(self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        cmd.query(&mut self.blocking()?)
    }
}

/// One line of `CLUSTER NODES`, as seen by some node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeLine {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    /// The primary's id, for a replica.
    replica_of: Option<String>,
    /// Owned slot ranges, inclusive (migration markers `[s->-id]` left out).
    slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES`:
/// `<id> <ip:port@cport[,host]> <flags> <primary|-> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let port = fields[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|one| (one, one)),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_owned(),
                port,
                primary: flags.contains(&"master"),
                failed: flags.iter().any(|f| *f == "fail" || *f == "fail?"),
                replica_of: (fields[3] != "-").then(|| fields[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// A field of `CLUSTER INFO` or `INFO` (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
}

/// One `redis-server` process of the cluster.
#[derive(Debug)]
struct Process {
    node: ClusterNode,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Process {
    /// Starts a node on `port` (in `dir`, keeping its config file across restarts) and waits
    /// for PING; `false` when it exited (port taken) or did not answer.
    fn spawn(&mut self) -> bool {
        let port = self.node.port();
        let dir = self.dir.path();
        // appendfsync always, as the single-node harness's `Durability::AofAlways`: a node
        // killed and restarted before its replica took over comes back with every write it
        // acknowledged. Redis fsyncs once per event-loop turn, not once per write, so a
        // concurrent sale pays little; everysec could silently drop the last second.
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--cluster-enabled", "yes", "--cluster-require-full-coverage", "no"])
            .arg("--cluster-node-timeout")
            .arg(NODE_TIMEOUT_MS.to_string())
            .arg("--cluster-config-file")
            .arg(dir.join(format!("nodes-{port}.conf")))
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--loglevel", "notice"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? `apt-get install redis-server`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.node.query::<String>(&redis::cmd("PING")).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// A loopback port below 55536 whose cluster bus port (port + 10000) is free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    loop {
        let port = crate::free_port();
        let clashes = taken.iter().any(|t| [*t, t + 10000].contains(&port) || *t == port + 10000);
        if port < 55536 && !clashes && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Six `redis-server --cluster-enabled yes` on free loopback ports, joined by
/// `redis-cli --cluster create --cluster-replicas 1`. Dropping it kills every node and
/// removes their directories.
#[derive(Debug)]
pub struct RedisCluster {
    processes: Vec<Process>,
}

impl RedisCluster {
    /// Starts the six nodes, creates the cluster, waits until it has settled (every node ok,
    /// all slots served, one slot map, every replica linked) and lifts the sales fence on
    /// every primary (an empty cluster has nothing to reconcile).
    pub fn start() -> Self {
        let mut processes: Vec<Process> = Vec::with_capacity(6);
        while processes.len() < 6 {
            let taken: Vec<u16> = processes.iter().map(|p| p.node.port()).collect();
            let mut started = false;
            for _ in 0..5 {
                let dir = tempfile::Builder::new().prefix("flashsale-cluster-").tempdir().expect("temp dir");
                let mut process = Process { node: ClusterNode(free_cluster_port(&taken)), dir, child: None };
                if process.spawn() {
                    processes.push(process);
                    started = true;
                    break;
                }
            }
            assert!(started, "could not start a cluster node (is redis-server installed?)");
        }
        let cluster = Self { processes };

        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in cluster.nodes() {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.block_until(SETTLE_TIMEOUT, "the new cluster to settle with every replica linked", || {
            cluster.settled() && cluster.replicas_linked()
        });
        cluster.lift_fence_blocking();
        cluster
    }

    /// Every node, killed ones included, in start order.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        self.processes.iter().map(|p| p.node).collect()
    }

    /// The seed list a `REDIS_CLUSTER_URLS` setting takes: every node, comma-separated.
    pub fn seed_urls(&self) -> String {
        self.nodes().iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// The nodes that are running (not killed).
    fn live(&self) -> impl Iterator<Item = ClusterNode> + '_ {
        self.processes.iter().filter(|p| p.child.is_some()).map(|p| p.node)
    }

    /// `CLUSTER NODES` as the first live node that answers sees it.
    fn view(&self) -> Vec<NodeLine> {
        self.live()
            .find_map(|node| node.query::<String>(redis::cmd("CLUSTER").arg("NODES")).ok())
            .map(|text| parse_nodes(&text))
            .expect("no cluster node answers")
    }

    /// The current primaries serving slots (sorted by port), as a live node sees them.
    pub fn primaries(&self) -> Vec<ClusterNode> {
        let mut primaries: Vec<ClusterNode> = self
            .view()
            .into_iter()
            .filter(|n| n.primary && !n.failed && !n.slots.is_empty())
            .map(|n| ClusterNode(n.port))
            .collect();
        primaries.sort();
        primaries
    }

    /// The current replicas (sorted by port), failed ones left out.
    pub fn replicas(&self) -> Vec<ClusterNode> {
        let mut replicas: Vec<ClusterNode> = self
            .view()
            .into_iter()
            .filter(|n| !n.primary && !n.failed)
            .map(|n| ClusterNode(n.port))
            .collect();
        replicas.sort();
        replicas
    }

    /// The live replica of `primary`. Panics when it has none (its replica was promoted away,
    /// or was killed).
    pub fn replica_of(&self, primary: ClusterNode) -> ClusterNode {
        let view = self.view();
        let id = &view.iter().find(|n| n.port == primary.port()).expect("node in the cluster").id;
        view.iter()
            .find(|n| !n.primary && !n.failed && n.replica_of.as_ref() == Some(id))
            .map(|n| ClusterNode(n.port))
            .unwrap_or_else(|| panic!("{primary:?} has no live replica"))
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        self.live()
            .find_map(|node| node.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).ok())
            .expect("no cluster node answers")
    }

    /// The primary that owns `slot` now.
    pub fn primary_for_slot(&self, slot: u16) -> ClusterNode {
        self.view()
            .into_iter()
            .find(|n| n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .map(|n| ClusterNode(n.port))
            .unwrap_or_else(|| panic!("no live primary owns slot {slot}"))
    }

    /// The primary that owns `key`'s slot now.
    pub fn primary_for_key(&self, key: &str) -> ClusterNode {
        self.primary_for_slot(self.slot_of(key))
    }

    /// The event-hash key of event `id` (`fs:{ev:<id>}:event`), built where every key is.
    pub fn event_key(id: &str) -> String {
        EventKeys::new(&EventId::parse(id).expect("valid event id")).event
    }

    /// `n` event ids `<prefix><i>` whose keys land on `n` different primaries (all keys of an
    /// event share its hash tag, so `fs:{ev:<id>}:event` decides). `prefix` must be a valid
    /// start of an event id (`[A-Za-z0-9._:-]`).
    pub fn event_ids_on_distinct_primaries(&self, n: usize, prefix: &str) -> Vec<String> {
        let primaries = self.primaries().len();
        assert!(n <= primaries, "asked for {n} distinct primaries, the cluster has {primaries}");
        let mut found: Vec<(ClusterNode, String)> = Vec::with_capacity(n);
        for i in 0.. {
            if found.len() == n {
                break;
            }
            assert!(i < 10_000, "no {n} event ids with prefix {prefix:?} on distinct primaries");
            let id = format!("{prefix}{i}");
            let owner = self.primary_for_key(&Self::event_key(&id));
            if found.iter().all(|(node, _)| *node != owner) {
                found.push((owner, id));
            }
        }
        found.into_iter().map(|(_, id)| id).collect()
    }

    /// Whether every live node agrees: `cluster_state:ok`, every slot served by a live
    /// primary, and one slot map (slot ranges -> owner port).
    fn settled(&self) -> bool {
        let mut maps = Vec::new();
        for node in self.live() {
            let Ok(info) = node.query::<String>(redis::cmd("CLUSTER").arg("INFO")) else { return false };
            if info_field(&info, "cluster_state") != Some("ok")
                || info_field(&info, "cluster_slots_ok") != Some("16384")
            {
                return false;
            }
            let Ok(text) = node.query::<String>(redis::cmd("CLUSTER").arg("NODES")) else { return false };
            let map: BTreeMap<(u16, u16), u16> = parse_nodes(&text)
                .into_iter()
                .filter(|n| n.primary && !n.failed)
                .flat_map(|n| n.slots.into_iter().map(move |range| (range, n.port)))
                .collect();
            maps.push(map);
        }
        maps.windows(2).all(|pair| pair[0] == pair[1])
    }

    /// Whether every live replica has its replication link up (a replica that is still
    /// syncing refuses a `CLUSTER FAILOVER`).
    fn replicas_linked(&self) -> bool {
        self.live().all(|node| {
            let Ok(info) = node.query::<String>(redis::cmd("INFO").arg("replication")) else { return false };
            info_field(&info, "role") == Some("master")
                || info_field(&info, "master_link_status") == Some("up")
        })
    }

    fn role(node: ClusterNode) -> Option<String> {
        let info = node.query::<String>(redis::cmd("INFO").arg("replication")).ok()?;
        info_field(&info, "role").map(str::to_owned)
    }

    /// The cluster as the first live node sees it, for failure messages.
    fn describe(&self) -> String {
        self.live()
            .find_map(|node| node.query::<String>(redis::cmd("CLUSTER").arg("NODES")).ok())
            .unwrap_or_else(|| "(no node answers)".into())
    }

    fn block_until(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn wait_for(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.describe()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every live node agrees on one slot map with every slot served and says
    /// `cluster_state:ok`.
    pub async fn wait_settled(&self, timeout: Duration) {
        self.wait_for(timeout, "the cluster to settle", || self.settled()).await;
    }

    /// A manual failover of `primary`: `CLUSTER FAILOVER` on its replica, then waits until
    /// the replica is a primary, the cluster has settled, and the old primary is linked as
    /// its replica. Returns the new primary. Nothing is lost (the replica catches up before
    /// it takes over) but the new primary is fenced: `SCRIPT LOAD` is not replicated.
    pub async fn failover(&self, primary: ClusterNode) -> ClusterNode {
        let replica = self.replica_of(primary);
        let mut conn = replica.conn().await;
        // A primary ignores the replica's request while its own view does not list that node
        // as its replica yet (right after an earlier failover); the replica then logs "Manual
        // failover timed out" after 5 s and nothing changed: ask again.
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            redis::cmd("CLUSTER").arg("FAILOVER").exec_async(&mut conn).await.expect("CLUSTER FAILOVER");
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(6)
                && !(Self::role(replica).as_deref() == Some("master") && self.settled())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if Self::role(replica).as_deref() == Some("master") || Instant::now() > deadline {
                break;
            }
        }
        self.wait_promoted(replica, SETTLE_TIMEOUT).await;
        // Also in the cluster's view (what `replica_of` reads), which can lag the node's own
        // word: a failback right after a failover asks it for the new primary's replica.
        self.wait_for(SETTLE_TIMEOUT, "the old primary to replicate from the new one", || {
            Self::role(primary).as_deref() == Some("slave")
                && self.replicas_linked()
                && self.view().iter().any(|n| {
                    n.port == primary.port()
                        && !n.failed
                        && n.replica_of.is_some()
                        && self
                            .view()
                            .iter()
                            .any(|m| Some(&m.id) == n.replica_of.as_ref() && m.port == replica.port())
                })
        })
        .await;
        replica
    }

    /// SIGKILLs `primary` and returns its replica, which the cluster promotes by itself after
    /// `cluster-node-timeout` (about 3 s here): await [`RedisCluster::wait_promoted`].
    pub fn kill_primary(&mut self, primary: ClusterNode) -> ClusterNode {
        let replica = self.replica_of(primary);
        self.kill(primary);
        replica
    }

    /// SIGKILLs `node` (primary or replica).
    pub fn kill(&mut self, node: ClusterNode) {
        self.process_mut(node).kill();
    }

    /// Waits until `replica` reports role master and the cluster has settled around it.
    pub async fn wait_promoted(&self, replica: ClusterNode, timeout: Duration) {
        self.wait_for(timeout, &format!("{replica:?} to be promoted"), || {
            Self::role(replica).as_deref() == Some("master") && self.settled()
        })
        .await;
    }

    /// SIGSTOPs `node`: it keeps its sockets but answers nothing (its peers mark it failed
    /// after `cluster-node-timeout`) until [`RedisCluster::resume`]. Unlike a kill, it comes
    /// back with its memory, script cache included: a primary paused while its replica took
    /// over wakes up holding older data and the purchase script.
    pub fn pause(&self, node: ClusterNode) {
        self.signal(node, "-STOP");
    }

    /// SIGCONTs a node [`RedisCluster::pause`] stopped.
    pub fn resume(&self, node: ClusterNode) {
        self.signal(node, "-CONT");
    }

    fn signal(&self, node: ClusterNode, signal: &str) {
        let process = self.processes.iter().find(|p| p.node == node).expect("node of this cluster");
        let pid = process.child.as_ref().expect("a running node").id();
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// `CLUSTER FAILOVER TAKEOVER` on `replica`: it makes itself the primary of its shard
    /// without asking its primary or the other primaries (which may be paused or dead), and
    /// whatever data it has. Waits until it says it is a primary (not for the cluster to
    /// settle: a paused node never would).
    pub async fn takeover(&self, replica: ClusterNode) {
        let mut conn = replica.conn().await;
        redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .arg("TAKEOVER")
            .exec_async(&mut conn)
            .await
            .expect("CLUSTER FAILOVER TAKEOVER");
        self.wait_for(SETTLE_TIMEOUT, &format!("{replica:?} to take over"), || {
            Self::role(replica).as_deref() == Some("master")
        })
        .await;
    }

    /// `role` of `node`'s own `INFO replication` (`master` or `slave`); `None` when it does
    /// not answer within a couple of seconds (killed, paused).
    pub fn role_of(&self, node: ClusterNode) -> Option<String> {
        Self::role(node)
    }

    /// Starts a killed node again on its port, directory and config file. A node whose
    /// replica took over meanwhile rejoins as that replica's replica; waits until it is
    /// linked and the cluster has settled.
    pub async fn restart(&mut self, node: ClusterNode) {
        let process = self.process_mut(node);
        process.kill();
        if !process.spawn() {
            panic!("{node:?} did not come back on its port:\n{}", process.log_tail());
        }
        self.wait_for(SETTLE_TIMEOUT, &format!("{node:?} to rejoin"), || {
            self.settled() && self.replicas_linked()
        })
        .await;
    }

    fn process_mut(&mut self, node: ClusterNode) -> &mut Process {
        self.processes.iter_mut().find(|p| p.node == node).expect("node of this cluster")
    }

    /// The directory of `node` (AOF, `nodes-<port>.conf`, `redis.log`).
    pub fn dir(&self, node: ClusterNode) -> &Path {
        self.processes.iter().find(|p| p.node == node).expect("node of this cluster").dir.path()
    }

    /// `SCRIPT FLUSH` on every live node: the fence comes back everywhere.
    pub async fn script_flush_all(&self) {
        for node in self.live() {
            let mut conn = node.conn().await;
            redis::cmd("SCRIPT").arg("FLUSH").exec_async(&mut conn).await.expect("SCRIPT FLUSH");
        }
    }

    /// Lifts the sales fence (`SCRIPT LOAD` of the purchase script) on every current primary,
    /// where a worker's lift lands; replicas stay fenced, so a later promotion brings the fence
    /// back as it does in production.
    pub async fn lift_fence_everywhere(&self) {
        for node in self.primaries() {
            let mut conn = node.conn().await;
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(flashsale_shared::scripts::PURCHASE.source())
                .query_async(&mut conn)
                .await
                .expect("lift the fence");
        }
    }

    fn lift_fence_blocking(&self) {
        for node in self.primaries() {
            let _: String = node
                .query(redis::cmd("SCRIPT").arg("LOAD").arg(flashsale_shared::scripts::PURCHASE.source()))
                .expect("lift the fence");
        }
    }

    /// Moves `slot` from primary `from` to primary `to` the way `redis-cli --cluster reshard`
    /// does, in batches of 100 keys.
    pub async fn migrate_slot(&self, slot: u16, from: ClusterNode, to: ClusterNode) {
        self.migrate(slot, from, to, 100, Duration::ZERO).await;
    }

    /// As [`RedisCluster::migrate_slot`], one key at a time with `pause` after each, so a test
    /// sees every window: MOVED (not yet importing), ASK (a key already moved), TRYAGAIN (a
    /// multi-key command whose keys are split between the two nodes).
    pub async fn migrate_slot_slowly(&self, slot: u16, from: ClusterNode, to: ClusterNode, pause: Duration) {
        self.migrate(slot, from, to, 1, pause).await;
    }

    async fn migrate(&self, slot: u16, from: ClusterNode, to: ClusterNode, batch: usize, pause: Duration) {
        let view = self.view();
        let id_of = |node: ClusterNode| {
            view.iter().find(|n| n.port == node.port()).map(|n| n.id.clone()).expect("node in the cluster")
        };
        let (from_id, to_id) = (id_of(from), id_of(to));
        let mut source = from.conn().await;
        let mut target = to.conn().await;
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        // Importing first: once the source says MIGRATING it sends ASK to the target, which
        // must then accept ASKING.
        setslot("IMPORTING", &from_id).exec_async(&mut target).await.expect("SETSLOT IMPORTING");
        setslot("MIGRATING", &to_id).exec_async(&mut source).await.expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(batch)
                .query_async(&mut source)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            // REPLACE: while a key exists on the source only the source serves it (the target
            // gets ASK only for keys the source lacks), so the source's copy is the newest. A
            // copy on the target can only come from an earlier MIGRATE whose reply was lost
            // (a timeout after the target stored it): replacing it makes the retry idempotent
            // where plain MIGRATE would stop on BUSYKEY.
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to.port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE")
                .arg("KEYS")
                .arg(&keys)
                .exec_async(&mut source)
                .await
                .expect("MIGRATE");
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        // The owner on the target first (it stops answering ASK-only), then the source (it
        // starts answering MOVED), then every other primary so no one sends a stale MOVED.
        setslot("NODE", &to_id).exec_async(&mut target).await.expect("SETSLOT NODE on the target");
        setslot("NODE", &to_id).exec_async(&mut source).await.expect("SETSLOT NODE on the source");
        for other in self.primaries().into_iter().filter(|n| *n != from && *n != to) {
            let mut conn = other.conn().await;
            setslot("NODE", &to_id).exec_async(&mut conn).await.expect("SETSLOT NODE");
        }
        self.wait_for(SETTLE_TIMEOUT, &format!("every node to see slot {slot} on {to:?}"), || {
            self.settled() && self.primary_for_slot(slot) == to
        })
        .await;
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            process.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
e7d1 127.0.0.1:30001@40001,host myself,master - 0 0 1 connected 0-5460 7000 [5461->-67ed]
67ed 127.0.0.1:30002@40002 master,fail - 1426238316232 1426238315000 2 disconnected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 30004);
        assert!(!nodes[0].primary);
        assert_eq!(nodes[0].replica_of.as_deref(), Some("e7d1"));
        assert_eq!(nodes[1].slots, vec![(0, 5460), (7000, 7000)]);
        assert!(nodes[1].primary && !nodes[1].failed);
        assert!(nodes[2].failed && nodes[2].slots.is_empty());
    }

    #[test]
    fn reads_info_fields() {
        let info = "cluster_state:ok\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "cluster_slots_ok"), Some("16384"));
        assert_eq!(info_field(info, "cluster_slots"), None);
    }
}
