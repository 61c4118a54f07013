//! Configuration both binaries share: where Redis is and how to log. Each setting is a CLI
//! flag with an environment fallback (clap `env`), validated before anything starts.

use std::fmt;
use std::time::Duration;

use redis::{Client, ConnectionInfo, IntoConnectionInfo, RedisResult};

/// Default of `REDIS_URL`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default of `REDIS_TIMEOUT_MS`.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 1000;

#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL, `redis://[user:password@]host:port[/db]` (`rediss://` is not built in).
    /// Credentials are never logged, nor echoed in an error about the URL.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true,
          value_parser = Secret(RedisUrl::parse))]
    pub redis_url: RedisUrl,

    /// Redis Cluster seed nodes, comma-separated `redis://[user:password@]host:port` (any few
    /// nodes of the cluster: the others are discovered). When set, both binaries run in cluster
    /// mode and `REDIS_URL` is not used. At most 64 URLs.
    #[arg(long, env = "REDIS_CLUSTER_URLS", hide_env_values = true, value_parser = Secret(ClusterUrls::parse))]
    pub redis_cluster_urls: Option<ClusterUrls>,

    /// How long one Redis call may take before it is abandoned (and a client gets a 503),
    /// 10-60000 ms.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = DEFAULT_REDIS_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub redis_timeout_ms: u64,
}

impl RedisArgs {
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self {
            redis_url: RedisUrl::parse(url)?,
            redis_cluster_urls: None,
            redis_timeout_ms: DEFAULT_REDIS_TIMEOUT_MS,
        })
    }

    /// Cluster mode, with these seed nodes.
    pub fn cluster(urls: &str) -> Result<Self, String> {
        Ok(Self { redis_cluster_urls: Some(ClusterUrls::parse(urls)?), ..Self::new(DEFAULT_REDIS_URL)? })
    }

    /// Where Redis is, for logs: the cluster's seed nodes or the one URL, never a password.
    pub fn target(&self) -> String {
        match &self.redis_cluster_urls {
            Some(urls) => format!("cluster {urls}"),
            None => self.redis_url.to_string(),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    pub fn client(&self) -> RedisResult<Client> {
        Client::open(self.redis_url.info.clone())
    }
}

/// A validated Redis URL whose `Display` and `Debug` show where it points, never a password:
/// they are built from the parsed connection info (scheme, user, host, port, database), not
/// by editing the text, so a password containing `@` or given as `?pass=` cannot leak.
#[derive(Clone)]
pub struct RedisUrl {
    info: ConnectionInfo,
    redacted: String,
}

impl RedisUrl {
    /// The error never repeats the URL: clap prints it, and the URL may hold a password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let info = url.into_connection_info().map_err(|_| {
            "not a valid Redis URL (redis://[user:password@]host:port[/db] or redis+unix:///path)".to_owned()
        })?;
        // Nagle's algorithm holds a small command back while an earlier one is unacknowledged:
        // exactly the pattern of a multiplexed connection with many requests in flight.
        let nodelay = info.tcp_settings().clone().set_nodelay(true);
        let info = info.set_tcp_settings(nodelay);
        let redacted = redact(&info);
        Ok(Self { info, redacted })
    }
}

fn redact(info: &ConnectionInfo) -> String {
    let settings = info.redis_settings();
    let user = settings.username().map(|u| format!("{u}@")).unwrap_or_default();
    let password = if settings.password().is_some() { " (with password)" } else { "" };
    match info.addr() {
        redis::ConnectionAddr::Unix(path) => {
            format!("redis+unix://{user}{}?db={}{password}", path.display(), settings.db())
        }
        addr => format!("redis://{user}{addr}/{}{password}", settings.db()),
    }
}

