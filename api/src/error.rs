//! The gateway's one error type and its error policy.
//!
//! Every error a client can see is an RFC 9457 problem (`application/problem+json`) with
//! `type`, `title`, `status`, `detail` and a machine-readable `code`. Errors about the request
//! (validation, business rules) pass through as they are. A Redis failure the client cannot
//! fix (down, slow, out of memory, read-only, busy, loading) is a 503 `unavailable` with
//! `Retry-After`, never a 500, and its detail says which. `outcome_unknown` tells the truth:
//! `true` whenever a mutating call may have reached Redis (a deadline that passed after the
//! script may have been sent, a connection lost mid-call): a retry with the same user and key
//! resolves it (the scripts make that retry a replay). Only a failure known to come before the
//! command ran (a refused connection, a server that refused it) says nothing changed.
//! Anything else is a bug: logged with its context, answered with an opaque 500.

use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_shared::connection::Fault;
use flashsale_shared::{InvalidField, OrderId};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid fields: {0:?}")]
    InvalidFields(Vec<InvalidField>),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid header: {0}")]
    InvalidHeader(InvalidField),
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("buyer token refused: {0:?}")]
    InvalidToken(TokenError),
    #[error("user_id is not the token's subject")]
    UserMismatch,
    #[error("rate limited ({limit:?})")]
    RateLimited { limit: Limit, retry_after_secs: u64 },
    #[error("event not found")]
    EventNotFound,
    #[error("order not found")]
    OrderNotFound,
    #[error("event already has sales")]
    EventConflict,
    #[error("sold out")]
    SoldOut,
    #[error("per-user limit exceeded")]
    LimitExceeded { held: u32, limit: u32 },
    #[error("sale not active")]
    SaleNotActive,
    #[error("sale paused")]
    SalePaused,
    #[error("the sale is not paused")]
    NotPaused,
    #[error("the dead letter is not pending a decision")]
    DeadLetterNotFound,
    #[error("the order of this dead letter is not pending")]
    NotPending { status: String },
    #[error("the ledger is not configured")]
    NoLedger,
    #[error("idempotency key reused with a different payload")]
    IdempotencyKeyMismatch { order_id: OrderId },
    #[error("Redis unavailable ({why:?}): {cause}")]
    Unavailable { why: Unavailable, outcome_unknown: bool, cause: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Every problem the API answers with, one per machine-readable `code`. [`ProblemCode::spec`]
/// is the one table they are described in: the problem documents, the `outcome` of the
/// purchase metrics, the OpenAPI responses and `docs/problems.md` are all derived from it (a
/// unit test holds the markdown to it), so a new problem is one variant and one row.
/// Attached to every problem response, so middleware can tell outcomes apart without parsing
/// bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemCode {
    InvalidFields,
    MalformedJson,
    BadRequest,
    InvalidHeader,
    RequestTimeout,
    UnsupportedMediaType,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    UserMismatch,
    RateLimited,
    EventNotFound,
    OrderNotFound,
    EventConflict,
    SoldOut,
    LimitExceeded,
    SaleNotActive,
    SalePaused,
    NotPaused,
    DeadLetterNotFound,
    OrderNotPending,
    LedgerNotConfigured,
    IdempotencyKeyMismatch,
    Unavailable,
    Internal,
}

/// One row of the problem table.
#[derive(Debug, Clone, Copy)]
pub struct ProblemSpec {
    pub status: StatusCode,
    /// The `code` member (and `/problems/<code>`): stable across versions.
    pub code: &'static str,
    /// The `title` member.
    pub title: &'static str,
    /// When a client gets it: for `docs/problems.md` and the OpenAPI responses.
    pub when: &'static str,
    /// The `outcome` label of `flashsale_purchases_total` a purchase answered with it counts
    /// under: the sale's own refusals by name, other client errors `rejected`, the server's
    /// `error`.
    pub outcome: &'static str,
    /// The header it carries besides its content type.
    pub header: Option<ProblemHeader>,
}

