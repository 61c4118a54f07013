//! Request extractors: what a handler takes from a request, each rejecting with a problem
//! (never axum's `text/plain` defaults).
//!
//! - [`JsonBody`]: the body, as JSON.
//! - [`Admin`]: the admin token. Deny by default: it accepts only `Authorization: Bearer
//!   <token>` matching `ADMIN_TOKEN` or one of `ADMIN_TOKENS` (several, so a token can be
//!   rotated), each compared in constant time; with no token configured every admin request
//!   is refused (and start-up logs a warning), so a forgotten setting never opens them. A
//!   refused request is one `audit` log line; the handlers log one for each write they carry
//!   out ([`Admin::audit`]), naming the token by its fingerprint ([`Admin`]'s `Display`).
//! - [`Buyer`]: who is buying, from a buyer token verified with [`crate::buyer`].
//! - [`ClientAllowed`]: the client address's rate limit ([`crate::limit`]).
//!
//! The bearer scheme is case-insensitive (RFC 7235 section 2.1: `bearer`, `BEARER`), and one
//! or more spaces separate it from the token.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use flashsale_shared::UserId;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, Limit, TokenError};
use crate::limit::{client_addr, client_key};
use crate::state::AppState;

/// A JSON body: 415 without a JSON content type, 413 over the body limit, 408 when it does not
/// arrive within `BODY_TIMEOUT_MS` (a slow client must not eat the time a purchase needs for
/// Redis), 400 when the text is not JSON, 422 when it is JSON of the wrong shape (missing,
/// unknown or mistyped fields).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let read = tokio::time::timeout(state.body_timeout(), Bytes::from_request(req, state));
        let bytes =
            read.await.map_err(|_| ApiError::RequestTimeout)?.map_err(|rejection| match rejection {
                BytesRejection::FailedToBufferBody(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge
                }
                other => ApiError::MalformedJson(other.body_text()),
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::invalid(flashsale_shared::InvalidField::new("body", e.to_string()))
        }
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

/// Proof that the request carried an admin token. Displays as which one, for audit lines:
/// `token:<fingerprint>`, never the token itself.
#[derive(Debug)]
pub struct Admin {
    fingerprint: String,
}

impl std::fmt::Display for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token:{}", self.fingerprint)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented =
            parts.headers.get(header::AUTHORIZATION).and_then(|value| bearer_token(value.as_bytes()));
        // Every configured token is compared, whichever matches, so the time taken does not
        // tell which one (or how many) there are.
        let matched = presented.and_then(|presented| {
            state.admin_tokens().iter().fold(None, |found, token| {
                let equal = bool::from(presented.ct_eq(token.as_bytes()));
                if equal { Some(token) } else { found }
            })
        });
        match matched {
            Some(token) => Ok(Admin { fingerprint: token.fingerprint() }),
            None => {
                tracing::warn!(target: "audit", admin = "none", method = %parts.method, path = parts.uri.path(),
                    result = "unauthorized", "admin request refused");
                Err(ApiError::Unauthorized)
            }
        }
    }
}

impl Admin {
    /// The one `audit` log line of an admin write: which token (by fingerprint), the action,
    /// the event (Debug-formatted: a raw path segment may hold anything, a newline included),
    /// the dead letter when there is one, and the result: what the write did, or the problem's
    /// status and code.
    pub fn audit(
        &self,
        action: &dyn std::fmt::Debug,
        event: &str,
        dead_letter: Option<&str>,
        result: Result<&dyn std::fmt::Debug, &ApiError>,
    ) {
        let result = match result {
            Ok(done) => format!("{done:?}"),
            Err(error) => format!("{} {}", error.status().as_u16(), error.code()),
        };
        tracing::info!(target: "audit", admin = %self, action = ?action, event = ?event, dead_letter,
            result, "admin write");
    }
}

/// The token of `Bearer <token>`, whatever the scheme's case, after the spaces that follow it.
pub(crate) fn bearer_token(credentials: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = credentials.split_at_checked(b"Bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii_start())
}

/// The buyer a request is for: `Some` with `BUYER_AUTH=jwt` (the verified token's `sub`),
/// `None` with `BUYER_AUTH=none` (the body says).
#[derive(Debug)]
pub struct Buyer(pub Option<UserId>);

impl FromRequestParts<AppState> for Buyer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(keys) = state.buyer_keys() else { return Ok(Buyer(None)) };
        let value =
            parts.headers.get(header::AUTHORIZATION).ok_or(ApiError::InvalidToken(TokenError::Missing))?;
        let token = bearer_token(value.as_bytes())
            .and_then(|token| std::str::from_utf8(token).ok())
            .ok_or(ApiError::InvalidToken(TokenError::Malformed))?;
        keys.verify(token).map(|user| Buyer(Some(user))).map_err(ApiError::InvalidToken)
    }
}

/// Proof that the request's client address is within its limit (or that the limit is off).
/// Taken first by every limited route.
#[derive(Debug)]
pub struct ClientAllowed;

impl FromRequestParts<AppState> for ClientAllowed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let limits = state.limits();
        let Some(limiter) = limits.client() else { return Ok(ClientAllowed) };
        // Without a peer address (a router served by something other than `serve`) there is
        // nothing to limit by.
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(ClientAllowed);
        };
        let client = client_key(client_addr(peer.ip(), &parts.headers, limits.trusted()));
        limiter.check(&client).map(|()| ClientAllowed).map_err(|wait| state.rate_limited(Limit::Client, wait))
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_scheme_is_case_insensitive_and_spaces_before_the_token_are_skipped() {
        for credentials in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc"] {
            assert_eq!(bearer_token(credentials.as_bytes()), Some(&b"abc"[..]), "{credentials}");
        }
        for credentials in ["Bearerabc", "Basic abc", "Bear abc", "", "Bearer"] {
            assert_eq!(bearer_token(credentials.as_bytes()), None, "{credentials}");
        }
    }
}
