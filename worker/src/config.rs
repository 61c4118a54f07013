//! Worker configuration: CLI flags with environment fallbacks, validated at start-up. The
//! time knobs are configurable so fault tests can run in seconds.

use std::net::SocketAddr;
use std::time::Duration;

use flashsale_ledger::LedgerArgs;
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
        /// Also require that the worker has drained: no pending order (but parked ones), no
        /// waiting entry.
        #[arg(long)]
        drained: bool,
        /// Also compare Redis and the ledger order by order, in both directions.
        #[arg(long)]
        ledger: bool,
    },
    /// Apply the ledger's migrations and exit (the worker also applies them at start-up).
    Migrate,
    /// Print an event's recorded orders from the ledger (CSV with a header, or one JSON object
    /// per line), a page at a time.
    Export {
        #[arg(long)]
        event: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
    },
    /// Print the Redis schema of one event as JSON: its key names, the purchase script's KEYS
    /// in order and its source, the event hash's fields (what `bench/bench.py` drives Redis
    /// with, so that no tool outside Rust formats a key). Needs no Redis.
    Schema {
        #[arg(long)]
        event: String,
    },
    /// List and resolve dead letters: entries the worker could not finalize. A parked one's
    /// order stays pending, its units held, until it is redriven or failed here.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// Print an event's dead letters, one JSON object per line, oldest first.
    List {
        #[arg(long)]
        event: String,
    },
    /// Put a parked entry's order back on the stream; a worker confirms it.
    Redrive {
        #[arg(long)]
        event: String,
        /// The dead letter's `id` (as `list` prints it).
        #[arg(long)]
        entry: String,
    },
    /// Fail a parked entry's order: its units go back on sale and to the buyer's allowance.
    /// A dead letter without a pending order is just removed.
    Fail {
        #[arg(long)]
        event: String,
        /// The dead letter's `id` (as `list` prints it).
        #[arg(long)]
        entry: String,
    },
}

/// Defaults, each written once: used by the flags below and by [`Config::new`].
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9091";
pub const DEFAULT_BATCH_SIZE: u32 = 200;
pub const DEFAULT_BLOCK_MS: u64 = 1000;
pub const DEFAULT_CLAIM_MIN_IDLE_MS: u64 = 30_000;
pub const DEFAULT_CLAIM_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
pub const DEFAULT_LEDGER_HOLD_MS: u64 = 30_000;
pub const DEFAULT_DISCOVERY_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_TRIM_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_STATS_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub ledger: LedgerArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Address of the worker's `/metrics` and `/healthz` endpoint.
    #[arg(long, env = "METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// This worker's name in the consumer group (default: the host name). Keep it stable
    /// across restarts so a restarted worker finds its own pending entries first.
    #[arg(long, env = "CONSUMER_NAME", value_parser = parse_consumer_name)]
    pub consumer_name: Option<String>,

    /// Entries read per call, 1-10000.
    #[arg(long, env = "BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// How long one blocking read waits for new entries, 10-5000 ms; also bounds how long a
    /// shutdown waits for the read in hand.
    #[arg(long, env = "BLOCK_MS", default_value_t = DEFAULT_BLOCK_MS,
          value_parser = clap::value_parser!(u64).range(10..=5_000))]
    pub block_ms: u64,

    /// Entries pending longer than this with any consumer (a dead or stuck one included) are
    /// claimed by this worker, 100-86400000 ms. A claim never counts as a delivery, so an
    /// entry claimed from a worker that was merely slow is finalized once all the same.
    #[arg(long, env = "CLAIM_MIN_IDLE_MS", default_value_t = DEFAULT_CLAIM_MIN_IDLE_MS,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub claim_min_idle_ms: u64,

    /// How long a worker whose ledger (PostgreSQL) is down keeps its batch from the other
    /// workers, 100-86400000 ms. Past it, the worker lets go: it stops resetting its entries'
    /// idle time and reads nothing until its ledger answers, so a worker that lost only its
    /// database hands its buyers to healthy workers (they claim the entries once idle for
    /// `CLAIM_MIN_IDLE_MS`) instead of holding them as long as it lives. Short outages of the
    /// database itself, which every worker sees, are ridden out without claims.
    #[arg(long, env = "LEDGER_HOLD_MS", default_value_t = DEFAULT_LEDGER_HOLD_MS,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub ledger_hold_ms: u64,
    /// How often the claim loop looks for idle entries, 10-3600000 ms.
    #[arg(long, env = "CLAIM_INTERVAL_MS", default_value_t = DEFAULT_CLAIM_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub claim_interval_ms: u64,

    /// Failed finalize attempts allowed per entry, 1-1000; the next failure parks it in the
    /// dead-letter stream (its order stays pending for an operator). Faults of Redis itself
    /// (full, read-only, unreachable) and worker crashes are never counted.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = DEFAULT_MAX_DELIVERIES,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_deliveries: u32,

    /// How often the worker looks for new events, 10-600000 ms.
    #[arg(long, env = "DISCOVERY_INTERVAL_MS", default_value_t = DEFAULT_DISCOVERY_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub discovery_interval_ms: u64,

    /// How often acknowledged history is trimmed from the streams and ended events past
    /// their retention are purged, 10-3600000 ms.
    #[arg(long, env = "TRIM_INTERVAL_MS", default_value_t = DEFAULT_TRIM_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub trim_interval_ms: u64,

    /// For tests only: `crash-after-ledger-write` makes the process abort right after its
    /// first committed ledger write, before Redis acknowledges anything (a crash between the
    /// two steps, on demand); `crash-after-ledger-leave-mark` and `crash-after-redis-removal`
    /// abort between the steps of an event's leaving Redis (`maintenance::leave_redis`).
    #[arg(long, env = "FLASHSALE_FAILPOINT", hide = true)]
    pub failpoint: Option<Failpoint>,

    /// How often stream and stock gauges are refreshed, 10-600000 ms.
    #[arg(long, env = "STATS_INTERVAL_MS", default_value_t = DEFAULT_STATS_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub stats_interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Failpoint {
    CrashAfterLedgerWrite,
    /// Abort once the ledger says an event left Redis, before its keys are removed.
    CrashAfterLedgerLeaveMark,
    /// Abort once an event's keys and registration are removed from Redis.
    CrashAfterRedisRemoval,
}

fn parse_consumer_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("CONSUMER_NAME must be 1-128 printable characters without spaces".into());
    }
    Ok(name.to_owned())
}

impl Config {
    /// Defaults for everything but Redis (used by tests and embedders).
    pub fn new(redis: RedisArgs, ledger: LedgerArgs) -> Self {
        Self {
            redis,
            ledger,
            log: LogArgs::default(),
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("a valid default address"),
            consumer_name: None,
            batch_size: DEFAULT_BATCH_SIZE,
            block_ms: DEFAULT_BLOCK_MS,
            claim_min_idle_ms: DEFAULT_CLAIM_MIN_IDLE_MS,
            claim_interval_ms: DEFAULT_CLAIM_INTERVAL_MS,
            ledger_hold_ms: DEFAULT_LEDGER_HOLD_MS,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            discovery_interval_ms: DEFAULT_DISCOVERY_INTERVAL_MS,
            trim_interval_ms: DEFAULT_TRIM_INTERVAL_MS,
            stats_interval_ms: DEFAULT_STATS_INTERVAL_MS,
            failpoint: None,
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