/// A header a problem carries; its value depends on the occurrence (see
/// `ApiError::extra_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemHeader {
    /// The challenge of a 401.
    WwwAuthenticate,
    /// Seconds to wait before retrying a 429 or a 503.
    RetryAfter,
}

impl ProblemHeader {
    pub fn name(self) -> header::HeaderName {
        match self {
            Self::WwwAuthenticate => header::WWW_AUTHENTICATE,
            Self::RetryAfter => header::RETRY_AFTER,
        }
    }

    /// As the OpenAPI document spells it.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::WwwAuthenticate => "WWW-Authenticate",
            Self::RetryAfter => "Retry-After",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::WwwAuthenticate => {
                "`Bearer` (admin routes), `Bearer error=\"invalid_token\"` (buyer routes)"
            }
            Self::RetryAfter => "Seconds to wait before retrying",
        }
    }
}

impl ProblemCode {
    /// Every code, in the order of the table.
    pub const ALL: [Self; 26] = {
        use ProblemCode::*;
        [
            InvalidFields,
            MalformedJson,
            BadRequest,
            InvalidHeader,
            RequestTimeout,
            UnsupportedMediaType,
            PayloadTooLarge,
            NotFound,
            MethodNotAllowed,
            Unauthorized,
            UserMismatch,
            RateLimited,
            EventNotFound,
            OrderNotFound,
            EventConflict,
            SoldOut,
            LimitExceeded,
            SaleNotActive,
            SalePaused,
            NotPaused,
            DeadLetterNotFound,
            OrderNotPending,
            LedgerNotConfigured,
            IdempotencyKeyMismatch,
            Unavailable,
            Internal,
        ]
    };

