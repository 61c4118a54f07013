//! Local sold-out flags: once an event is sold out, most of a flash sale's traffic is buyers
//! who will be told `sold_out`. A gateway answers them from memory, without a Redis round
//! trip, and correctness comes first:
//!
//! - A flag is set only from Redis itself: a snapshot taken when the script reports
//!   `remaining == 0`, holding the event's window, limit, accepted-order count and every
//!   idempotency scope (at most one per accepted order). The scopes are read in chunks
//!   (`HSCAN`), never in one blocking command, and the counters are read before and after:
//!   only unchanged counters make the snapshot complete (see `flashsale_shared::sold_out`).
//! - Only requests that cannot be replays are answered locally: a request whose scope is in
//!   the snapshot goes to the script and gets its order back, in every state of the event.
//!   Requests the script would answer differently (quantity over the limit, a window edge
//!   within a second) also go to the script.
//! - Units come back only when a worker fails an order; `finalize.lua` publishes the event id
//!   on `fs:stock-returned` in the same atomic step, and every gateway drops its flag on that
//!   message. As a backstop, each flag is re-validated (remaining still 0, no new order) every
//!   `SOLD_OUT_REFRESH_MS`, and a flag that was not validated within
//!   [`SoldOutBoard::max_age`] is ignored; a gateway that cannot reach Redis therefore stops
//!   using its flags within that bound, and never answers `sold_out` for free units for longer.
//! - A flag never accepts anything: purchases always go through the script.
//! - Bounded cost: an event with more scopes than `SOLD_OUT_MAX_SCOPES` gets no flag; the size
//!   check (`HLEN`) runs first, and its verdict is remembered (until units return, or for
//!   [`board::VERDICT_TTL_MS`]) instead of being repeated on every sold-out answer. A flag
//!   retires [`END_MARGIN_MS`] after its event's end, or after [`IDLE_RETIRE_MS`] without a
//!   purchase request, and is no longer re-validated.
//!
//! # Layout
//! - this module: a [`Flag`] and the pure decisions on it, [`answers`] and [`retire`], with
//!   the time passed in ([`Now`]), unit-tested without Redis or a clock;
//! - [`board`]: the Redis side, [`SoldOutBoard`]: its own connection, the snapshot, the
//!   refresh loop and the pub/sub listener, over the reads of `flashsale_shared::sold_out`.

pub mod board;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

pub use board::SoldOutBoard;
use flashsale_shared::EventKeys;
use flashsale_shared::sold_out::{Counters, Rules};

/// A window edge closer than this (gateway clock against Redis clock) sends the request to
/// the script, which decides with Redis time.
pub const CLOCK_MARGIN_MS: i64 = 1_000;

/// A flag retires this long after its event's `ends_at`. From `ends_at - CLOCK_MARGIN_MS` on
/// it answers nothing anyway (the script says `sale_not_active`); the margin covers a gateway
/// clock that runs behind Redis's.
pub const END_MARGIN_MS: i64 = 60_000;

/// A flag retires after this long without a purchase request for its event: the sale is
/// over in all but name, and a late buyer costs one script call and, if it is still sold
/// out, a new snapshot.
pub const IDLE_RETIRE_MS: u64 = 5 * 60_000;

/// The moment a decision is made: wall-clock Unix ms for the sale window (set in wall-clock
/// time), monotonic ms (since the board's epoch) for freshness and idleness, which must not
/// jump with the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall_ms: i64,
    pub mono_ms: u64,
}

/// What a gateway knows about one sold-out event.
#[derive(Debug)]
pub struct Flag {
    keys: EventKeys,
    /// Every idempotency scope the event had when it sold out: the requests that may be
    /// replays.
    scopes: HashSet<String>,
    /// `remaining` (0) and `accepted` as the snapshot saw them; the flag holds while Redis
    /// still says the same.
    counters: Counters,
    rules: Rules,
    /// How long a validation is trusted.
    max_age_ms: u64,
    /// When Redis last confirmed the flag (monotonic ms).
    validated_ms: AtomicU64,
    /// When a purchase request for the event last consulted the flag (monotonic ms).
    last_hit_ms: AtomicU64,
}

