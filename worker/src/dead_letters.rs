//! `flashsale-worker dead-letters list|redrive|fail --event E [--entry ID]`: an operator's view
//! of the entries the worker could not finalize, and the two decisions on a parked one (see
//! `flashsale_shared::dead_letter`). Output is JSON (one object per line for `list`), and each
//! decision also goes to the log as one audit line.

use std::process::ExitCode;

use flashsale_shared::config::RedisArgs;
use flashsale_shared::dead_letter::{self, Action, Resolution};
use flashsale_shared::{EventId, EventKeys};

use crate::check::connect;
use crate::config::DeadLetterCommand;

pub async fn run(redis: &RedisArgs, command: DeadLetterCommand) -> ExitCode {
    let (event, action, entry) = match &command {
        DeadLetterCommand::List { event } => (event, None, None),
        DeadLetterCommand::Redrive { event, entry } => (event, Some(Action::Redrive), Some(entry)),
        DeadLetterCommand::Fail { event, entry } => (event, Some(Action::Fail), Some(entry)),
    };
    let event = match EventId::parse(event.as_str()) {
        Ok(event) => event,
        Err(error) => {
            eprintln!("flashsale-worker dead-letters: {error}");
            return ExitCode::from(2);
        }
    };
    let keys = EventKeys::new(&event);
    let mut conn = match connect(redis).await {
        Ok(conn) => conn,
        Err(error) => {
            eprintln!("flashsale-worker dead-letters: {error}");
            return ExitCode::from(2);
        }
    };
    let (Some(action), Some(entry)) = (action, entry) else {
        return list(&mut conn, &keys).await;
    };
    match dead_letter::resolve(&mut conn, &event, &keys, action, entry).await {
        Ok(resolution) => {
            let done = !matches!(resolution, Resolution::NotFound | Resolution::NotPending { .. });
            tracing::info!(target: "audit", event = %event, dead_letter = %entry, ?action, ?resolution,
                "dead letter resolved by an operator");
            let json = serde_json::json!({"event": event.as_str(), "dead_letter": entry, "action": action,
                "result": resolution});
            println!("{json}");
            if done { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(error) => {
            eprintln!("flashsale-worker dead-letters: {error}");
            ExitCode::from(2)
        }
    }
}

async fn list(conn: &mut flashsale_shared::connection::Conn, keys: &EventKeys) -> ExitCode {
    let mut after: Option<String> = None;
    loop {
        let page = match dead_letter::list(conn, keys, after.as_deref(), 500).await {
            Ok(page) => page,
            Err(error) => {
                eprintln!("flashsale-worker dead-letters: {error}");
                return ExitCode::from(2);
            }
        };
        for letter in &page {
            let mut json = serde_json::to_value(letter).unwrap_or_default();
            json["parked"] = letter.is_parked().into();
            println!("{json}");
        }
        if page.len() < 500 {
            return ExitCode::SUCCESS;
        }
        after = page.last().map(|l| l.id.clone());
    }
}
