//! What the flashsale gateway (`flashsale-api`) and worker (`flashsale-worker`) must agree on.
//!
//! Both processes talk to the same Redis keys through the same Lua scripts; keeping the key
//! layout, the record formats and the script wrappers here means there is exactly one place
//! where a purchase, an order or a stream entry is defined.
//!
//! # Layout
//! - [`domain`]: validated identifiers (`EventId`, `UserId`, `IdempotencyKey`, `OrderId`) and
//!   time helpers. Once a value exists it is valid.
//! - [`keys`]: every Redis key and channel name, built in one place, with one hash tag per
//!   event so that every script is Redis Cluster-safe.
//! - [`schema`]: the Redis schema: every key, hash field, record format, status and stream
//!   field, in one place.
//! - [`reply`]: reading script and command replies by shape.
//! - [`scripts`]: the Lua scripts of `lua/`, loaded with `include_str!`.
//! - [`event`], [`purchase`], [`order`], [`stream`]: one module per step a purchase goes
//!   through, each wrapping its script with typed arguments and outcomes.
//! - [`dead_letter`]: entries the worker could not finalize, and the operator's redrive/fail.
//! - [`sold_out`]: the chunked reads behind the gateway's local sold-out flags.
//! - [`audit`]: the books-balance invariant, used by tests and by `flashsale-worker check`.
//! - [`connection`]: the one multiplexed Redis connection a process shares (one node or a
//!   cluster), the dedicated connections of blocking reads, and what a failed call means.
//! - [`config`], [`telemetry`], [`shutdown`]: the process plumbing both binaries share
//!   (Redis and log settings, logs and metrics, signals).

pub mod audit;
pub mod config;
pub mod connection;
pub mod dead_letter;
pub mod domain;
pub mod event;
pub mod order;
pub mod purchase;
pub mod reply;
pub mod schema;
pub mod scripts;
pub mod shutdown;
pub mod sold_out;
pub mod stream;
pub mod telemetry;

pub use domain::{EventId, IdempotencyKey, InvalidField, OrderId, UserId};
pub use schema::keys::{self, EventKeys};
