//! Gateway configuration: CLI flags with environment fallbacks, validated at start-up.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use flashsale_shared::config::{LogArgs, RedisArgs};

/// Defaults, each written once: used by the flags below and by [`Config::new`].
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:8080";
/// Request bodies above this size are refused with 413 before they are read.
pub const BODY_LIMIT: usize = 64 * 1024;
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
/// Default of `BUYER_RATE_PER_SEC` and `BUYER_BURST`: a person at a checkout sends a request
/// now and then, a retrying client a few a second; twenty at once and ten a second after that
/// leaves every honest client room and stops a script hammering with one buyer's token.
pub const DEFAULT_BUYER_RATE_PER_SEC: u32 = 10;
pub const DEFAULT_BUYER_BURST: u32 = 20;
/// Default of `CLIENT_RATE_PER_SEC`: off. Behind a proxy or load balancer whose address is not
/// in `TRUSTED_PROXIES`, every buyer has the proxy's address, and a per-address limit would
/// throttle the whole sale; turn it on once `TRUSTED_PROXIES` names the proxies (or when
/// buyers connect directly).
pub const DEFAULT_CLIENT_RATE_PER_SEC: u32 = 0;
/// Default of `CLIENT_BURST`, used once `CLIENT_RATE_PER_SEC` turns the limit on.
pub const DEFAULT_CLIENT_BURST: u32 = 100;
/// Largest `BUYER_RATE_PER_SEC`, `BUYER_BURST`, `CLIENT_RATE_PER_SEC` and `CLIENT_BURST`.
pub const MAX_RATE_SETTING: u32 = 1_000_000;
/// Default of `RATE_LIMIT_MAX_KEYS`: entries each limiter holds at most (~40 bytes per
/// address, ~100 per buyer id: a few MB), however many distinct clients come.
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: u64 = 100_000;
/// Shortest `BUYER_JWT_SECRET`, in bytes: RFC 7518 section 3.2 asks for a key of at least the
/// hash's size for HS256.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// How the gateway knows who is buying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BuyerAuth {
    /// Buyer routes need `Authorization: Bearer <JWT>`; the buyer is its `sub`.
    Jwt,
    /// The buyer is the body's `user_id`, trusted as sent: only behind a proxy that
    /// authenticates buyers and sets it.
    None,
}

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

    /// More admin tokens, comma-separated (each at least 16 printable characters), accepted
    /// alongside `ADMIN_TOKEN`: add the new one, move the callers, remove the old one. Audit
    /// lines name a token by its fingerprint (the first 8 hex digits of its SHA-256).
    #[arg(long, env = "ADMIN_TOKENS", hide_env_values = true,
          value_parser = flashsale_shared::config::Secret(AdminTokens::parse))]
    pub admin_tokens: Option<AdminTokens>,

    /// `jwt` (buyer routes need a verified token) or `none` (the body's `user_id` is trusted:
    /// only behind a proxy that authenticates buyers). Default: `jwt` once `BUYER_JWT_SECRET`
    /// or `BUYER_JWT_KEYS` is set, `none` otherwise (with a warning at start-up).
    #[arg(long, env = "BUYER_AUTH", value_enum)]
    pub buyer_auth: Option<BuyerAuth>,

    /// HS256 secret of buyer tokens, at least 32 bytes. Never printed.
    #[arg(long, env = "BUYER_JWT_SECRET", hide_env_values = true,
          value_parser = flashsale_shared::config::Secret(JwtSecret::parse))]
    pub buyer_jwt_secret: Option<JwtSecret>,

    /// A file of public keys for buyer tokens: PEM (one or more RSA, EC P-256 or Ed25519
    /// public keys, for RS256, ES256, EdDSA) or a JWKS (`{"keys": [...]}`, each chosen by the
    /// token's `kid`, so keys rotate). Read at start-up.
    #[arg(long, env = "BUYER_JWT_KEYS")]
    pub buyer_jwt_keys: Option<PathBuf>,

    /// When set, a buyer token's `iss` must be this.
    #[arg(long, env = "BUYER_JWT_ISSUER")]
    pub buyer_jwt_issuer: Option<String>,

    /// When set, a buyer token's `aud` must contain this.
    #[arg(long, env = "BUYER_JWT_AUDIENCE")]
    pub buyer_jwt_audience: Option<String>,

    /// Requests per second each verified buyer (`BUYER_AUTH=jwt`) may make on buyer routes,
    /// replays included, 0-1000000 (0: no per-buyer limit).
    #[arg(long, env = "BUYER_RATE_PER_SEC", default_value_t = DEFAULT_BUYER_RATE_PER_SEC,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RATE_SETTING)))]
    pub buyer_rate_per_sec: u32,

    /// Requests a buyer may make at once above that rate, 0-1000000 (0: no per-buyer limit).
    #[arg(long, env = "BUYER_BURST", default_value_t = DEFAULT_BUYER_BURST,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RATE_SETTING)))]
    pub buyer_burst: u32,

    /// Requests per second each client address may make on `/v1` routes (admin routes
    /// aside), 0-1000000 (0: off, the default; see `TRUSTED_PROXIES`).
    #[arg(long, env = "CLIENT_RATE_PER_SEC", default_value_t = DEFAULT_CLIENT_RATE_PER_SEC,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RATE_SETTING)))]
    pub client_rate_per_sec: u32,

    /// Requests a client address may make at once above that rate, 0-1000000 (0: off).
    #[arg(long, env = "CLIENT_BURST", default_value_t = DEFAULT_CLIENT_BURST,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RATE_SETTING)))]
    pub client_burst: u32,

    /// Entries each rate limiter holds at most, 1000-10000000; past it, newcomers share one
    /// entry until stale entries are dropped (every second).
    #[arg(long, env = "RATE_LIMIT_MAX_KEYS", default_value_t = DEFAULT_RATE_LIMIT_MAX_KEYS,
          value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    pub rate_limit_max_keys: u64,

    /// Proxies whose `X-Forwarded-For` is believed, comma-separated CIDRs or addresses. The
    /// client address is the peer's, or, when the peer is one of these, the nearest
    /// `X-Forwarded-For` hop that is not. Default: none.
    #[arg(long, env = "TRUSTED_PROXIES", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: Option<TrustedProxies>,

    /// Browser origins allowed to call the API (CORS), comma-separated
    /// (`https://shop.example.com`), or `*`. Default: none (no CORS headers).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_parser = CorsOrigins::parse)]
    pub cors_allowed_origins: Option<CorsOrigins>,

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

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a buyer token for an operator's test: signed with `BUYER_JWT_SECRET` (HS256), or
    /// with `--key`, a private key PEM (RS256, ES256 or EdDSA by its type).
    Token(TokenArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The buyer (`sub`): 1-128 characters of `[A-Za-z0-9._:-]`.
    #[arg(long)]
    pub sub: String,
    /// How long the token is valid: a number and a unit (`s`, `m`, `h`, `d`), 1s to 30d.
    #[arg(long, default_value = "10m", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// A private key PEM (RSA, EC P-256 or Ed25519) to sign with instead of the secret.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The `kid` header, naming the key in a JWKS.
    #[arg(long)]
    pub kid: Option<String>,
}

