//! Worker configuration: CLI flags with environment fallbacks, validated at start-up. The
//! time knobs are configurable so fault tests can run in seconds.

use std::net::SocketAddr;
use std::time::Duration;

use flashsale_shared::config::{LogArgs, RedisArgs};

#[derive(Debug, clap::Parser)]
#[command(name = "flashsale-worker", version, about = "flashsale order worker")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Consume order streams and finalize orders (the default).
    Run,
    /// Check that an event's books balance; prints a JSON report. Exit status 0 when they
    /// balance, 1 when they do not, 2 when the check could not run.
    Check {
        /// The event to check.
        #[arg(long)]
        event: String,
        /// Also require that the worker has drained: no pending order, no waiting entry.
        #[arg(long)]
        drained: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Address of the worker's `/metrics` and `/healthz` endpoint.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9091")]
    pub metrics_addr: SocketAddr,

    /// This worker's name in the consumer group (default: the host name). Keep it stable
    /// across restarts so a restarted worker finds its own pending entries first.
    #[arg(long, env = "CONSUMER_NAME", value_parser = parse_consumer_name)]
    pub consumer_name: Option<String>,

    /// Entries read per XREADGROUP call.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// How long one blocking read waits for new entries; also bounds how long a shutdown
    /// waits for the read in hand.
    #[arg(long, env = "BLOCK_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=5_000))]
    pub block_ms: u64,

    /// Entries pending longer than this with any consumer (a dead or stuck one included) are
    /// claimed by this worker.
    #[arg(long, env = "CLAIM_MIN_IDLE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub claim_min_idle_ms: u64,

    /// How often the claim loop looks for idle entries.
    #[arg(long, env = "CLAIM_INTERVAL_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub claim_interval_ms: u64,

    /// An entry delivered more times than this is dead-lettered instead of processed.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliveries: u32,

    /// How often the worker looks for new events.
    #[arg(long, env = "DISCOVERY_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub discovery_interval_ms: u64,

    /// How often acknowledged history is trimmed from the streams.
    #[arg(long, env = "TRIM_INTERVAL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub trim_interval_ms: u64,

    /// How often stream and stock gauges are refreshed.
    #[arg(long, env = "STATS_INTERVAL_MS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub stats_interval_ms: u64,
}

fn parse_consumer_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("CONSUMER_NAME must be 1-128 printable characters without spaces".into());
    }
    Ok(name.to_owned())
}

impl Config {
    /// Defaults for everything but Redis (used by tests and embedders).
    pub fn new(redis: RedisArgs) -> Self {
        Self {
            redis,
            log: LogArgs { log_filter: "info".into(), log_format: flashsale_shared::config::LogFormat::Text },
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9091)),
            consumer_name: None,
            batch_size: 200,
            block_ms: 1000,
            claim_min_idle_ms: 30_000,
            claim_interval_ms: 5_000,
            max_deliveries: 5,
            discovery_interval_ms: 1_000,
            trim_interval_ms: 10_000,
            stats_interval_ms: 1_000,
        }
    }

    /// The configured name, or the host name.
    pub fn consumer(&self) -> String {
        self.consumer_name
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }

    pub fn block(&self) -> Duration {
        Duration::from_millis(self.block_ms)
    }
}

pub(crate) fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
