//! The Redis schema's vocabulary, in one place: order statuses and how each is spelled in a
//! Redis record, in the ledger and on the wire.

use serde::Serialize;

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

    /// Whether a worker or an operator has decided it (the ledger holds only these today).
    pub fn is_final(self) -> bool {
        self != Self::Pending
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
