//! The event hash `fs:{ev:E}:event`: one field per [`EventField`], read by name through
//! [`EventHash`], never by position.

use std::collections::HashMap;

use redis::RedisResult;
use redis::aio::ConnectionLike;

use super::keys::EventKeys;

/// Every field of the event hash. The Lua prelude names each `EV_<NAME>` (upper case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventField {
    /// Units on sale (configuration).
    Stock,
    /// Units not reserved: stock minus units in pending and confirmed orders.
    Remaining,
    /// Units in orders the worker has finalized.
    Confirmed,
    /// Orders ever accepted (a configuration is frozen once this is above zero).
    Accepted,
    /// Units one user may hold over all their orders (configuration).
    Limit,
    /// Display name ('' when none).
    Name,
    /// Sale window start, Unix ms ('' when none).
    Starts,
    /// Sale window end, Unix ms ('' when none).
    Ends,
    /// When the idempotency entries and user totals go (`ends` plus the retention; '' = never).
    PurgeAt,
    /// When the configuration was written, Unix ms.
    Created,
    /// When `lua/purge.lua` removed the idempotency entries and user totals (absent before).
    Purged,
    /// An operator's decision ([`EventStateMark`]; absent: selling by its window).
    State,
    /// When an operator paused the sale (absent unless paused).
    PausedAt,
    /// When an operator ended the sale (absent unless ended).
    EndedAt,
    /// The decision counter: raised by every decision that changes who may buy (a
    /// configuration created or replaced, a retention adopted, a pause, a resume, an end). The
    /// worker records the event in the ledger whenever this is above the ledger's, and a
    /// reconciliation puts the ledger's decision back when the ledger's is not below it: the
    /// higher counter is the later decision, whichever side holds it.
    Version,
}

impl EventField {
    pub const ALL: [Self; 15] = [
        Self::Stock,
        Self::Remaining,
        Self::Confirmed,
        Self::Accepted,
        Self::Limit,
        Self::Name,
        Self::Starts,
        Self::Ends,
        Self::PurgeAt,
        Self::Created,
        Self::Purged,
        Self::State,
        Self::PausedAt,
        Self::EndedAt,
        Self::Version,
    ];

    /// The field's name in the hash.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Stock => "stock",
            Self::Remaining => "remaining",
            Self::Confirmed => "confirmed",
            Self::Accepted => "accepted",
            Self::Limit => "limit",
            Self::Name => "name",
            Self::Starts => "starts",
            Self::Ends => "ends",
            Self::PurgeAt => "purge_at",
            Self::Created => "created",
            Self::Purged => "purged",
            Self::State => "state",
            Self::PausedAt => "paused_at",
            Self::EndedAt => "ended_at",
            Self::Version => "version",
        }
    }
}

/// What an operator's decision writes into [`EventField::State`] (`lua/control.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStateMark {
    Paused,
    Ended,
}

impl EventStateMark {
    pub const ALL: [Self; 2] = [Self::Paused, Self::Ended];

    pub const fn value(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Ended => "ended",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mark| mark.value() == value)
    }
}

/// Some fields of one event hash, read by name with one `HMGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHash {
    values: HashMap<EventField, String>,
}

impl EventHash {
    /// The `HMGET` that reads `fields` of the event; [`EventHash::from_reply`] reads its reply.
    pub fn command(keys: &EventKeys, fields: &[EventField]) -> redis::Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&keys.event);
        for field in fields {
            cmd.arg(field.name());
        }
        cmd
    }

    /// The reply of [`EventHash::command`] for the same `fields`; `None` when the event does not
    /// exist (no [`EventField::Stock`], which every event has, among the values read).
    pub fn from_reply(fields: &[EventField], values: Vec<Option<String>>) -> Option<Self> {
        let values: HashMap<EventField, String> =
            fields.iter().zip(values).filter_map(|(field, value)| Some((*field, value?))).collect();
        values.contains_key(&EventField::Stock).then_some(Self { values })
    }

    /// Reads `fields` (which must include [`EventField::Stock`]) of the event; `None` when the
    /// event does not exist.
    pub async fn read(
        conn: &mut impl ConnectionLike,
        keys: &EventKeys,
        fields: &[EventField],
    ) -> RedisResult<Option<Self>> {
        debug_assert!(fields.contains(&EventField::Stock), "existence is told by the stock field");
        let values: Vec<Option<String>> = Self::command(keys, fields).query_async(conn).await?;
        Ok(Self::from_reply(fields, values))
    }

    /// The field as an integer; `None` when absent, empty ('' is "not set") or not a number.
    pub fn int(&self, field: EventField) -> Option<i64> {
        self.values.get(&field).and_then(|v| v.parse().ok())
    }

    /// A counter (never negative); 0 when absent.
    pub fn count(&self, field: EventField) -> u64 {
        self.int(field).unwrap_or(0).max(0) as u64
    }

    /// The field as text; `None` when absent or empty.
    pub fn text(&self, field: EventField) -> Option<&str> {
        self.values.get(&field).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Whether the field is present (even empty).
    pub fn has(&self, field: EventField) -> bool {
        self.values.contains_key(&field)
    }

    /// The operator's decision, if any.
    pub fn state_mark(&self) -> Option<EventStateMark> {
        self.text(EventField::State).and_then(EventStateMark::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_by_name_and_existence_by_stock() {
        let fields = [EventField::Remaining, EventField::Stock, EventField::Starts, EventField::State];
        let hash = EventHash::from_reply(
            &fields,
            vec![Some("7".into()), Some("10".into()), Some(String::new()), Some("paused".into())],
        )
        .unwrap();
        assert_eq!(hash.count(EventField::Remaining), 7);
        assert_eq!(hash.int(EventField::Starts), None, "'' means not set");
        assert_eq!(hash.state_mark(), Some(EventStateMark::Paused));
        assert!(EventHash::from_reply(&fields, vec![Some("7".into()), None, None, None]).is_none());
    }

    #[test]
    fn field_names_are_distinct() {
        let names: std::collections::HashSet<_> = EventField::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), EventField::ALL.len());
    }
}
