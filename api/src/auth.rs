//! Admin authentication: deny by default.
//!
//! Admin routes take the [`Admin`] extractor. It accepts only `Authorization: Bearer <token>`
//! matching `ADMIN_TOKEN`, compared in constant time; with no token configured every admin
//! request is refused (and start-up logs a warning), so a forgotten setting never opens them.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// Proof that the request carried the admin token.
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let expected = state.admin_token().ok_or(ApiError::Unauthorized)?;
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if bool::from(presented.ct_eq(expected.as_bytes())) { Ok(Admin) } else { Err(ApiError::Unauthorized) }
    }
}