    /// The table: status, code, title, when, purchase-metrics outcome and header of every
    /// problem.
    pub const fn spec(self) -> ProblemSpec {
        use ProblemHeader::{RetryAfter, WwwAuthenticate};
        use StatusCode as S;
        const REJECTED: &str = "rejected";
        const ERROR: &str = "error";
        let (status, code, title, when, outcome, header) = match self {
            Self::InvalidFields => (
                S::UNPROCESSABLE_ENTITY,
                "invalid_fields",
                "Invalid fields",
                "A field of the body, the path or the query is invalid (each is listed in \
                 `invalid_params`): an event id (1-64) or user id (1-128) outside \
                 `[A-Za-z0-9._:-]`, a quantity outside 1..=per_user_limit, an unknown or \
                 mistyped field.",
                REJECTED,
                None,
            ),
            Self::MalformedJson => {
                (S::BAD_REQUEST, "malformed_json", "Malformed JSON", "The body is not JSON.", REJECTED, None)
            }
            Self::BadRequest => (
                S::BAD_REQUEST,
                "bad_request",
                "Bad request",
                "The request is malformed otherwise: a query string that does not parse (a \
                 repeated or non-numeric `limit`, ...).",
                REJECTED,
                None,
            ),
            Self::InvalidHeader => (
                S::BAD_REQUEST,
                "invalid_header",
                "Invalid header",
                "A malformed `Idempotency-Key`, or one sent twice (see `invalid_params`).",
                REJECTED,
                None,
            ),
            Self::RequestTimeout => (
                S::REQUEST_TIMEOUT,
                "request_timeout",
                "Request timeout",
                "The body did not arrive within `BODY_TIMEOUT_MS`; nothing was changed.",
                REJECTED,
                None,
            ),
            Self::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "The body is not `application/json`.",
                REJECTED,
                None,
            ),
            Self::PayloadTooLarge => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                "The body is over 64 KiB.",
                REJECTED,
                None,
            ),
            Self::NotFound => {
                (S::NOT_FOUND, "not_found", "Not found", "No route matches the path.", REJECTED, None)
            }
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                "The route does not take this method (see `Allow`).",
                REJECTED,
                None,
            ),
            Self::Unauthorized => (
                S::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "An admin route without the right `Authorization: Bearer` token (always, when \
                 neither `ADMIN_TOKEN` nor `ADMIN_TOKENS` is set), or a buyer route without a \
                 valid buyer token (with `BUYER_AUTH=jwt`).",
                REJECTED,
                Some(WwwAuthenticate),
            ),
            Self::UserMismatch => (
                S::FORBIDDEN,
                "user_mismatch",
                "User mismatch",
                "A purchase whose `user_id` is not the buyer token's `sub`.",
                REJECTED,
                None,
            ),
            Self::RateLimited => (
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                "Too many requests from this buyer or this client address (replays count too); \
                 nothing was changed.",
                REJECTED,
                Some(RetryAfter),
            ),
            Self::EventNotFound => {
                (S::NOT_FOUND, "event_not_found", "Event not found", "No event has this id.", REJECTED, None)
            }
            Self::OrderNotFound => (
                S::NOT_FOUND,
                "order_not_found",
                "Order not found",
                "The event has no order with this id (or, with buyer tokens, not one of this \
                 buyer's).",
                REJECTED,
                None,
            ),
            Self::EventConflict => (
                S::CONFLICT,
                "event_conflict",
                "Event conflict",
                "The event already has sales: its configuration can no longer change.",
                REJECTED,
                None,
            ),
            Self::SoldOut => (
                S::CONFLICT,
                "sold_out",
                "Sold out",
                "Not enough stock is left for this quantity.",
                "sold_out",
                None,
            ),
            Self::LimitExceeded => (
                S::CONFLICT,
                "limit_exceeded",
                "Per-user limit exceeded",
                "The buyer's orders of this event would exceed its `per_user_limit`.",
                "limit_exceeded",
                None,
            ),
            Self::SaleNotActive => (
                S::CONFLICT,
                "sale_not_active",
                "Sale not active",
                "The event is not on sale now: before `starts_at`, after `ends_at`, or ended by \
                 an operator.",
                "sale_not_active",
                None,
            ),
            Self::SalePaused => (
                S::CONFLICT,
                "sale_paused",
                "Sale paused",
                "An operator paused the sale; it may resume.",
                "sale_paused",
                None,
            ),
            Self::NotPaused => (
                S::CONFLICT,
                "not_paused",
                "Sale not paused",
                "Only a paused sale can be resumed.",
                REJECTED,
                None,
            ),
            Self::DeadLetterNotFound => (
                S::NOT_FOUND,
                "dead_letter_not_found",
                "Dead letter not found",
                "The event has no such dead letter (it may have been resolved).",
                REJECTED,
                None,
            ),
            Self::OrderNotPending => (
                S::CONFLICT,
                "order_not_pending",
                "Order not pending",
                "The dead letter's order is no longer pending: there is nothing to redrive.",
                REJECTED,
                None,
            ),
            Self::LedgerNotConfigured => (
                S::NOT_IMPLEMENTED,
                "ledger_not_configured",
                "Ledger not configured",
                "A ledger read on a gateway without `DATABASE_URL`.",
                REJECTED,
                None,
            ),
            Self::IdempotencyKeyMismatch => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                "Idempotency key mismatch",
                "The idempotency scope was used for another order with a different payload \
                 (that order is `order_id`); use a new `Idempotency-Key`.",
                REJECTED,
                None,
            ),
            Self::Unavailable => (
                S::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "Redis (or the ledger) cannot serve the request, and `detail` says why: no \
                 answer in time, full, a read-only replica, down, busy, being reconciled, or an \
                 eviction policy under which the gateway refuses to sell. Nothing changed unless \
                 `outcome_unknown` is true; a retry of the same request is safe either way.",
                ERROR,
                Some(RetryAfter),
            ),
            Self::Internal => (
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                "A bug; logged with its context and the request id on the server.",
                ERROR,
                None,
            ),
        };
        ProblemSpec { status, code, title, when, outcome, header }
    }
}

