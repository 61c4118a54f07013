//! flashsale's HTTP gateway.
//!
//! A purchase is one call of `lua/purchase.lua` on a shared multiplexed Redis connection:
//! the script checks and reserves atomically and enqueues the order on the event's stream,
//! and the gateway answers 202 at once; `flashsale-worker` finalizes orders asynchronously.
//!
//! # Layout
//! Each module imports only the ones listed before it (no import circles):
//! - [`config`]: every setting, validated at start-up.
//! - [`error`]: the one error type, the error policy, and [`error::ProblemCode`], the table
//!   of every problem (status, code, title, headers, metrics outcome); every error is a
//!   problem document.
//! - [`buyer`]: buyer tokens (JWT) verified against the merchant's keys.
//! - [`limit`]: rate limits per buyer and per client address, with bounded memory.
//! - [`metrics`]: the Prometheus series, by matched route.
//! - [`redis_status`], [`sold_out`]: whether Redis may be sold on; local sold-out flags.
//! - [`readiness`]: `/readyz` checked at most once a second, and the cold reads' recent misses.
//! - [`state`]: [`state::AppState`], what every handler shares, and the one way to call Redis.
//! - [`extract`]: request extractors that reject with problems: the JSON body, the admin
//!   token (deny by default), the buyer, the client's rate limit.
//! - [`openapi`]: the document's frame and its problem responses, derived from the table.
//! - `routes/`: one module per resource (events, control, purchases, orders, dead letters,
//!   health).
//! - [`observe`], [`cors`]: the middleware every request goes through.
//! - [`router`]: every route, and the OpenAPI document generated from the same lists.
//! - [`serve`]: the accept loop, HTTP/1.1 with bounded connections (count, header-read
//!   timeout, idle timeout) and the graceful drain.
//! - [`startup`]: [`run`] serves a bound listener until a shutdown future resolves (tests
//!   bind `127.0.0.1:0`), with the background loops.

pub mod buyer;
pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod limit;
pub mod metrics;
pub mod observe;
pub mod openapi;
pub mod readiness;
pub mod redis_status;
pub mod router;
pub mod routes;
pub mod serve;
pub mod sold_out;
pub mod startup;
pub mod state;

pub use startup::run;
