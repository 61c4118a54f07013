//! The Lua side of the schema: a prelude of `local` names generated from this module, put in
//! front of each script of `lua/` when it is loaded ([`crate::scripts`]).
//!
//! A script gets only the names it uses, so the purchase script pays for nothing else, and
//! every name is a literal (`local EV_REMAINING = 'remaining'`): reading a local costs what
//! the literal did. The tests below hold every script to the schema: no script spells a
//! field, status letter, stream field or record pattern itself, and every name of the schema
//! is used by some script, so a new counter or status fails a test until a script knows it.

use super::event_hash::{EventField, EventStateMark};
use super::record::{OrderStatus, lua_patterns};
use super::{INFRA_ERRORS, dead_letter, stream};

/// What a new event hash holds, as Lua expressions over `new_event`'s parameters; `None` for a
/// field a later step writes (which one: [`written_later_by`]).
const fn initial_value(field: EventField) -> Option<&'static str> {
    match field {
        EventField::Stock | EventField::Remaining => Some("stock"),
        EventField::Confirmed | EventField::Accepted => Some("0"),
        EventField::Limit => Some("limit"),
        EventField::Name => Some("name"),
        EventField::Starts => Some("starts"),
        EventField::Ends => Some("ends"),
        EventField::PurgeAt => Some("purge_at"),
        EventField::Created => Some("now"),
        EventField::Version => Some("version"),
        EventField::Purged | EventField::State | EventField::PausedAt | EventField::EndedAt => None,
    }
}

/// The script that writes a field a new event hash does not have.
#[cfg_attr(not(test), allow(dead_code))]
const fn written_later_by(field: EventField) -> Option<&'static str> {
    match field {
        EventField::Purged => Some("purge.lua"),
        EventField::State | EventField::PausedAt | EventField::EndedAt => Some("control.lua"),
        _ => None,
    }
}

/// Every name of the prelude with its definition (a Lua expression), in definition order:
/// the functions come last, after every constant they may use.
fn definitions() -> Vec<(String, String)> {
    let quote = |value: &str| {
        assert!(!value.contains(['\'', '\\', '\n']), "a schema name needs no escaping: {value}");
        format!("'{value}'")
    };
    let mut defs = Vec::new();
    for field in EventField::ALL {
        defs.push((format!("EV_{}", field.name().to_uppercase()), quote(field.name())));
    }
    for mark in EventStateMark::ALL {
        defs.push((format!("STATE_{}", mark.value().to_uppercase()), quote(mark.value())));
    }
    for status in OrderStatus::ALL {
        defs.push((status.as_str().to_uppercase(), quote(status.letter())));
    }
    let names = OrderStatus::ALL.map(|s| format!("{} = {}", s.letter(), quote(s.as_str())));
    defs.push(("STATUS_NAMES".into(), format!("{{{}}}", names.join(", "))));
    for (name, pattern) in lua_patterns() {
        defs.push((name.into(), quote(&pattern)));
    }
    defs.push(("STREAM_ORDER".into(), quote(stream::ORDER)));
    defs.push(("STREAM_SCOPE".into(), quote(stream::SCOPE)));
    for (name, value) in [
        ("DEAD_ENTRY", dead_letter::ENTRY),
        ("DEAD_REASON", dead_letter::REASON),
        ("DEAD_DELIVERIES", dead_letter::DELIVERIES),
        ("DEAD_ORDER", dead_letter::ORDER),
        ("DEAD_PAYLOAD", dead_letter::PAYLOAD),
        ("DEAD_AT", dead_letter::AT),
        ("DEAD_ERROR", dead_letter::ERROR),
    ] {
        defs.push((name.into(), quote(value)));
    }
    let infra: Vec<String> = INFRA_ERRORS.iter().map(|code| quote(code)).collect();
    defs.push(("INFRA_ERRORS".into(), format!("{{{}}}", infra.join(", "))));
    // A new event hash: its configuration, zeroed counters and decision counter (put_event.lua:
    // 1 or the replaced one's plus one; restore_orders.lua: the ledger's).
    let writes: Vec<String> = EventField::ALL
        .into_iter()
        .filter_map(|field| {
            let value = initial_value(field)?;
            Some(format!("EV_{}, {value}", field.name().to_uppercase()))
        })
        .collect();
    defs.push((
        "new_event".into(),
        format!(
            "function(key, stock, limit, name, starts, ends, purge_at, now, version)\n  redis.call('HSET', key, {})\nend",
            writes.join(", ")
        ),
    ));
    defs
}

