use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ADMIN_TOKEN;

/// A free loopback port (bound and released; the OS does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Path of a workspace binary (`flashsale-api`, `flashsale-worker`), building it if a lone
/// `cargo test -p ...` did not. `FLASHSALE_BIN_DIR` points the tests at other builds (to
/// show that a test fails on an older commit: build it, then run the new tests against it).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    if let Some(dir) = std::env::var_os("FLASHSALE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--bin", "flashsale-api", "--bin", "flashsale-worker"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the binaries failed");
        });
    }
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// Runs a binary to completion (an operator command, or a start-up that must fail) with
/// `env` and `args`, for at most `timeout`; returns its exit status and what it printed on
/// stdout and stderr together.
pub async fn run_to_exit(
    name: &str,
    env: &[(&str, &str)],
    args: &[&str],
    timeout: Duration,
) -> (ExitStatus, String) {
    let mut cmd = tokio::process::Command::new(binary(name));
    cmd.env_remove("ADMIN_TOKEN").env_remove("RUST_LOG").env("LOG_FORMAT", "text").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not exit within {timeout:?}"))
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

/// A child process that is SIGKILLed when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    name: String,
    /// Where its output goes when `TEST_LOG` is not set (shown when it dies at start-up).
    output: Option<tempfile::NamedTempFile>,
}

impl Proc {
    fn spawn(name: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(binary(name));
        cmd.env_remove("ADMIN_TOKEN").env("LOG_FORMAT", "text").stdin(Stdio::null());
        let mut output = None;
        if std::env::var_os("TEST_LOG").is_none() {
            let file = tempfile::NamedTempFile::new().expect("temp file");
            let out = file.reopen().expect("reopen");
            let err = file.reopen().expect("reopen");
            cmd.env("RUST_LOG", "warn").stdout(Stdio::from(out)).stderr(Stdio::from(err));
            output = Some(file);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { child: Some(child), name: name.to_owned(), output }
    }

    /// The last lines the process printed (when its output was captured).
    fn last_output(&self) -> String {
        let Some(file) = &self.output else { return "(see its output above: TEST_LOG is set)".into() };
        let text = std::fs::read_to_string(file.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("{signal} to {}: {e}", self.name));
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits (polling) for the process to exit; panics after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_http_ok(url: &str, timeout: Duration, proc: &mut Proc) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        assert!(proc.is_running(), "{} exited during start-up:\n{}", proc.name, proc.last_output());
        if let Ok(r) = client.get(url).timeout(Duration::from_millis(500)).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} not healthy within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `flashsale-api` as a child process.
#[derive(Debug)]
pub struct Gateway {
    proc: Proc,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts a gateway on a free port with the test admin token; `env` adds or overrides
    /// settings. Returns once `/healthz` answers.
    pub async fn start(redis_url: &str, env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut vars = vec![
            ("REDIS_URL", redis_url.to_owned()),
            ("LISTEN_ADDR", addr.to_string()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ];
        vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut proc = Proc::spawn("flashsale-api", &vars);
        wait_http_ok(&format!("http://{addr}/healthz"), Duration::from_secs(20), &mut proc).await;
        Self { proc, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn api(&self) -> crate::Api {
        crate::Api::new(&self.base_url())
    }

    pub fn signal(&self, signal: Signal) {
        self.proc.signal(signal);
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.proc.wait_exit(timeout).await
    }

    /// Everything it printed so far (empty when `TEST_LOG` sends it to the terminal).
    pub fn output(&self) -> String {
        self.proc
            .output
            .as_ref()
            .map(|file| std::fs::read_to_string(file.path()).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// `flashsale-worker` as a child process.
#[derive(Debug)]
pub struct Worker {
    proc: Proc,
    pub metrics_addr: SocketAddr,
    env: Vec<(String, String)>,
}

impl Worker {
    /// Starts a worker named `consumer` on Redis and the ledger at `database_url`; `env` adds
    /// or overrides settings. Returns once its `/healthz` answers.
    pub async fn start(redis_url: &str, database_url: &str, consumer: &str, env: &[(&str, &str)]) -> Self {
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut vars = vec![
            ("REDIS_URL".to_owned(), redis_url.to_owned()),
            ("DATABASE_URL".to_owned(), database_url.to_owned()),
            ("METRICS_ADDR".to_owned(), metrics_addr.to_string()),
            ("CONSUMER_NAME".to_owned(), consumer.to_owned()),
        ];
        vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut worker = Self { proc: Self::spawn(&vars), metrics_addr, env: vars };
        worker.wait_healthy().await;
        worker
    }

    fn spawn(vars: &[(String, String)]) -> Proc {
        let borrowed: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Proc::spawn("flashsale-worker", &borrowed)
    }

    async fn wait_healthy(&mut self) {
        let url = format!("http://{}/healthz", self.metrics_addr);
        wait_http_ok(&url, Duration::from_secs(20), &mut self.proc).await;
    }

    /// Starts the same worker again (same name, same settings) after it exited or was killed,
    /// on a fresh metrics port: while it was down, another test may have been handed the old
    /// one.
    pub async fn restart(&mut self) {
        self.metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        for (k, v) in self.env.iter_mut() {
            if k == "METRICS_ADDR" {
                *v = self.metrics_addr.to_string();
            }
        }
        self.proc = Self::spawn(&self.env);
        self.wait_healthy().await;
    }

    pub fn signal(&self, signal: Signal) {
        self.proc.signal(signal);
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.proc.wait_exit(timeout).await
    }

    /// The process id (to read its CPU time in /proc, say).
    pub fn pid(&self) -> u32 {
        self.proc.pid().as_raw() as u32
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .expect("worker metrics reachable")
            .text()
            .await
            .expect("metrics text")
    }
}
