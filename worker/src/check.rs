//! `flashsale-worker check --event E [--drained]`: the books-balance invariant as an
//! operator command (the same check the fault tests run; see `flashsale_shared::audit`).

use std::process::ExitCode;

use flashsale_shared::EventId;
use flashsale_shared::audit;
use flashsale_shared::config::RedisArgs;
use redis::AsyncConnectionConfig;

/// A connection of its own for an operator command, with the configured deadlines (each call
/// of the chunked audit is short, so the ordinary deadline applies).
pub(crate) async fn connect(redis: &RedisArgs) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(redis.timeout()))
        .set_response_timeout(Some(redis.timeout()));
    redis.client()?.get_multiplexed_async_connection_with_config(&config).await
}

pub async fn check(redis: &RedisArgs, event: &str, drained: bool) -> ExitCode {
    let event = match EventId::parse(event) {
        Ok(event) => event,
        Err(error) => {
            eprintln!("flashsale-worker check: {error}");
            return ExitCode::from(2);
        }
    };
    let report = async {
        let mut conn = connect(redis).await?;
        audit::audit(&mut conn, &event).await
    };
    match report.await {
        Ok(Some(report)) if !report.consistent => {
            let json = serde_json::json!({"event": event.as_str(), "consistent": false, "books": report,
                "violations": report.violations(drained)});
            println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
            eprintln!("flashsale-worker check: the event kept changing during the check; run it again");
            ExitCode::from(2)
        }
        Ok(Some(report)) => {
            let violations = report.violations(drained);
            let json = serde_json::json!({
                "event": event.as_str(),
                "balanced": violations.is_empty(),
                "violations": violations,
                "books": report,
            });
            println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
            if violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Ok(None) => {
            eprintln!("flashsale-worker check: no event {event}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("flashsale-worker check: {error}");
            ExitCode::from(2)
        }
    }
}
