//! An order's Redis record: one field of the event's `orders` hash per order, holding
//! `status|quantity|created_ms|done_ms|user_id` (`done_ms` empty while pending). One compact
//! string per order keeps memory per sold unit small; the user id goes last because it may
//! contain `:` (never `|`). The Lua scripts write and match it through the patterns named here
//! (the prelude of [`super::lua`]), so Rust and Lua cannot read it differently.

use serde::Serialize;

use crate::domain::UserId;

/// Where an order is. One type from the HTTP edge through the Redis record and the stream to
/// the ledger's `orders.status` column and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Stock reserved and enqueued; the worker has not finalized it yet.
    Pending,
    /// Finalized by a worker: the sale is done.
    Confirmed,
    /// Dead-lettered: its units went back to the stock and to the user's allowance.
    Failed,
}

impl OrderStatus {
    /// Every status, in the order the API documents them.
    pub const ALL: [Self; 3] = [Self::Pending, Self::Confirmed, Self::Failed];

    /// The name on the wire and in the ledger's `orders.status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Failed => "failed",
        }
    }

    /// The inverse of [`OrderStatus::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// The one letter that opens the order's Redis record (`lua/` writes these).
    pub fn letter(self) -> &'static str {
        match self {
            Self::Pending => "p",
            Self::Confirmed => "c",
            Self::Failed => "f",
        }
    }

    /// The inverse of [`OrderStatus::letter`].
    pub fn from_letter(letter: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.letter() == letter)
    }

    /// Whether a worker or an operator has decided it. The ledger holds these, and parked
    /// orders, which are pending (its column spells them `parked`: `flashsale_ledger::status_column`).
    pub fn is_final(self) -> bool {
        self != Self::Pending
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What separates the record's parts.
pub const SEPARATOR: char = '|';

/// One order's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub status: OrderStatus,
    pub quantity: u32,
    pub created_ms: i64,
    /// When it was confirmed or failed.
    pub done_ms: Option<i64>,
    pub user_id: UserId,
}

impl OrderRecord {
    pub fn parse(record: &str) -> Option<Self> {
        let mut parts = record.splitn(5, SEPARATOR);
        let status = OrderStatus::from_letter(parts.next()?)?;
        let quantity = parts.next()?.parse().ok()?;
        let created_ms = parts.next()?.parse().ok()?;
        let done_ms = match parts.next()? {
            "" => None,
            done => Some(done.parse().ok()?),
        };
        let user_id = UserId::parse(parts.next()?).ok()?;
        Some(Self { status, quantity, created_ms, done_ms, user_id })
    }

    /// Whether `text` has a record's shape as the scripts see it (`RECORD_SHAPE`: a status
    /// letter, a quantity, a creation time, a time or nothing, some user id), whether or not
    /// this code can read it. A record of that shape that [`OrderRecord::parse`] refuses (a
    /// user id out of the domain, say) is one `lua/finalize.lua` would still confirm.
    pub fn has_shape(text: &str) -> bool {
        let mut parts = text.splitn(5, SEPARATOR);
        let digits = |part: Option<&str>, may_be_empty: bool| {
            part.is_some_and(|p| (may_be_empty || !p.is_empty()) && p.bytes().all(|b| b.is_ascii_digit()))
        };
        parts.next().is_some_and(|s| s.len() == 1 && s.as_bytes()[0].is_ascii_alphabetic())
            && digits(parts.next(), false)
            && digits(parts.next(), false)
            && digits(parts.next(), true)
            && parts.next().is_some_and(|user| !user.is_empty())
    }

    /// The record as the scripts write it.
    pub fn format(&self) -> String {
        let done = self.done_ms.map(|ms| ms.to_string()).unwrap_or_default();
        let s = SEPARATOR;
        format!(
            "{}{s}{}{s}{}{s}{done}{s}{}",
            self.status.letter(),
            self.quantity,
            self.created_ms,
            self.user_id
        )
    }
}

/// The Lua names of the record's format and patterns, with their values: `(name, value)`.
/// Each pattern is a literal in the script that uses it (the prelude is a list of `local`s),
/// so the hot paths keep their inline `string.match` and pay nothing for the name.
pub(crate) fn lua_patterns() -> Vec<(&'static str, String)> {
    let s = SEPARATOR;
    let pending = OrderStatus::Pending.letter();
    vec![
        // string.format(PENDING_RECORD, quantity, created_ms, user_id): a new order.
        ("PENDING_RECORD", format!("{pending}{s}%d{s}%d{s}{s}%s")),
        // string.format(RECORD, status, quantity, created_ms, done_ms, user_id).
        ("RECORD", format!("%s{s}%d{s}%s{s}%s{s}%s")),
        // Captures status, quantity, created_ms, done_ms, user_id.
        ("RECORD_PARTS", format!("^(%a){s}(%d+){s}(%d+){s}(%d*){s}(.+)$")),
        // Captures the quantity of any record.
        ("RECORD_QUANTITY", format!("^%a{s}(%d+){s}")),
        // Matches any well-formed record.
        ("RECORD_SHAPE", format!("^%a{s}%d+{s}%d+{s}%d*{s}.")),
        // Captures a pending record's quantity and the position just after its empty done_ms,
        // where the confirmation time goes.
        ("PENDING_QUANTITY_AT", format!("^{pending}{s}(%d+){s}%d+{s}(){s}.")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_scripts_write() {
        let pending = OrderRecord::parse("p|2|1764064800000||user:42").unwrap();
        assert_eq!(pending.status, OrderStatus::Pending);
        assert_eq!(pending.quantity, 2);
        assert_eq!(pending.done_ms, None);
        assert_eq!(pending.user_id.as_str(), "user:42");
        assert_eq!(pending.format(), "p|2|1764064800000||user:42");
        let done = OrderRecord::parse("c|1|1764064800000|1764064800123|u").unwrap();
        assert_eq!(done.status, OrderStatus::Confirmed);
        assert_eq!(done.done_ms, Some(1_764_064_800_123));
        assert!(OrderRecord::parse("x|1|1||u").is_none());
        assert!(OrderRecord::parse("p|1|1").is_none());
        assert!(OrderRecord::parse("p|1|1||not a user id").is_none(), "the user id is parsed too");
        assert!(OrderRecord::has_shape("p|1|1||not a user id"), "but finalize.lua would confirm it");
        assert!(OrderRecord::has_shape("c|1|1|2|u"));
        for corrupt in ["garbage", "p|x|1||u", "p|1|1||", "pp|1|1||u", "p|1||1|u"] {
            assert!(!OrderRecord::has_shape(corrupt), "{corrupt}");
        }
    }

    #[test]
    fn every_status_round_trips_through_each_spelling() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(OrderStatus::from_letter(status.letter()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
    }
}
