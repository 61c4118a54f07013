//! Gateway configuration: CLI flags with environment fallbacks, validated at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use flashsale_shared::config::{LogArgs, RedisArgs};

/// Defaults, each written once: used by the flags below and by [`Config::new`].
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 3000;
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECS: u64 = 86_400;
pub const DEFAULT_SOLD_OUT_CACHE: bool = true;
pub const DEFAULT_SOLD_OUT_REFRESH_MS: u64 = 25;

/// Longest `IDEMPOTENCY_RETENTION_SECS`: ten years. Longer is not a retention any more, and
/// the bound keeps `ends_at + retention` far inside the range of a Unix millisecond.
pub const MAX_IDEMPOTENCY_RETENTION_SECS: u64 = 315_360_000;
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
    #[arg(long, env = "LISTEN_ADDR", default_value = DEFAULT_LISTEN_ADDR)]
    pub listen_addr: SocketAddr,

    /// Where admin routes and `/metrics` are served. Unset: on `LISTEN_ADDR` with everything
    /// else. Set (e.g. a private interface): only there, and `LISTEN_ADDR` serves only the
    /// public routes.
    #[arg(long, env = "ADMIN_LISTEN_ADDR")]
    pub admin_listen_addr: Option<SocketAddr>,

    /// Bearer token for admin routes (at least 16 printable characters). Unset: admin routes
    /// answer 401 to everyone.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true,
          value_parser = flashsale_shared::config::Secret(AdminToken::parse))]
    pub admin_token: Option<AdminToken>,

    #[command(flatten)]
    pub redis: RedisArgs,

    /// The ledger, optional here: read (never on the purchase path) only for events that have
    /// left Redis, and to refuse re-creating one.
    #[command(flatten)]
    pub ledger: flashsale_ledger::LedgerArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Threads serving requests (default: one per CPU), 1-1024. On a small machine shared with
    /// Redis and a load generator, fewer threads than CPUs serve more requests (see
    /// docs/benchmarks.md).
    #[arg(long, env = "WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Upper bound on a whole request, Redis calls included, 100-60000 ms; above
    /// `BODY_TIMEOUT_MS + REDIS_TIMEOUT_MS`, so a purchase whose body came late still has its
    /// whole Redis deadline.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub request_timeout_ms: u64,

    /// How long the request body may take to arrive, 10-60000 ms (408 past it; nothing changed).
    #[arg(long, env = "BODY_TIMEOUT_MS", default_value_t = DEFAULT_BODY_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub body_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit,
    /// 0-600000 ms.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
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
    /// kept (replays keep working until then; then a worker removes them), in seconds,
    /// 0-315360000 (ten years).
    #[arg(long, env = "IDEMPOTENCY_RETENTION_SECS", default_value_t = DEFAULT_IDEMPOTENCY_RETENTION_SECS,
          value_parser = clap::value_parser!(u64).range(0..=MAX_IDEMPOTENCY_RETENTION_SECS))]
    pub idempotency_retention_secs: u64,

    /// Answer `sold_out` from a local flag once an event is sold out (see `sold_out/`).
    #[arg(long, env = "SOLD_OUT_CACHE", default_value_t = DEFAULT_SOLD_OUT_CACHE, action = clap::ArgAction::Set)]
    pub sold_out_cache: bool,

    /// How often each local sold-out flag is re-validated against Redis, 5-1000 ms.
    #[arg(long, env = "SOLD_OUT_REFRESH_MS", default_value_t = DEFAULT_SOLD_OUT_REFRESH_MS,
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
            listen_addr: DEFAULT_LISTEN_ADDR.parse().expect("a valid default address"),
            admin_token: None,
            admin_listen_addr: None,
            redis,
            ledger: flashsale_ledger::LedgerArgs::none(),
            log: LogArgs::default(),
            worker_threads: None,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            body_timeout_ms: DEFAULT_BODY_TIMEOUT_MS,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idempotency_retention_secs: DEFAULT_IDEMPOTENCY_RETENTION_SECS,
            sold_out_cache: DEFAULT_SOLD_OUT_CACHE,
            sold_out_refresh_ms: DEFAULT_SOLD_OUT_REFRESH_MS,
            sold_out_max_scopes: DEFAULT_SOLD_OUT_MAX_SCOPES,
        }
    }

    /// What single ranges cannot say: checked at start-up (by `run`), naming the settings.
    pub fn validate(&self) -> Result<(), String> {
        let (body, redis, request) =
            (self.body_timeout_ms, self.redis.redis_timeout_ms, self.request_timeout_ms);
        if body.saturating_add(redis) >= request {
            return Err(format!(
                "REQUEST_TIMEOUT_MS ({request}) must be above BODY_TIMEOUT_MS ({body}) + REDIS_TIMEOUT_MS \
                 ({redis}): otherwise a request deadline can cut a purchase short after its script \
                 was sent"
            ));
        }
        if self.idempotency_retention_secs > MAX_IDEMPOTENCY_RETENTION_SECS {
            return Err(format!(
                "IDEMPOTENCY_RETENTION_SECS may be at most {MAX_IDEMPOTENCY_RETENTION_SECS}"
            ));
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
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
            return Err("must be at least 16 characters long".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".into());
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