/// Why Redis could not serve a request; each has its own problem detail, so a client (and
/// an operator reading the log) can tell a slow Redis from a full one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No answer within `REDIS_TIMEOUT_MS` (or the request's deadline).
    Timeout,
    /// Redis is out of memory (maxmemory under `noeviction`): it refused the write.
    OutOfMemory,
    /// Redis is a read-only replica (a failover); the gateway reconnects.
    ReadOnly,
    /// The connection was refused: Redis is down or unreachable.
    Refused,
    /// The connection broke while the command was out.
    ConnectionLost,
    /// Redis is loading, busy or otherwise refusing commands for now.
    Busy,
    /// Redis's `maxmemory-policy` could evict idempotency entries: the gateway refuses to sell.
    EvictionPolicy(String),
    /// The ledger (PostgreSQL), asked about an event that left Redis, did not answer.
    Ledger,
    /// Redis restarted (or failed over) and is being reconciled with the ledger: no sale
    /// until every order it may have forgotten is back.
    Reconciling,
}

impl Unavailable {
    fn detail(&self) -> String {
        match self {
            Self::Timeout => "Redis did not answer in time.".into(),
            Self::OutOfMemory => {
                "Redis is full (maxmemory reached under noeviction) and refuses writes.".into()
            }
            Self::ReadOnly => "Redis is a read-only replica (a failover is under way); reconnecting.".into(),
            Self::Refused => "Redis refused the connection (down or unreachable).".into(),
            Self::ConnectionLost => "The connection to Redis broke during the call.".into(),
            Self::Busy => "Redis is loading or busy and refuses commands for now.".into(),
            Self::Ledger => "The ledger did not answer; this event is only there now.".into(),
            Self::Reconciling => "Redis restarted and is being reconciled with the ledger; sales resume \
                                  once every recorded order is back."
                .into(),
            Self::EvictionPolicy(policy) => format!(
                "Redis's maxmemory-policy is {policy}, which could evict idempotency entries and \
                 let a retry buy twice: sales are refused until it is noeviction or volatile-*."
            ),
        }
    }
}

/// What a Redis call does to the data, which decides what its failure means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Reads, or writes nothing the request asked for (the script cache, the readiness
    /// probe's key): when it fails, the request changed nothing.
    Read,
    /// May write what the request asked for (a purchase, an event, a decision): when it fails
    /// after it may have reached Redis, the request's outcome is unknown.
    Write,
}

/// Why a buyer token was refused. The detail tells the client what to fix; it never repeats
/// the token or its claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    /// No configured key has this algorithm (`none` included), or this `kid`.
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// `exp` or `sub` (or `iss` / `aud` when required) is absent.
    MissingClaim,
    /// `sub` is not a valid user id.
    Subject,
}

impl TokenError {
    pub fn detail(self) -> &'static str {
        match self {
            Self::Missing => "no bearer token was sent.",
            Self::Malformed => {
                "the token is not a well-formed JWT of an accepted algorithm (alg: none is none)."
            }
            Self::UnknownKey => "no configured key has the token's algorithm and key id.",
            Self::Signature => "the signature does not verify.",
            Self::Expired => "the token has expired.",
            Self::NotYetValid => "the token is not valid yet (nbf).",
            Self::Issuer => "the token's issuer (iss) is not the one configured.",
            Self::Audience => "the token's audience (aud) is not the one configured.",
            Self::MissingClaim => {
                "the token lacks a required claim (exp, sub, and iss or aud where configured)."
            }
            Self::Subject => "the token's sub is not a valid user id (1-128 characters of [A-Za-z0-9._:-]).",
        }
    }
}

/// Which rate limit refused a request (see [`crate::limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Buyer,
    Client,
}