impl RedisUrl {
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// The seed nodes of a Redis Cluster (`REDIS_CLUSTER_URLS`): one or more URLs, shown redacted.
#[derive(Clone)]
pub struct ClusterUrls(Vec<RedisUrl>);

/// Most seed URLs `REDIS_CLUSTER_URLS` takes (a client needs a few: it discovers the rest).
pub const MAX_CLUSTER_URLS: usize = 64;

impl ClusterUrls {
    pub fn parse(text: &str) -> Result<Self, String> {
        let urls: Vec<RedisUrl> = text
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(RedisUrl::parse)
            .collect::<Result<_, _>>()?;
        if urls.is_empty() {
            return Err("no URL given (comma-separated redis://host:port)".to_owned());
        }
        if urls.len() > MAX_CLUSTER_URLS {
            return Err(format!("more than {MAX_CLUSTER_URLS} URLs"));
        }
        if urls.iter().any(|u| matches!(u.info.addr(), redis::ConnectionAddr::Unix(_))) {
            return Err("a cluster node is reached over TCP, not a unix socket".to_owned());
        }
        Ok(Self(urls))
    }

    pub fn urls(&self) -> &[RedisUrl] {
        &self.0
    }
}

impl fmt::Display for ClusterUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, url) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(url, f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A clap value parser for settings that may hold a secret: clap's own errors repeat the
/// offending value (into the terminal and the logs); this one names the setting and says what
/// is wrong, never what was given.
#[derive(Debug, Clone, Copy)]
pub struct Secret<T>(pub fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Secret<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let name = arg.and_then(|a| a.get_long()).map_or_else(|| "value".to_owned(), |l| format!("--{l}"));
        let env =
            arg.and_then(|a| a.get_env()).map(|e| format!(" ({})", e.to_string_lossy())).unwrap_or_default();
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(clap::error::ErrorKind::InvalidUtf8, format!("{name}{env} is not valid UTF-8\n"))
                .with_cmd(cmd)
        })?;
        (self.0)(text).map_err(|why| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid {name}{env}: {why} (the value is not shown: it may hold a secret)\n"),
            )
            .with_cmd(cmd)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Default of `RUST_LOG`.
pub const DEFAULT_LOG_FILTER: &str = "info";

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,flashsale_api=debug`.
    #[arg(long = "log", env = "RUST_LOG", default_value = DEFAULT_LOG_FILTER)]
    pub log_filter: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self { log_filter: DEFAULT_LOG_FILTER.to_owned(), log_format: LogFormat::Text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_url_hides_credentials() {
        let url = RedisUrl::parse("redis://app:s3cret@cache:6379/0").unwrap();
        assert_eq!(url.to_string(), "redis://app@cache:6379/0 (with password)");
        assert!(!format!("{url:?}").contains("s3cret"));
        // A password containing `@` (percent-encoded or not) and a unix socket's `?pass=`.
        for (text, secret) in [
            ("redis://:qz%40xw@cache:6379", "xw"),
            ("redis://:qz@xw@cache:6379", "xw"),
            ("redis+unix:///run/redis.sock?pass=hunter2", "hunter2"),
        ] {
            let shown = RedisUrl::parse(text).map(|u| u.to_string()).unwrap_or_else(|e| e);
            assert!(!shown.contains(secret), "{text} shown as {shown}");
        }
        let refused = RedisUrl::parse("http://user:hunter2@nope").err().unwrap();
        assert!(!refused.contains("hunter2"), "{refused}");
    }

    #[test]
    fn cluster_urls_are_a_redacted_list() {
        let urls = ClusterUrls::parse("redis://:pw1@a:7000, redis://:pw2@b:7001,").unwrap();
        assert_eq!(urls.urls().len(), 2);
        let shown = format!("{urls} {urls:?}");
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert!(ClusterUrls::parse(" , ").is_err());
        assert!(ClusterUrls::parse("redis+unix:///tmp/r.sock").is_err());
        let refused = ClusterUrls::parse("redis://a:1,http://u:hunter2@b").err().unwrap();
        assert!(!refused.contains("hunter2"), "{refused}");
    }
}
