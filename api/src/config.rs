//! Gateway configuration: CLI flags with environment fallbacks, validated at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use flashsale_shared::config::{LogArgs, RedisArgs};

/// Default of `HEADER_READ_TIMEOUT_MS`: ten seconds for a request head (a few hundred bytes)
/// is generous for any real client and bounds a slow-header attack.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default of `IDLE_TIMEOUT_MS`: one minute. Behind a proxy, keep it above the proxy's own
/// keep-alive timeout (nginx's upstream `keepalive_timeout` and an AWS ALB's idle timeout are
/// both 60 s by default) so that the proxy closes first: a connection the gateway closes just
/// as the proxy reuses it fails that request, and a proxy does not retry a POST.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default of `MAX_CONNECTIONS`: far above what a sale needs behind a load balancer, low enough
/// that the process never runs out of file descriptors (raise `ulimit -n` above it).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Default of `SOLD_OUT_MAX_SCOPES`: a local copy of 200,000 idempotency scopes takes ~15 MB
/// and ~200 `HSCAN` calls of ~1.4 ms of Redis time each (0.3-0.8 s in all, measured on a
/// loaded 2-core machine); for larger events the round trips saved are not worth it.
pub const DEFAULT_SOLD_OUT_MAX_SCOPES: u64 = 200_000;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "flashsale-api", version, about = "flashsale HTTP gateway")]
pub struct Config {
    /// Address the HTTP server binds.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Bearer token for admin routes. Unset: admin routes answer 401 to everyone.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = AdminToken::parse)]
    pub admin_token: Option<AdminToken>,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Threads serving requests (default: one per CPU). On a small machine shared with Redis
    /// and a load generator, fewer threads than CPUs serve more requests (see
    /// docs/benchmarks.md).
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Upper bound on a whole request, Redis calls included; past it the client gets a 503.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub request_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,

    /// Longest time from the first byte of a request head to its end; past it the connection
    /// is closed without an answer. 100 to 120000 ms.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub header_read_timeout_ms: u64,

    /// A keep-alive connection with no request in flight and no byte received for this long is
    /// closed. 1000 to 3600000 ms.
    #[arg(long, env = "IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub idle_timeout_ms: u64,

    /// Most connections served at once; further ones wait in the kernel's accept backlog
    /// until one closes. 1 to 1000000.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// How long after an event's `ends_at` its idempotency entries and per-user totals are
    /// kept (replays keep working until then), in seconds.
    #[arg(long, env = "IDEMPOTENCY_RETENTION_SECS", default_value_t = 86_400)]
    pub idempotency_retention_secs: u64,

    /// Answer `sold_out` from a local flag once an event is sold out (see `sold_out/`).
    #[arg(long, env = "SOLD_OUT_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub sold_out_cache: bool,

    /// How often each local sold-out flag is re-validated against Redis.
    #[arg(long, env = "SOLD_OUT_REFRESH_MS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(5..=1_000))]
    pub sold_out_refresh_ms: u64,

    /// Events with more idempotency scopes (orders accepted) than this get no local sold-out
    /// flag: their sold-out answers come from the script. 1 to 2000000.
    #[arg(long, env = "SOLD_OUT_MAX_SCOPES", default_value_t = DEFAULT_SOLD_OUT_MAX_SCOPES,
          value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
    pub sold_out_max_scopes: u64,
}

impl Config {
    /// Defaults for everything but Redis (used by tests and embedders).
    pub fn new(redis: RedisArgs) -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            redis,
            log: LogArgs { log_filter: "info".into(), log_format: flashsale_shared::config::LogFormat::Text },
            worker_threads: None,
            request_timeout_ms: 3000,
            shutdown_timeout_ms: 10_000,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idempotency_retention_secs: 86_400,
            sold_out_cache: true,
            sold_out_refresh_ms: 25,
            sold_out_max_scopes: DEFAULT_SOLD_OUT_MAX_SCOPES,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_secs)
    }
}

/// The admin bearer token. Never printed: `Debug` shows a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn parse(token: &str) -> Result<Self, String> {
        if token.len() < 16 {
            return Err("ADMIN_TOKEN must be at least 16 characters long".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("ADMIN_TOKEN must be printable ASCII without spaces".into());
        }
        Ok(Self(token.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}