impl Limit {
    /// The `limit` label of the rate-limit metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Buyer => "buyer",
            Self::Client => "client",
        }
    }

    /// For the problem's detail.
    pub fn whose(self) -> &'static str {
        match self {
            Self::Buyer => "for this buyer",
            Self::Client => "from this client address",
        }
    }
}

impl ApiError {
    pub fn invalid(field: InvalidField) -> Self {
        Self::InvalidFields(vec![field])
    }

    /// A failed Redis call. A [`Mutation::Write`] may have changed state before the failure
    /// was seen (a purchase): its outcome is unknown unless the failure is known to come
    /// before the command ran (refused connection, a server that refused it).
    pub fn redis(error: redis::RedisError, mutation: Mutation) -> Self {
        let why = match Fault::of(&error) {
            Fault::Timeout => Unavailable::Timeout,
            Fault::OutOfMemory => Unavailable::OutOfMemory,
            Fault::ReadOnly => Unavailable::ReadOnly,
            Fault::Refused => Unavailable::Refused,
            Fault::ConnectionLost => Unavailable::ConnectionLost,
            Fault::Unavailable => Unavailable::Busy,
            Fault::Fenced => Unavailable::Reconciling,
            Fault::Other => return Self::Internal(format!("Redis reply not understood: {error}")),
        };
        let outcome_unknown = mutation == Mutation::Write && Fault::of(&error).outcome_unknown();
        Self::Unavailable { why, outcome_unknown, cause: error.to_string() }
    }

    /// A call whose deadline passed: a [`Mutation::Write`] may have reached Redis.
    pub fn timeout(mutation: Mutation) -> Self {
        Self::Unavailable {
            why: Unavailable::Timeout,
            outcome_unknown: mutation == Mutation::Write,
            cause: "deadline exceeded".into(),
        }
    }

    /// The row of [`ProblemCode`]'s table this error answers with.
    pub fn problem_code(&self) -> ProblemCode {
        use ProblemCode as P;
        match self {
            Self::InvalidFields(_) => P::InvalidFields,
            Self::MalformedJson(_) => P::MalformedJson,
            Self::BadRequest(_) => P::BadRequest,
            Self::InvalidHeader(_) => P::InvalidHeader,
            Self::RequestTimeout => P::RequestTimeout,
            Self::UnsupportedMediaType => P::UnsupportedMediaType,
            Self::PayloadTooLarge => P::PayloadTooLarge,
            Self::RouteNotFound => P::NotFound,
            Self::MethodNotAllowed => P::MethodNotAllowed,
            // One code for both: a client fixes either by sending the right token.
            Self::Unauthorized | Self::InvalidToken(_) => P::Unauthorized,
            Self::UserMismatch => P::UserMismatch,
            Self::RateLimited { .. } => P::RateLimited,
            Self::EventNotFound => P::EventNotFound,
            Self::OrderNotFound => P::OrderNotFound,
            Self::EventConflict => P::EventConflict,
            Self::SoldOut => P::SoldOut,
            Self::LimitExceeded { .. } => P::LimitExceeded,
            Self::SaleNotActive => P::SaleNotActive,
            Self::SalePaused => P::SalePaused,
            Self::NotPaused => P::NotPaused,
            Self::DeadLetterNotFound => P::DeadLetterNotFound,
            Self::NotPending { .. } => P::OrderNotPending,
            Self::NoLedger => P::LedgerNotConfigured,
            Self::IdempotencyKeyMismatch { .. } => P::IdempotencyKeyMismatch,
            Self::Unavailable { .. } => P::Unavailable,
            Self::Internal(_) => P::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.problem_code().spec().status
    }

    /// The machine-readable `code` member.
    pub fn code(&self) -> &'static str {
        self.problem_code().spec().code
    }

