//! `flashsale-worker export --event E --format csv|jsonl`: the event's recorded orders, from
//! the ledger, a page at a time (`Ledger::pages`), on stdout (exit 0), ordered by order id.
//! Statuses as the ledger's column spells them: `confirmed`, `failed`, or `parked` (an order
//! waiting for an operator, not to be shipped).

use std::io::Write;
use std::process::ExitCode;

// The ledger's own spelling: a parked order exports as `parked`, as merchants read it in SQL.
use flashsale_ledger::{LedgerOrder, status_column};
use flashsale_shared::EventId;

use crate::config::{Config, ExportFormat};
use crate::operator::{exit_code, or_exit};

const COMMAND: &str = "flashsale-worker export";

pub async fn export(config: &Config, event: &str, format: ExportFormat) -> ExitCode {
    exit_code(write_orders(config, event, format).await)
}

async fn write_orders(config: &Config, event: &str, format: ExportFormat) -> Result<ExitCode, ExitCode> {
    let event = or_exit(EventId::parse(event), COMMAND)?;
    let ledger = or_exit(flashsale_ledger::Ledger::new(&config.ledger), COMMAND)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if format == ExportFormat::Csv {
        let _ = writeln!(out, "order_id,event_id,user_id,quantity,status,created_at,finalized_at");
    }
    let mut pages = ledger.pages(&event);
    while let Some(page) = or_exit(pages.next_page().await, COMMAND)? {
        for order in &page {
            if writeln!(out, "{}", line(order, format)).is_err() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(if out.flush().is_err() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// One order in the chosen format.
fn line(order: &LedgerOrder, format: ExportFormat) -> String {
    let rfc3339 = |at: time::OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    };
    match format {
        // Ids are of a restricted charset (no comma, no quote): CSV needs no quoting.
        ExportFormat::Csv => format!(
            "{},{},{},{},{},{},{}",
            order.order_id,
            order.event_id,
            order.user_id,
            order.quantity,
            status_column(order.status),
            rfc3339(order.created_at),
            order.finalized_at.map(rfc3339).unwrap_or_default()
        ),
        ExportFormat::Jsonl => serde_json::json!({
            "order_id": order.order_id.to_string(), "event_id": order.event_id.as_str(),
            "user_id": order.user_id.as_str(), "quantity": order.quantity, "status": status_column(order.status),
            "created_at": rfc3339(order.created_at), "finalized_at": order.finalized_at.map(rfc3339),
        })
        .to_string(),
    }
}
