use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// How the private Redis persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Nothing on disk (most tests).
    None,
    /// AOF with `appendfsync always`: every acknowledged write survives a SIGKILL.
    AofAlways,
}

/// A private `redis-server` on a free loopback port, in its own temporary directory.
/// Dropping it kills the server and removes the directory.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    durability: Durability,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(Durability::None)
    }

    /// A new, empty server with its sales fence lifted (an empty Redis has nothing to
    /// reconcile with any ledger: what a worker would do at once). A [`RedisServer::restart`]
    /// brings the fence back, as a real restart does: then a worker must reconcile.
    pub fn start_with(durability: Durability) -> Self {
        let mut dir = tempfile::Builder::new().prefix("flashsale-redis-").tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self { port, dir, durability, child: None };
            if server.spawn() {
                let client = server.client();
                let mut conn = client.get_connection_with_timeout(Duration::from_secs(2)).expect("connect");
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(flashsale_shared::scripts::PURCHASE.source())
                    .query(&mut conn)
                    .expect("lift the fence");
                // What a worker records after a reconciliation: this node's identity, so that
                // a worker started on it finds it reconciled (see `FenceState`).
                let info: String =
                    redis::cmd("INFO").arg("server").arg("replication").query(&mut conn).expect("INFO");
                let identity = flashsale_shared::connection::ServerInfo::parse(&info).fence_identity();
                redis::cmd("SET")
                    .arg(flashsale_shared::keys::RECONCILED)
                    .arg(identity)
                    .exec(&mut conn)
                    .expect("mark reconciled");
                return server;
            }
            dir = server.take_dir();
        }
        panic!("could not start redis-server (is it installed? `apt-get install redis-server`)");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--protected-mode", "yes", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        match self.durability {
            Durability::None => cmd.args(["--appendonly", "no"]),
            Durability::AofAlways => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn redis-server");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10))
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid URL")
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client().get_multiplexed_async_connection().await.expect("connect to test Redis")
    }

    /// `CONFIG SET name value` (maxmemory, maxmemory-policy, replicaof, ...).
    pub async fn config_set(&self, name: &str, value: &str) {
        let mut conn = self.conn().await;
        redis::cmd("CONFIG").arg("SET").arg(name).arg(value).exec_async(&mut conn).await.unwrap_or_else(
            |e| {
                panic!("CONFIG SET {name} {value}: {e}");
            },
        );
    }

    /// `REPLICAOF` this server to `primary` (`None`: `REPLICAOF NO ONE`, a promotion). The
    /// full sync starts at once (no diskless-sync delay on the primary).
    pub async fn replicaof(&self, primary: Option<&RedisServer>) {
        let mut conn = self.conn().await;
        let mut cmd = redis::cmd("REPLICAOF");
        match primary {
            Some(primary) => {
                primary.config_set("repl-diskless-sync-delay", "0").await;
                cmd.arg("127.0.0.1").arg(primary.port())
            }
            None => cmd.arg("NO").arg("ONE"),
        };
        cmd.exec_async(&mut conn).await.expect("REPLICAOF");
    }

    /// `INFO replication` as name -> value.
    pub async fn replication(&self) -> std::collections::HashMap<String, String> {
        let mut conn = self.conn().await;
        let info: String =
            redis::cmd("INFO").arg("replication").query_async(&mut conn).await.expect("INFO replication");
        info.lines()
            .filter_map(|line| line.trim_end().split_once(':'))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// Waits until this replica has synced with its primary and holds all it was sent.
    pub async fn wait_synced(&self, primary: &RedisServer, timeout: Duration) {
        crate::wait_until(timeout, "the replica to sync with its primary", || async {
            let mine = self.replication().await;
            let theirs = primary.replication().await;
            (mine.get("master_link_status").map(String::as_str) == Some("up")
                && mine.get("master_sync_in_progress").map(String::as_str) == Some("0")
                && mine.get("master_repl_offset") == theirs.get("master_repl_offset"))
            .then_some(())
        })
        .await;
    }

    /// Whether the purchase script (the sales fence) is loaded on this server.
    pub async fn holds_purchase_script(&self) -> bool {
        purchase_script_loaded(&mut self.conn().await).await.expect("SCRIPT EXISTS")
    }

    /// The server's process id (to SIGSTOP/SIGCONT it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown save, no goodbye; what survives is what the AOF had.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not come back on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the purchase script (the sales fence) is loaded on the server behind `conn`.
pub(crate) async fn purchase_script_loaded(
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<bool> {
    let present: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(flashsale_shared::scripts::PURCHASE.get_hash())
        .query_async(conn)
        .await?;
    Ok(present.first() == Some(&1))
}
