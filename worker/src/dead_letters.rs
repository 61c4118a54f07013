//! `flashsale-worker dead-letters list|redrive|fail --event E [--entry ID]`: an operator's view
//! of the entries the worker could not finalize, and the two decisions on a parked one (see
//! `flashsale_shared::dead_letter`). Output is JSON (one object per line for `list`), and each
//! decision also goes to the log as one audit line.

use std::process::ExitCode;

use flashsale_shared::config::RedisArgs;
use flashsale_shared::dead_letter::{self, Action, Resolution};
use flashsale_shared::{EventId, EventKeys};

use crate::config::DeadLetterCommand;
use crate::operator::{connect, exit_code, or_exit};

const COMMAND: &str = "flashsale-worker dead-letters";

pub async fn run(redis: &RedisArgs, command: DeadLetterCommand) -> ExitCode {
    exit_code(resolve(redis, command).await)
}

async fn resolve(redis: &RedisArgs, command: DeadLetterCommand) -> Result<ExitCode, ExitCode> {
    let (event, action, entry) = match &command {
        DeadLetterCommand::List { event } => (event, None, None),
        DeadLetterCommand::Redrive { event, entry } => (event, Some(Action::Redrive), Some(entry)),
        DeadLetterCommand::Fail { event, entry } => (event, Some(Action::Fail), Some(entry)),
    };
    let event = or_exit(EventId::parse(event.as_str()), COMMAND)?;
    let keys = EventKeys::new(&event);
    let mut conn = or_exit(connect(redis).await, COMMAND)?;
    let (Some(action), Some(entry)) = (action, entry) else {
        return list(&mut conn, &keys).await;
    };
    let resolution = or_exit(dead_letter::resolve(&mut conn, &event, &keys, action, entry).await, COMMAND)?;
    let done = !matches!(resolution, Resolution::NotFound | Resolution::NotPending { .. });
    tracing::info!(target: "audit", event = %event, dead_letter = %entry, ?action, ?resolution,
        "dead letter resolved by an operator");
    let json = serde_json::json!({"event": event.as_str(), "dead_letter": entry, "action": action,
        "result": resolution});
    println!("{json}");
    Ok(if done { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn list(conn: &mut flashsale_shared::connection::Conn, keys: &EventKeys) -> Result<ExitCode, ExitCode> {
    let mut after: Option<String> = None;
    loop {
        let page = or_exit(dead_letter::list(conn, keys, after.as_deref(), 500).await, COMMAND)?;
        for letter in &page {
            let mut json = serde_json::to_value(letter).unwrap_or_default();
            json["parked"] = letter.is_parked().into();
            println!("{json}");
        }
        if page.len() < 500 {
            return Ok(ExitCode::SUCCESS);
        }
        after = page.last().map(|l| l.id.clone());
    }
}
