#![allow(unreachable_pub)] // test helpers are `pub` for the sibling modules of this binary

//! The gateway's HTTP contract, against a real private Redis (and a real worker where an
//! order must be confirmed). One test binary; one Redis per test, so tests run in parallel.

mod helpers;
mod tokens;

mod browsers_and_admins;
mod buyer_tokens;
mod edge;
mod events;
mod health;
mod metrics;
mod orders;
mod purchases;
mod rate_limits;
mod sold_out;
mod validation;
