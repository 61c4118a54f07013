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

use std::collections::HashMap;
use std::sync::LazyLock;

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

    /// Status, code and title: the one table of every variant. The code is the
    /// machine-readable `code` member, stable and documented in the README.
    fn meta(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::InvalidFields(_) => (S::UNPROCESSABLE_ENTITY, "invalid_fields", "Invalid fields"),
            Self::MalformedJson(_) => (S::BAD_REQUEST, "malformed_json", "Malformed JSON"),
            Self::BadRequest(_) => (S::BAD_REQUEST, "bad_request", "Bad request"),
            Self::InvalidHeader(_) => (S::BAD_REQUEST, "invalid_header", "Invalid header"),
            Self::RequestTimeout => (S::REQUEST_TIMEOUT, "request_timeout", "Request timeout"),
            Self::UnsupportedMediaType => {
                (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type")
            }
            Self::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large"),
            Self::RouteNotFound => (S::NOT_FOUND, "not_found", "Not found"),
            Self::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed"),
            Self::Unauthorized | Self::InvalidToken(_) => (S::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::UserMismatch => (S::FORBIDDEN, "user_mismatch", "User mismatch"),
            Self::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited", "Too many requests"),
            Self::EventNotFound => (S::NOT_FOUND, "event_not_found", "Event not found"),
            Self::OrderNotFound => (S::NOT_FOUND, "order_not_found", "Order not found"),
            Self::EventConflict => (S::CONFLICT, "event_conflict", "Event conflict"),
            Self::SoldOut => (S::CONFLICT, "sold_out", "Sold out"),
            Self::LimitExceeded { .. } => (S::CONFLICT, "limit_exceeded", "Per-user limit exceeded"),
            Self::SaleNotActive => (S::CONFLICT, "sale_not_active", "Sale not active"),
            Self::SalePaused => (S::CONFLICT, "sale_paused", "Sale paused"),
            Self::NotPaused => (S::CONFLICT, "not_paused", "Sale not paused"),
            Self::DeadLetterNotFound => (S::NOT_FOUND, "dead_letter_not_found", "Dead letter not found"),
            Self::NotPending { .. } => (S::CONFLICT, "order_not_pending", "Order not pending"),
            Self::NoLedger => (S::NOT_IMPLEMENTED, "ledger_not_configured", "Ledger not configured"),
            Self::IdempotencyKeyMismatch { .. } => {
                (S::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch", "Idempotency key mismatch")
            }
            Self::Unavailable { .. } => (S::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable"),
            Self::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal server error"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.meta().0
    }

    /// The machine-readable `code` member.
    pub fn code(&self) -> &'static str {
        self.meta().1
    }

    fn problem(&self) -> Problem {
        let (status, code, title) = self.meta();
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
    /// Machine-readable problem code, stable across versions (see the README).
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

/// The problem's code, attached to the response so metrics middleware can tell outcomes
/// apart without parsing bodies.
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub &'static str);

impl ApiError {
    /// Headers a problem carries besides its content type: the challenge of a 401, when to
    /// retry a 429 or a 503.
    fn extra_header(&self) -> Option<(header::HeaderName, HeaderValue)> {
        match self {
            Self::Unauthorized => Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))),
            Self::InvalidToken(_) => {
                Some((header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="invalid_token""#)))
            }
            Self::RateLimited { retry_after_secs, .. } => {
                Some((header::RETRY_AFTER, HeaderValue::from(*retry_after_secs)))
            }
            Self::Unavailable { .. } => Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
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
        response.extensions_mut().insert(ProblemCode(code));
        if let Some(fault) = fault {
            response.extensions_mut().insert(fault);
        }
        response
    }
}

/// Problems whose every member is constant (the bulk of a flash sale is `sold_out`):
/// serialized once, served as static bytes. Keyed by variant, not by code: two variants may
/// share a code (`unauthorized` for the admin token and for a buyer token) but not a body.
fn constant_body(error: &ApiError) -> Option<&'static [u8]> {
    type Bodies = HashMap<std::mem::Discriminant<ApiError>, &'static [u8]>;
    static BODIES: LazyLock<Bodies> = LazyLock::new(|| {
        [
            ApiError::SoldOut,
            ApiError::SaleNotActive,
            ApiError::SalePaused,
            ApiError::RequestTimeout,
            ApiError::EventNotFound,
            ApiError::OrderNotFound,
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed,
            ApiError::Unauthorized,
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge,
            ApiError::EventConflict,
            ApiError::UserMismatch,
        ]
        .into_iter()
        .map(|error| {
            let body = serde_json::to_vec(&error.problem()).unwrap_or_default();
            (std::mem::discriminant(&error), &*Box::leak(body.into_boxed_slice()))
        })
        .collect()
    });
    BODIES.get(&std::mem::discriminant(error)).copied()
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