impl Flag {
    /// A flag from a complete snapshot, validated and hit at `validated_ms`.
    pub fn new(
        keys: EventKeys,
        counters: Counters,
        rules: Rules,
        scopes: HashSet<String>,
        max_age_ms: u64,
        validated_ms: u64,
    ) -> Self {
        Self {
            keys,
            scopes,
            counters,
            rules,
            max_age_ms,
            validated_ms: AtomicU64::new(validated_ms),
            last_hit_ms: AtomicU64::new(validated_ms),
        }
    }

    pub fn keys(&self) -> &EventKeys {
        &self.keys
    }

    pub fn scopes(&self) -> usize {
        self.scopes.len()
    }

    /// Whether the counters Redis reports now still make this flag true.
    pub fn still_holds(&self, now: Option<Counters>) -> bool {
        now == Some(Counters { remaining: 0, accepted: self.counters.accepted })
    }

    /// Redis confirmed the flag with a read sent at `mono_ms`.
    pub fn validated(&self, mono_ms: u64) {
        self.validated_ms.fetch_max(mono_ms, Ordering::Release);
    }

    /// A purchase request for the event consulted the flag. On the hot path: one relaxed
    /// load, and a store at most once per millisecond, so cores do not fight over the line.
    pub fn hit(&self, mono_ms: u64) {
        if self.last_hit_ms.load(Ordering::Relaxed) != mono_ms {
            self.last_hit_ms.store(mono_ms, Ordering::Relaxed);
        }
    }
}

/// Whether a purchase of `quantity` in `scope` can be answered `sold_out` from `flag` alone.
pub fn answers(flag: &Flag, scope: &str, quantity: u32, now: Now) -> bool {
    let fresh = now.mono_ms.saturating_sub(flag.validated_ms.load(Ordering::Acquire)) <= flag.max_age_ms;
    if !fresh || quantity > flag.rules.per_user_limit || flag.scopes.contains(scope) {
        return false;
    }
    // Near a window edge the script decides, with Redis time.
    let Rules { starts_ms, ends_ms, .. } = flag.rules;
    starts_ms.is_none_or(|s| now.wall_ms >= s.saturating_add(CLOCK_MARGIN_MS))
        && ends_ms.is_none_or(|e| now.wall_ms < e.saturating_sub(CLOCK_MARGIN_MS))
}

/// Whether `flag` has done its work: its event ended (plus [`END_MARGIN_MS`]) or nobody asked
/// for it in [`IDLE_RETIRE_MS`]. A retired flag is dropped and no longer re-validated.
pub fn retire(flag: &Flag, now: Now) -> bool {
    let ended = flag.rules.ends_ms.is_some_and(|e| now.wall_ms >= e.saturating_add(END_MARGIN_MS));
    let idle = now.mono_ms.saturating_sub(flag.last_hit_ms.load(Ordering::Relaxed)) >= IDLE_RETIRE_MS;
    ended || idle
}

#[cfg(test)]
mod tests {
    use flashsale_shared::EventId;

    use super::*;

    /// Wall-clock times of a sale window, far from any real clock: nothing here reads one.
    const STARTS: i64 = 1_000_000_000_000;
    const ENDS: i64 = STARTS + 3_600_000;
    const MAX_AGE: u64 = 100;

    /// A flag validated at monotonic ms 10,000, buyer `held` holding an order, limit 2.
    fn flag(starts_ms: Option<i64>, ends_ms: Option<i64>) -> Flag {
        let keys = EventKeys::new(&EventId::parse("drop").unwrap());
        let rules = Rules { per_user_limit: 2, starts_ms, ends_ms };
        let scopes = HashSet::from(["held".to_owned()]);
        Flag::new(keys, Counters { remaining: 0, accepted: 1 }, rules, scopes, MAX_AGE, 10_000)
    }