    fn problem(&self) -> Problem {
        let ProblemSpec { status, code, title, .. } = self.problem_code().spec();
        Problem {
            type_uri: format!("/problems/{code}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
            code,
            invalid_params: match self {
                Self::InvalidFields(fields) => Some(
                    fields.iter().map(|f| InvalidParam { name: f.field, reason: f.reason.clone() }).collect(),
                ),
                Self::InvalidHeader(f) => {
                    Some(vec![InvalidParam { name: f.field, reason: f.reason.clone() }])
                }
                _ => None,
            },
            order_id: match self {
                Self::IdempotencyKeyMismatch { order_id } => Some(order_id.to_string()),
                _ => None,
            },
            outcome_unknown: match self {
                Self::Unavailable { outcome_unknown, .. } => Some(*outcome_unknown),
                _ => None,
            },
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::InvalidFields(fields) => {
                fields.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            }
            Self::MalformedJson(why) => format!("The body is not valid JSON: {why}"),
            Self::BadRequest(why) => why.clone(),
            Self::InvalidHeader(field) => field.to_string(),
            Self::RequestTimeout => "The request body did not arrive in time; nothing was changed.".into(),
            Self::UnsupportedMediaType => "Send the body as `Content-Type: application/json`.".into(),
            Self::PayloadTooLarge => format!("The body may be at most {} bytes.", crate::config::BODY_LIMIT),
            Self::RouteNotFound => "No route matches this path.".into(),
            Self::MethodNotAllowed => "This route does not accept this method; see the Allow header.".into(),
            Self::Unauthorized => "Admin routes need `Authorization: Bearer <ADMIN_TOKEN>`.".into(),
            Self::InvalidToken(why) => {
                format!(
                    "Buyer routes need `Authorization: Bearer <token>` with a valid token: {}",
                    why.detail()
                )
            }
            Self::UserMismatch => {
                "user_id must be the buyer the token names (its sub), or be left out.".into()
            }
            Self::RateLimited { limit, retry_after_secs } => format!(
                "Too many requests {}; retry in {retry_after_secs} s (Retry-After). Nothing was changed.",
                limit.whose()
            ),
            Self::EventNotFound => "No event has this id.".into(),
            Self::OrderNotFound => "This event has no order with this id.".into(),
            Self::EventConflict => {
                "The event already has sales; its configuration can no longer change.".into()
            }
            Self::SoldOut => "Not enough stock is left for this quantity.".into(),
            Self::LimitExceeded { held, limit } => {
                format!("This user already holds {held} of at most {limit} units for this event.")
            }
            Self::SaleNotActive => {
                "The event is not on sale now (before starts_at, after ends_at, or ended by an operator)."
                    .into()
            }
            Self::SalePaused => "An operator paused this sale; it may resume. Retry later.".into(),
            Self::NotPaused => "Only a paused sale can be resumed.".into(),
            Self::DeadLetterNotFound => {
                "This event has no such dead letter (it may have been resolved).".into()
            }
            Self::NotPending { status } => {
                format!("The order is {status}, not pending: there is nothing to redrive.")
            }
            Self::NoLedger => "This gateway has no DATABASE_URL: the ledger cannot be read here.".into(),
            Self::IdempotencyKeyMismatch { order_id } => format!(
                "This idempotency scope was used for order {order_id} with a different payload; \
                 use a new Idempotency-Key for a different purchase."
            ),
            Self::Unavailable { why, outcome_unknown: true, .. } => format!(
                "{} The outcome of this request is unknown: retry the same request (same user_id, \
                 same Idempotency-Key); if it was placed you get the order back, otherwise it is \
                 placed now.",
                why.detail()
            ),
            Self::Unavailable { why, outcome_unknown: false, .. } => {
                format!("{} Nothing was changed; retry shortly.", why.detail())
            }
            Self::Internal(_) => "An internal error occurred; it has been logged.".into(),
        }
    }
}

/// An RFC 9457 problem document: every error response of the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the problem type: `/problems/<code>`.
    #[serde(rename = "type")]
    #[schema(example = "/problems/sold_out")]
    type_uri: String,
    /// A short, human-readable summary of the problem type.
    #[schema(value_type = String, example = "Sold out")]
    title: &'static str,
    /// The HTTP status code.
    #[schema(example = 409)]
    status: u16,
    /// What happened in this occurrence, and what the client can do.
    detail: String,
    /// Machine-readable problem code, stable across versions (see `docs/problems.md`).
    #[schema(value_type = String, example = "sold_out")]
    code: &'static str,
    /// For `invalid_fields` and `invalid_header`: each offending field and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid_params: Option<Vec<InvalidParam>>,
    /// For `idempotency_key_mismatch`: the order this scope already names.
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<String>,
    /// For `unavailable`: whether the request may have taken effect (retry it as is).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_unknown: Option<bool>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvalidParam {
    /// The field (or header) name.
    #[schema(value_type = String)]
    name: &'static str,
    /// Why it was refused.
    reason: String,
}

