//! `flashsale-worker check --event E [--drained]`: the books-balance invariant as an
//! operator command (the same check the fault tests run; see `flashsale_shared::audit`).

use std::process::ExitCode;

use flashsale_shared::EventId;
use flashsale_shared::audit;
use flashsale_shared::config::RedisArgs;
use redis::AsyncConnectionConfig;

pub async fn check(redis: &RedisArgs, event: &str, drained: bool) -> ExitCode {
    let event = match EventId::parse(event) {
        Ok(event) => event,
        Err(error) => {
            eprintln!("flashsale-worker check: {error}");
            return ExitCode::from(2);
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(redis.timeout()))
        .set_response_timeout(Some(redis.timeout() * 5));
    let report = async {
        let client = redis.client()?;
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        audit::audit(&mut conn, &event).await
    };
    match report.await {
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
