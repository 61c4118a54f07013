#![allow(unreachable_pub)] // helpers are `pub` for the sibling modules of this binary

//! System tests: the real `flashsale-api` and `flashsale-worker` binaries as separate
//! processes against a private `redis-server`, with real signals. Every scenario ends with
//! the books-balance invariant and an exact count of confirmed units.

mod common;

mod cluster;
mod cost;
mod durable;

mod faults;
mod fence;
mod hardening;
mod leaving;
mod ledger;
mod operators;
mod parked;
mod refusals;
mod sale;
mod slowlog;
mod takeover;