/// What went wrong on the server side (Redis, or a bug), attached to 5xx responses so that
/// the request's log line can say it next to the request id.
#[derive(Debug, Clone)]
pub struct ServerFault(pub String);

impl ApiError {
    /// The header the problem's table row names (the challenge of a 401, when to retry a 429
    /// or a 503), with this error's value.
    fn extra_header(&self) -> Option<(header::HeaderName, HeaderValue)> {
        let header = self.problem_code().spec().header?;
        let value = match (header, self) {
            (ProblemHeader::WwwAuthenticate, Self::InvalidToken(_)) => {
                HeaderValue::from_static(r#"Bearer error="invalid_token""#)
            }
            (ProblemHeader::WwwAuthenticate, _) => HeaderValue::from_static("Bearer"),
            (ProblemHeader::RetryAfter, Self::RateLimited { retry_after_secs, .. }) => {
                HeaderValue::from(*retry_after_secs)
            }
            (ProblemHeader::RetryAfter, _) => HeaderValue::from_static("1"),
        };
        Some((header.name(), value))
    }

    /// Whether every member of this error's problem is constant: a variant without data.
    /// Exhaustive on purpose, so that a new variant is a decision here.
    fn is_constant(&self) -> bool {
        match self {
            Self::SoldOut
            | Self::SaleNotActive
            | Self::SalePaused
            | Self::RequestTimeout
            | Self::EventNotFound
            | Self::OrderNotFound
            | Self::RouteNotFound
            | Self::MethodNotAllowed
            | Self::Unauthorized
            | Self::UnsupportedMediaType
            | Self::PayloadTooLarge
            | Self::EventConflict
            | Self::UserMismatch
            | Self::NotPaused
            | Self::DeadLetterNotFound
            | Self::NoLedger => true,
            Self::InvalidFields(_)
            | Self::MalformedJson(_)
            | Self::BadRequest(_)
            | Self::InvalidHeader(_)
            | Self::InvalidToken(_)
            | Self::RateLimited { .. }
            | Self::LimitExceeded { .. }
            | Self::NotPending { .. }
            | Self::IdempotencyKeyMismatch { .. }
            | Self::Unavailable { .. }
            | Self::Internal(_) => false,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.problem_code();
        let status = code.spec().status;
        let fault = match &self {
            Self::Internal(cause) | Self::Unavailable { cause, .. } => Some(ServerFault(cause.clone())),
            _ => None,
        };
        let body = match constant_body(&self) {
            Some(body) => axum::body::Body::from(body),
            None => axum::body::Body::from(serde_json::to_vec(&self.problem()).unwrap_or_default()),
        };
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response();
        if let Some((name, value)) = self.extra_header() {
            response.headers_mut().insert(name, value);
        }
        response.extensions_mut().insert(code);
        if let Some(fault) = fault {
            response.extensions_mut().insert(fault);
        }
        response
    }
}

/// Problems whose every member is constant (the bulk of a flash sale is `sold_out`):
/// serialized on first use, then served as static bytes (a lookup is one atomic load). Keyed
/// by code: constant variants never share one (`unauthorized` is shared by the admin token's
/// variant and the buyer token's, whose detail says what was wrong with the token).
fn constant_body(error: &ApiError) -> Option<&'static [u8]> {
    static BODIES: [OnceLock<&'static [u8]>; ProblemCode::ALL.len()] =
        [const { OnceLock::new() }; ProblemCode::ALL.len()];
    if !error.is_constant() {
        return None;
    }
    Some(BODIES[error.problem_code() as usize].get_or_init(|| {
        let body = serde_json::to_vec(&error.problem()).unwrap_or_default();
        Box::leak(body.into_boxed_slice())
    }))
}

/// Turns any error response that is not already a problem (axum's own 404, 405 and
/// extractor rejections answer `text/plain`) into one, keeping headers such as `Allow`.
pub async fn as_problem(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<ProblemCode>().is_some()
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).into_owned();
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::invalid(InvalidField::new("request", text)),
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout,
        StatusCode::SERVICE_UNAVAILABLE => {
            ApiError::Unavailable { why: Unavailable::Busy, outcome_unknown: false, cause: text }
        }
        s if s.is_client_error() => ApiError::BadRequest(text),
        _ => ApiError::Internal(text),
    };
    let mut problem = error.into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `docs/problems.md`, as the table says it reads.
    fn row(code: ProblemCode) -> String {
        let spec = code.spec();
        format!("| `{}` | {} | {} | {} |", spec.code, spec.status.as_u16(), spec.title, spec.when)
    }

