//! What the operator commands (`check`, `dead-letters`, `export`, `migrate`) share: a Redis
//! connection of their own and one way to give up. Exit codes: 0 done, 1 done and found
//! something wrong, 2 could not do it (bad argument, unreachable Redis or database), with one
//! line on stderr saying why.

use std::fmt::Display;
use std::process::ExitCode;

use flashsale_shared::config::RedisArgs;
use flashsale_shared::connection::Conn;

/// The value, or `Err(2)` after printing `{command}: {error}` on stderr: the "parse or exit
/// 2" of every command, e.g. `let event = or_exit(EventId::parse(event), "flashsale-worker export")?`.
pub fn or_exit<T, E: Display>(result: Result<T, E>, command: &str) -> Result<T, ExitCode> {
    result.map_err(|error| {
        eprintln!("{command}: {error}");
        ExitCode::from(2)
    })
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