/// Whether `name` occurs in `text` as a whole Lua identifier.
fn uses(text: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// The prelude a script body needs: the definitions it uses, and those they use in turn.
pub fn prelude_for(body: &str) -> String {
    let defs = definitions();
    let mut needed = vec![false; defs.len()];
    // Functions come last and use only constants, so one pass from the end finds everything.
    let mut scope = body.to_owned();
    for (i, (name, value)) in defs.iter().enumerate().rev() {
        if uses(&scope, name) {
            needed[i] = true;
            scope.push('\n');
            scope.push_str(value);
        }
    }
    let mut prelude = String::from("-- The schema's names (shared/src/schema), put before the script.\n");
    for ((name, value), needed) in defs.iter().zip(needed) {
        if needed {
            prelude.push_str(&format!("local {name} = {value}\n"));
        }
    }
    prelude
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Every script of `lua/`, by file name: its body as written.
    fn scripts() -> BTreeMap<String, String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lua");
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "lua"))
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect()
    }

    /// The code of a script: comments dropped (none of ours has `--` inside a string).
    fn code(body: &str) -> String {
        body.lines().map(|line| line.split("--").next().unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// The quoted literals of some Lua code, except the keys of the tables XINFO replies are
    /// read into (`info['name']`: Redis's words, not ours) and a script's outcome (the first
    /// word it returns: `return 'paused'` answers the caller, it writes nothing).
    fn literals(code: &str) -> Vec<String> {
        let code = code
            .replace("info['", "info[#")
            .replace("return '", "return #")
            .replace("return {'", "return {#");
        let mut found = Vec::new();
        let mut rest = code.as_str();
        while let Some(start) = rest.find(['\'', '"']) {
            let quote = rest[start..].chars().next().unwrap();
            let Some(len) = rest[start + 1..].find(quote) else { break };
            found.push(rest[start + 1..start + 1 + len].to_owned());
            rest = &rest[start + len + 2..];
        }
        found
    }

    #[test]
    fn no_script_spells_a_schema_name_itself() {
        let mut spelled: Vec<String> = EventField::ALL.iter().map(|f| f.name().to_owned()).collect();
        spelled.extend(EventStateMark::ALL.iter().map(|m| m.value().to_owned()));
        spelled.extend(OrderStatus::ALL.iter().map(|s| s.letter().to_owned()));
        spelled.extend(OrderStatus::ALL.iter().map(|s| s.as_str().to_owned()));
        spelled.extend([stream::ORDER, stream::SCOPE].map(str::to_owned));
        spelled.extend(
            [
                dead_letter::ENTRY,
                dead_letter::REASON,
                dead_letter::DELIVERIES,
                dead_letter::PAYLOAD,
                dead_letter::AT,
                dead_letter::ERROR,
            ]
            .map(str::to_owned),
        );
        spelled.extend(INFRA_ERRORS.iter().map(|code| (*code).to_owned()));
        let mut wrong = Vec::new();
        for (file, body) in scripts() {
            for literal in literals(&code(&body)) {
                // A record separator in a literal is a record format or pattern of its own.
                if spelled.contains(&literal) || literal.contains(super::super::record::SEPARATOR) {
                    wrong.push(format!("{file}: '{literal}'"));
                }
            }
        }
        assert!(wrong.is_empty(), "scripts must take these from the prelude (shared/src/schema): {wrong:?}");
    }

    #[test]
    fn every_schema_name_is_used_by_some_script() {
        // Used by a script itself or by a prelude function it calls.
        let preludes: Vec<String> = scripts().values().map(|body| prelude_for(&code(body))).collect();
        let unused: Vec<String> = definitions()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !preludes.iter().any(|prelude| prelude.contains(&format!("local {name} = "))))
            .collect();
        assert!(unused.is_empty(), "no script uses {unused:?}: a field or status no script maintains");
    }

    #[test]
    fn every_field_is_written_when_the_event_is_made_or_by_its_script() {
        let scripts = scripts();
        for field in EventField::ALL {
            let lua = format!("EV_{}", field.name().to_uppercase());
            match (initial_value(field), written_later_by(field)) {
                (Some(_), None) => {}
                (None, Some(file)) => assert!(
                    uses(&code(&scripts[file]), &lua),
                    "{file} writes {}, but never names {lua}",
                    field.name()
                ),
                _ => panic!("{field:?}: say what a new event holds, or which script writes it later"),
            }
        }
        for file in ["put_event.lua", "restore_orders.lua"] {
            assert!(uses(&code(&scripts[file]), "new_event"), "{file} makes events with new_event");
        }
    }

    #[test]
    fn a_prelude_holds_only_what_its_script_uses() {
        let prelude = prelude_for("local x = EV_REMAINING\nnew_event(KEYS[1], 1, 1, '', '', '', '', 0, 1)");
        assert!(prelude.contains("local EV_REMAINING = 'remaining'\n"));
        assert!(prelude.contains("local EV_CREATED = 'created'\n"), "new_event uses it: {prelude}");
        assert!(!prelude.contains("EV_PURGED"), "{prelude}");
        assert!(!prelude.contains("INFRA_ERRORS"), "{prelude}");
        let new_event = prelude.find("local new_event").unwrap();
        assert!(prelude.find("local EV_CREATED").unwrap() < new_event, "constants before functions");
    }
}