    #[test]
    fn codes_are_unique_and_all_is_in_declaration_order() {
        for (n, code) in ProblemCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, n, "{code:?}: metrics and bodies index by it");
            let twins = ProblemCode::ALL.iter().filter(|c| c.spec().code == code.spec().code).count();
            assert_eq!(twins, 1, "{code:?}");
        }
    }

    /// `docs/problems.md` is the error reference for humans: one row per code, each with the
    /// status, title and `when` of the table, and no other row. On failure, the message holds
    /// the rows to paste.
    #[test]
    fn docs_problems_md_holds_every_code_with_its_status() {
        let doc = include_str!("../../docs/problems.md");
        let rows: Vec<&str> = doc.lines().filter(|line| line.starts_with("| `")).collect();
        let expected: Vec<String> = ProblemCode::ALL.into_iter().map(row).collect();
        assert_eq!(rows, expected, "docs/problems.md should list exactly:\n{}", expected.join("\n"));
    }

    #[test]
    fn headers_follow_the_table() {
        let cases = [
            (ApiError::Unauthorized, Some("Bearer")),
            (ApiError::InvalidToken(TokenError::Expired), Some(r#"Bearer error="invalid_token""#)),
            (ApiError::RateLimited { limit: Limit::Buyer, retry_after_secs: 7 }, Some("7")),
            (ApiError::timeout(Mutation::Write), Some("1")),
            (ApiError::SoldOut, None),
        ];
        for (error, value) in cases {
            let header = error.extra_header();
            assert_eq!(
                header.as_ref().map(|(name, _)| name.clone()),
                error.problem_code().spec().header.map(ProblemHeader::name)
            );
            assert_eq!(header.as_ref().and_then(|(_, v)| v.to_str().ok()), value, "{error:?}");
        }
    }

    #[test]
    fn a_constant_body_is_the_problem_serialized() {
        for error in
            [ApiError::SoldOut, ApiError::Unauthorized, ApiError::NoLedger, ApiError::PayloadTooLarge]
        {
            let fresh = serde_json::to_vec(&error.problem()).unwrap();
            assert_eq!(constant_body(&error), Some(&fresh[..]), "{error:?}");
        }
        assert_eq!(constant_body(&ApiError::InvalidToken(TokenError::Missing)), None);
    }
}