/// `10m`, `30s`, `1h`, `2d`: 1 s to 30 days.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| "must be a number and a unit: 30s, 10m, 1h, 2d".to_owned())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err("the unit must be s, m, h or d".into()),
    };
    let secs = number.saturating_mul(unit_secs);
    if !(1..=30 * 86_400).contains(&secs) {
        return Err("must be between 1s and 30d".into());
    }
    Ok(Duration::from_secs(secs))
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
            admin_tokens: None,
            buyer_auth: None,
            buyer_jwt_secret: None,
            buyer_jwt_keys: None,
            buyer_jwt_issuer: None,
            buyer_jwt_audience: None,
            buyer_rate_per_sec: DEFAULT_BUYER_RATE_PER_SEC,
            buyer_burst: DEFAULT_BUYER_BURST,
            client_rate_per_sec: DEFAULT_CLIENT_RATE_PER_SEC,
            client_burst: DEFAULT_CLIENT_BURST,
            rate_limit_max_keys: DEFAULT_RATE_LIMIT_MAX_KEYS,
            trusted_proxies: None,
            cors_allowed_origins: None,
            command: None,
        }
    }

    /// `BUYER_AUTH` as it applies: the setting, or `jwt` exactly when a key is configured.
    pub fn buyer_auth(&self) -> Result<BuyerAuth, String> {
        let keyed = self.buyer_jwt_secret.is_some() || self.buyer_jwt_keys.is_some();
        match self.buyer_auth {
            Some(BuyerAuth::Jwt) if !keyed => {
                Err("BUYER_AUTH=jwt needs BUYER_JWT_SECRET or BUYER_JWT_KEYS".into())
            }
            Some(mode) => Ok(mode),
            None if keyed => Ok(BuyerAuth::Jwt),
            None => Ok(BuyerAuth::None),
        }
    }

    /// Every admin token: `ADMIN_TOKEN` and those of `ADMIN_TOKENS`.
    pub fn admin_tokens(&self) -> Vec<AdminToken> {
        let listed = self.admin_tokens.iter().flat_map(|tokens| tokens.0.iter());
        let mut tokens: Vec<AdminToken> = self.admin_token.iter().chain(listed).cloned().collect();
        tokens.dedup();
        tokens
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
        self.buyer_auth()?;
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

    /// Names the token in audit lines without revealing it: the first 8 hex digits of its
    /// SHA-256 (32 bits: enough to tell a handful of tokens apart, useless for guessing one).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({})", self.fingerprint())
    }
}