    fn at(wall_ms: i64, mono_ms: u64) -> Now {
        Now { wall_ms, mono_ms }
    }

    const MID: i64 = STARTS + 1_800_000;

    #[test]
    fn a_fresh_flag_answers_and_a_stale_one_does_not() {
        let flag = flag(Some(STARTS), Some(ENDS));
        assert!(answers(&flag, "new", 1, at(MID, 10_000)));
        assert!(answers(&flag, "new", 1, at(MID, 10_000 + MAX_AGE)));
        assert!(!answers(&flag, "new", 1, at(MID, 10_000 + MAX_AGE + 1)));
        flag.validated(10_050);
        assert!(answers(&flag, "new", 1, at(MID, 10_000 + MAX_AGE + 1)));
        // A late validation reply never moves the time back.
        flag.validated(9_000);
        assert!(answers(&flag, "new", 1, at(MID, 10_150)));
    }

    #[test]
    fn window_edges_within_the_clock_margin_go_to_the_script() {
        let flag = flag(Some(STARTS), Some(ENDS));
        let answers_at = |wall_ms| answers(&flag, "new", 1, at(wall_ms, 10_000));
        assert!(!answers_at(STARTS));
        assert!(!answers_at(STARTS + CLOCK_MARGIN_MS - 1));
        assert!(answers_at(STARTS + CLOCK_MARGIN_MS));
        assert!(answers_at(ENDS - CLOCK_MARGIN_MS - 1));
        assert!(!answers_at(ENDS - CLOCK_MARGIN_MS));
        assert!(!answers_at(ENDS + 1));
        // No window: no edge.
        let open = self::flag(None, None);
        assert!(answers(&open, "new", 1, at(i64::MIN, 10_000)));
        assert!(answers(&open, "new", 1, at(i64::MAX, 10_000)));
    }

    #[test]
    fn possible_replays_and_quantities_over_the_limit_go_to_the_script() {
        let flag = flag(None, None);
        assert!(!answers(&flag, "held", 1, at(MID, 10_000)), "a replay gets its order back");
        assert!(answers(&flag, "new", 2, at(MID, 10_000)));
        assert!(!answers(&flag, "new", 3, at(MID, 10_000)), "the script answers 422");
    }

    #[test]
    fn a_flag_retires_after_its_event_ended() {
        let flag = flag(Some(STARTS), Some(ENDS));
        flag.hit(10_000);
        assert!(!retire(&flag, at(ENDS, 10_000)));
        assert!(!retire(&flag, at(ENDS + END_MARGIN_MS - 1, 10_000)));
        assert!(retire(&flag, at(ENDS + END_MARGIN_MS, 10_000)));
        assert!(!retire(&self::flag(None, None), at(i64::MAX, 10_000)), "no end, no retirement by time");
    }

    #[test]
    fn a_flag_retires_after_a_while_without_a_hit() {
        let flag = flag(None, None);
        assert!(!retire(&flag, at(MID, 10_000 + IDLE_RETIRE_MS - 1)));
        assert!(retire(&flag, at(MID, 10_000 + IDLE_RETIRE_MS)));
        flag.hit(10_000 + IDLE_RETIRE_MS);
        assert!(!retire(&flag, at(MID, 10_000 + 2 * IDLE_RETIRE_MS - 1)));
        assert!(retire(&flag, at(MID, 10_000 + 2 * IDLE_RETIRE_MS)));
    }

    #[test]
    fn a_flag_holds_while_redis_reports_no_stock_and_no_new_order() {
        let flag = flag(None, None);
        assert!(flag.still_holds(Some(Counters { remaining: 0, accepted: 1 })));
        assert!(!flag.still_holds(Some(Counters { remaining: 1, accepted: 1 })), "units returned");
        assert!(!flag.still_holds(Some(Counters { remaining: 0, accepted: 2 })), "returned and re-sold");
        assert!(!flag.still_holds(None), "the event is gone");
    }
}
