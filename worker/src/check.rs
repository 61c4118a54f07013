//! `flashsale-worker check --event E [--drained] [--ledger]`: the books-balance invariant as an
//! operator command (the same check the fault tests run; see `flashsale_shared::audit`), and
//! with `--ledger` the comparison of Redis and the ledger order by order, in both directions,
//! in chunks (Redis `HSCAN` of 200, ledger pages of 1,000), so it can run during a sale.

use std::process::ExitCode;

use flashsale_shared::audit;
use flashsale_shared::connection::Conn;
use flashsale_shared::order::{self, OrderStatus};
use flashsale_shared::{EventId, OrderId};

use crate::config::Config;
use crate::operator::{connect, exit_code, or_exit};

/// Redis and the ledger, order by order.
#[derive(Debug, Default, serde::Serialize)]
pub struct LedgerComparison {
    /// Confirmed or failed orders in Redis.
    pub redis_final: i64,
    /// Orders in the ledger.
    pub ledger_orders: i64,
    /// Final in Redis, absent from the ledger: never allowed (the ledger is written first).
    pub missing_in_ledger: i64,
    /// Final in Redis with another status in the ledger (an operator's `fail` or redrive not
    /// recorded yet; a parked row counts as `pending`).
    pub status_mismatch: i64,
    /// In the ledger, unknown to Redis (Redis lost data, or the event left Redis).
    pub missing_in_redis: i64,
    /// Final in the ledger, pending in Redis: a batch being confirmed (its row is written
    /// first), or a parked order whose row the worker has not marked `parked` yet (it heals at
    /// the event's next batch or the next reconciliation). Allowed while entries are in flight,
    /// never once drained: a merchant would ship an order an operator may still fail.
    pub ahead_of_redis: i64,
    /// Parked in the ledger (recorded `parked`) and pending in Redis: they agree.
    pub parked: i64,
    /// The first few order ids of each kind of difference.
    pub examples: Vec<String>,
}

impl LedgerComparison {
    fn violations(&self, drained: bool) -> Vec<String> {
        let mut found = Vec::new();
        if self.missing_in_ledger > 0 {
            found.push(format!(
                "{} final orders in Redis are missing from the ledger",
                self.missing_in_ledger
            ));
        }
        if self.missing_in_redis > 0 {
            found.push(format!("{} ledger orders are unknown to Redis", self.missing_in_redis));
        }
        if drained && self.status_mismatch > 0 {
            found.push(format!("{} orders have a different status in the ledger", self.status_mismatch));
        }
        if drained && self.ahead_of_redis > 0 {
            found.push(format!(
                "{} orders are final in the ledger but pending in Redis (parked orders the ledger \
                 does not record as parked yet)",
                self.ahead_of_redis
            ));
        }
        found
    }

    fn example(&mut self, what: &str, id: &str) {
        if self.examples.len() < 20 {
            self.examples.push(format!("{what}: {id}"));
        }
    }
}

/// Walks Redis's orders against the ledger, then the ledger's against Redis.
pub async fn compare(
    conn: &mut Conn,
    ledger: &flashsale_ledger::Ledger,
    event: &EventId,
) -> Result<LedgerComparison, String> {
    let keys = flashsale_shared::EventKeys::new(event);
    let mut report = LedgerComparison::default();
    let mut seen = std::collections::HashSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, orders) = order::scan(conn, &keys, cursor).await.map_err(|e| e.to_string())?;
        let mut finals = Vec::new();
        for (id, record) in orders {
            let (Some(id), Some(record)) = (OrderId::parse(&id), record) else { continue };
            if record.status != OrderStatus::Pending && seen.insert(id) {
                finals.push((id, record.status));
            }
        }
        let ids: Vec<OrderId> = finals.iter().map(|(id, _)| *id).collect();
        let in_ledger = ledger.statuses(&ids).await.map_err(|e| e.to_string())?;
        for (id, status) in finals {
            report.redis_final += 1;
            match in_ledger.get(&id) {
                None => {
                    report.missing_in_ledger += 1;
                    report.example("missing in the ledger", &id.to_string());
                }
                Some((got, _)) if *got != status => {
                    report.status_mismatch += 1;
                    report.example("status differs", &id.to_string());
                }
                Some(_) => {}
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut pages = ledger.pages(event);
    while let Some(page) = pages.next_page().await.map_err(|e| e.to_string())? {
        let ids: Vec<String> = page.iter().map(|o| o.order_id.to_string()).collect();
        let named: Vec<&str> = ids.iter().map(String::as_str).collect();
        let records = order::load_many(conn, &keys, &named).await.map_err(|e| e.to_string())?;
        for (row, record) in page.iter().zip(records) {
            report.ledger_orders += 1;
            match record {
                // An unreadable record is as good as none (the audit reports it as corrupt).
                order::Stored::Absent | order::Stored::Unreadable(_) => {
                    report.missing_in_redis += 1;
                    report.example("unknown to Redis", &row.order_id.to_string());
                }
                // Parked in the ledger: pending in Redis too (a redrive or a fail in Redis that
                // the ledger has not recorded yet is counted by the walk over Redis).
                order::Stored::Record(record) if record.status == OrderStatus::Pending => {
                    if row.status == OrderStatus::Pending {
                        report.parked += 1;
                    } else {
                        report.ahead_of_redis += 1;
                        report.example("final in the ledger, pending in Redis", &row.order_id.to_string());
                    }
                }
                order::Stored::Record(_) => {}
            }
        }
    }
    Ok(report)
}

const COMMAND: &str = "flashsale-worker check";

/// Exit 0 when the books balance (and, with `--ledger`, Redis and the ledger agree), 1 with
/// the violations on stdout, 2 when the check could not be made.
pub async fn check(config: &Config, event: &str, drained: bool, with_ledger: bool) -> ExitCode {
    exit_code(run(config, event, drained, with_ledger).await)
}

async fn run(config: &Config, event: &str, drained: bool, with_ledger: bool) -> Result<ExitCode, ExitCode> {
    let event = or_exit(EventId::parse(event), COMMAND)?;
    let mut conn = or_exit(connect(&config.redis).await, COMMAND)?;
    let comparison = if with_ledger {
        let ledger = or_exit(flashsale_ledger::Ledger::new(&config.ledger), COMMAND)?;
        Some(or_exit(compare(&mut conn, &ledger, &event).await, "flashsale-worker check --ledger")?)
    } else {
        None
    };
    Ok(match audit::audit(&mut conn, &event).await {
        Ok(Some(report)) if !report.consistent => {
            let json = serde_json::json!({"event": event.as_str(), "consistent": false, "books": report,
                "violations": report.violations(drained)});
            println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
            eprintln!("flashsale-worker check: the event kept changing during the check; run it again");
            ExitCode::from(2)
        }
        Ok(Some(report)) => {
            let mut violations = report.violations(drained);
            if let Some(comparison) = &comparison {
                violations.extend(comparison.violations(drained));
            }
            let json = serde_json::json!({
                "event": event.as_str(),
                "balanced": violations.is_empty(),
                "violations": violations,
                "books": report,
                "ledger": comparison,
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
    })
}
