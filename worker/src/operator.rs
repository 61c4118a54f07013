//! What the operator commands (`check`, `dead-letters`, `export`, `migrate`) share: a Redis
//! connection of their own and one way to give up. Exit codes: 0 done, 1 done and found
//! something wrong, 2 could not do it (bad argument, unreachable Redis or database), with one
//! line on stderr saying why.

use std::fmt::Display;
use std::process::ExitCode;

use flashsale_shared::config::RedisArgs;
use flashsale_shared::connection::Conn;
use flashsale_shared::schema::EventField;
use flashsale_shared::{EventId, EventKeys};

/// The value, or `Err(2)` after printing `{command}: {error}` on stderr: the "parse or exit
/// 2" of every command, e.g. `let event = or_exit(EventId::parse(event), "flashsale-worker export")?`.
pub fn or_exit<T, E: Display>(result: Result<T, E>, command: &str) -> Result<T, ExitCode> {
    result.map_err(|error| {
        eprintln!("{command}: {error}");
        ExitCode::from(2)
    })
}

/// The Redis schema as one event sees it, for tools outside Rust (`bench/bench.py` asks
/// `flashsale-worker schema --event E` rather than formatting key names itself).
#[derive(Debug, serde::Serialize)]
struct Description<'a> {
    event_id: &'a EventId,
    keys: &'a EventKeys,
    /// `lua/purchase.lua`'s KEYS, in order.
    purchase_keys: [&'a str; 5],
    /// The set of registered events (workers consume each).
    registry: &'static str,
    consumer_group: &'static str,
    event_fields: Vec<&'static str>,
    /// The purchase script as Redis runs it (prelude and body), for `SCRIPT LOAD`.
    purchase_script: &'static str,
}

/// `flashsale-worker schema --event E`: the Redis schema of the event, as JSON on stdout.
pub fn schema(event: &str) -> ExitCode {
    exit_code((|| {
        let event = or_exit(EventId::parse(event), "flashsale-worker schema")?;
        let keys = EventKeys::new(&event);
        let description = Description {
            event_id: &event,
            keys: &keys,
            purchase_keys: keys.purchase_keys(),
            registry: flashsale_shared::keys::EVENTS,
            consumer_group: flashsale_shared::keys::CONSUMER_GROUP,
            event_fields: EventField::ALL.map(EventField::name).to_vec(),
            purchase_script: flashsale_shared::scripts::PURCHASE.source(),
        };
        println!("{}", serde_json::to_string_pretty(&description).expect("the schema serializes"));
        Ok(ExitCode::SUCCESS)
    })())
}

/// The exit code of a command written with [`or_exit`]: both sides are one.
pub(crate) fn exit_code(result: Result<ExitCode, ExitCode>) -> ExitCode {
    result.unwrap_or_else(|code| code)
}

/// A connection of its own for an operator command (one node or the cluster), with the
/// configured deadlines (each call of the chunked audit is short, so the ordinary deadline
/// applies).
pub(crate) async fn connect(redis: &RedisArgs) -> redis::RedisResult<Conn> {
    flashsale_shared::connection::Redis::new(redis)?.dedicated(redis.timeout()).await
}

/// `flashsale-worker migrate`: applies the ledger's migrations and exits (0 on success).
pub async fn migrate(config: &crate::config::Config) -> ExitCode {
    let applied = async { flashsale_ledger::Ledger::new(&config.ledger)?.migrate().await };
    exit_code(or_exit(applied.await, "flashsale-worker migrate").map(|applied| {
        println!("{}", serde_json::json!({"migrations_applied": applied}));
        ExitCode::SUCCESS
    }))
}