/// `ADMIN_TOKENS`: comma-separated admin tokens. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokens(pub Vec<AdminToken>);

impl AdminTokens {
    /// Errors name a token by its position, never by its text.
    pub fn parse(list: &str) -> Result<Self, String> {
        let tokens = list
            .split(',')
            .map(str::trim)
            .enumerate()
            .filter(|(_, token)| !token.is_empty())
            .map(|(n, token)| AdminToken::parse(token).map_err(|why| format!("token {}: {why}", n + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        if tokens.is_empty() {
            return Err("must list at least one token".into());
        }
        Ok(Self(tokens))
    }
}

impl fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// `BUYER_JWT_SECRET`: the HS256 key of buyer tokens. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret(String);

impl JwtSecret {
    pub fn parse(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_JWT_SECRET_LEN {
            return Err(format!("must be at least {MIN_JWT_SECRET_LEN} bytes long"));
        }
        Ok(Self(secret.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

/// `TRUSTED_PROXIES`: the networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("{item:?} is not a CIDR (10.0.0.0/8) or an address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.0.iter().any(|net| net.contains(&addr))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `CORS_ALLOWED_ORIGINS`: `*`, or the exact origins (`scheme://host[:port]`) browsers may
/// call the API from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.trim() == "*" {
            return Ok(Self::Any);
        }
        let origins = list
            .split(',')
            .map(str::trim)
            .filter(|origin| !origin.is_empty())
            .map(|origin| {
                let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
                let host_ok = rest.is_some_and(|host| {
                    !host.is_empty()
                        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                });
                if host_ok {
                    Ok(origin.to_ascii_lowercase())
                } else {
                    Err(format!("{origin:?} is not an origin (https://host[:port], no path), nor *"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if origins.is_empty() {
            return Err("must list at least one origin, or be *".into());
        }
        Ok(Self::List(origins))
    }
}
