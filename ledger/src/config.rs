//! Where the ledger is and how long to wait for it. Each setting is a CLI flag with an
//! environment fallback, range-checked at start-up; the URL is validated by a parser that never
//! repeats it (it holds a password).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub const DEFAULT_DATABASE_POOL_SIZE: u16 = 4;
pub const DEFAULT_DATABASE_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// PostgreSQL URL of the ledger, `postgres://user:password@host:port/database`. Its
    /// password is never logged. Required by the worker; optional for the gateway (which uses
    /// it only to answer for events that have left Redis).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true,
          value_parser = flashsale_shared::config::Secret(DatabaseUrl::parse))]
    pub database_url: Option<DatabaseUrl>,

    /// Connections to the ledger, 1-64.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = DEFAULT_DATABASE_POOL_SIZE,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub database_pool_size: u16,

    /// Deadline of one ledger call (connecting, waiting for a connection, one statement),
    /// 100-60000 ms. Past it the call counts as the database being unavailable: retried,
    /// never held against the orders.
    #[arg(long, env = "DATABASE_TIMEOUT_MS", default_value_t = DEFAULT_DATABASE_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub database_timeout_ms: u64,
}

impl LedgerArgs {
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self {
            database_url: Some(DatabaseUrl::parse(url)?),
            database_pool_size: DEFAULT_DATABASE_POOL_SIZE,
            database_timeout_ms: DEFAULT_DATABASE_TIMEOUT_MS,
        })
    }

    /// No ledger configured.
    pub fn none() -> Self {
        Self {
            database_url: None,
            database_pool_size: DEFAULT_DATABASE_POOL_SIZE,
            database_timeout_ms: DEFAULT_DATABASE_TIMEOUT_MS,
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.database_timeout_ms)
    }
}

/// A validated PostgreSQL URL whose `Display` and `Debug` show where it points, never the
/// password: built from the parsed configuration, not by editing the text.
#[derive(Clone)]
pub struct DatabaseUrl {
    config: tokio_postgres::Config,
    redacted: String,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must be a postgres:// URL".into());
        }
        let config =
            tokio_postgres::Config::from_str(url).map_err(|_| "not a valid PostgreSQL URL".to_owned())?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
        let password = if config.get_password().is_some() { " (with password)" } else { "" };
        let database = config.get_dbname().unwrap_or("");
        let redacted = format!("postgres://{user}{}/{database}{password}", hosts.join(","));
        Ok(Self { config, redacted })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_hides_its_password() {
        let url = DatabaseUrl::parse("postgres://app:s%40cr3tzz@db:5433/ledger").unwrap();
        assert_eq!(url.to_string(), "postgres://app@db:5433/ledger (with password)");
        assert!(!format!("{url:?}").contains("cr3tzz"));
        let refused = DatabaseUrl::parse("mysql://app:cr3tzz@db").err().unwrap();
        assert!(!refused.contains("cr3tzz"));
    }
}
