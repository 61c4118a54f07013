//! The gateway's one error type and its error policy.
//!
//! Every error a client can see is an RFC 9457 problem (`application/problem+json`) with
//! `type`, `title`, `status`, `detail` and a machine-readable `code`. Errors about the request
//! (validation, business rules) pass through as they are. A Redis failure the client cannot
//! fix (down, slow, out of memory, busy, loading) is a 503 `unavailable` with `Retry-After`:
//! for a purchase whose script may already have run, the detail says the outcome is unknown
//! and that a retry with the same user and key resolves it (the scripts make that retry a
//! replay). Anything else is a bug: logged with its context, answered with an opaque 500.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
    #[error("idempotency key reused with a different payload")]
    IdempotencyKeyMismatch { order_id: OrderId },
    #[error("Redis unavailable: {cause}")]
    Unavailable { outcome_unknown: bool, cause: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: InvalidField) -> Self {
        Self::InvalidFields(vec![field])
    }

    /// A failed Redis call. `mutating` marks calls that may have changed state before the
    /// failure was seen (a purchase): their outcome is unknown unless the connection was
    /// refused outright.
    pub fn redis(error: redis::RedisError, mutating: bool) -> Self {
        use redis::ErrorKind;
        let ours = matches!(error.kind(), ErrorKind::UnexpectedReturnType | ErrorKind::Parse);
        if ours {
            return Self::Internal(format!("Redis reply not understood: {error}"));
        }
        Self::Unavailable {
            outcome_unknown: mutating && !error.is_connection_refusal(),
            cause: error.to_string(),
        }
    }

    /// A Redis call that did not answer within its deadline.
    pub fn timeout(mutating: bool) -> Self {
        Self::Unavailable { outcome_unknown: mutating, cause: "deadline exceeded".into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidFields(_) | Self::IdempotencyKeyMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MalformedJson(_) | Self::BadRequest(_) | Self::InvalidHeader(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RouteNotFound | Self::EventNotFound | Self::OrderNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::EventConflict | Self::SoldOut | Self::LimitExceeded { .. } | Self::SaleNotActive => {
                StatusCode::CONFLICT
            }
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let code = self.code();
        Problem {
            type_uri: format!("/problems/{code}"),
            title: self.title(),
            status: self.status().as_u16(),
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

    /// The machine-readable `code` member; stable, documented in the README.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidFields(_) => "invalid_fields",
            Self::MalformedJson(_) => "malformed_json",
            Self::BadRequest(_) => "bad_request",
            Self::InvalidHeader(_) => "invalid_header",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RouteNotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::EventNotFound => "event_not_found",
            Self::OrderNotFound => "order_not_found",
            Self::EventConflict => "event_conflict",
            Self::SoldOut => "sold_out",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::SaleNotActive => "sale_not_active",
            Self::IdempotencyKeyMismatch { .. } => "idempotency_key_mismatch",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::InvalidFields(_) => "Invalid fields",
            Self::MalformedJson(_) => "Malformed JSON",
            Self::BadRequest(_) => "Bad request",
            Self::InvalidHeader(_) => "Invalid header",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::PayloadTooLarge => "Payload too large",
            Self::RouteNotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unauthorized => "Unauthorized",
            Self::EventNotFound => "Event not found",
            Self::OrderNotFound => "Order not found",
            Self::EventConflict => "Event conflict",
            Self::SoldOut => "Sold out",
            Self::LimitExceeded { .. } => "Per-user limit exceeded",
            Self::SaleNotActive => "Sale not active",
            Self::IdempotencyKeyMismatch { .. } => "Idempotency key mismatch",
            Self::Unavailable { .. } => "Service unavailable",
            Self::Internal(_) => "Internal server error",
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
            Self::UnsupportedMediaType => "Send the body as `Content-Type: application/json`.".into(),
            Self::PayloadTooLarge => format!("The body may be at most {} bytes.", crate::BODY_LIMIT),
            Self::RouteNotFound => "No route matches this path.".into(),
            Self::MethodNotAllowed => "This route does not accept this method; see the Allow header.".into(),
            Self::Unauthorized => "Admin routes need `Authorization: Bearer <ADMIN_TOKEN>`.".into(),
            Self::EventNotFound => "No event has this id.".into(),
            Self::OrderNotFound => "This event has no order with this id.".into(),
            Self::EventConflict => {
                "The event already has sales; its configuration can no longer change.".into()
            }
            Self::SoldOut => "Not enough stock is left for this quantity.".into(),
            Self::LimitExceeded { held, limit } => {
                format!("This user already holds {held} of at most {limit} units for this event.")
            }
            Self::SaleNotActive => "The event is not on sale now (before starts_at or after ends_at).".into(),
            Self::IdempotencyKeyMismatch { order_id } => format!(
                "This idempotency scope was used for order {order_id} with a different payload; \
                 use a new Idempotency-Key for a different purchase."
            ),
            Self::Unavailable { outcome_unknown: true, .. } => "Redis did not answer in time, so the \
                outcome of this purchase is unknown. Retry the same request (same user_id, same \
                Idempotency-Key): if it was placed you get the order back, otherwise it is placed now."
                .into(),
            Self::Unavailable { outcome_unknown: false, .. } => {
                "The store is unreachable; nothing was changed. Retry shortly.".into()
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        if let Some(body) = constant_body(code) {
            let mut response =
                (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body)
                    .into_response();
            if let Self::Unauthorized = self {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response.extensions_mut().insert(ProblemCode(code));
            return response;
        }
        let fault = match &self {
            Self::Internal(cause) | Self::Unavailable { cause, .. } => Some(ServerFault(cause.clone())),
            _ => None,
        };
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response();
        if let Self::Unavailable { .. } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::Unauthorized = self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ProblemCode(code));
        if let Some(fault) = fault {
            response.extensions_mut().insert(fault);
        }
        response
    }
}

/// Problems whose every member is constant (the bulk of a flash sale is `sold_out`):
/// serialized once, served as static bytes.
fn constant_body(code: &str) -> Option<&'static [u8]> {
    static BODIES: LazyLock<HashMap<&'static str, &'static [u8]>> = LazyLock::new(|| {
        [
            ApiError::SoldOut,
            ApiError::SaleNotActive,
            ApiError::EventNotFound,
            ApiError::OrderNotFound,
            ApiError::RouteNotFound,
            ApiError::MethodNotAllowed,
            ApiError::Unauthorized,
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge,
            ApiError::EventConflict,
        ]
        .into_iter()
        .map(|error| {
            let body = serde_json::to_vec(&error.problem()).unwrap_or_default();
            (error.code(), &*Box::leak(body.into_boxed_slice()))
        })
        .collect()
    });
    BODIES.get(code).copied()
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
        StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
            ApiError::Unavailable { outcome_unknown: false, cause: text }
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
