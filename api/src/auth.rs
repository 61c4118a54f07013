//! Admin authentication: deny by default.
//!
//! Admin routes take the [`Admin`] extractor. It accepts only `Authorization: Bearer <token>`
//! matching `ADMIN_TOKEN` or one of `ADMIN_TOKENS` (several, so a token can be rotated), each
//! compared in constant time; with no token configured every admin request is refused (and
//! start-up logs a warning), so a forgotten setting never opens them. A refused request is
//! one `audit` log line; the handlers log one for each write they carry out, naming the token
//! by its fingerprint ([`Admin`]'s `Display`).
//! The scheme is case-insensitive (RFC 7235 section 2.1: `bearer`, `BEARER`), and one or more
//! spaces separate it from the token.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

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

/// The token of `Bearer <token>`, whatever the scheme's case, after the spaces that follow it.
pub(crate) fn bearer_token(credentials: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = credentials.split_at_checked(b"Bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii_start())
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
