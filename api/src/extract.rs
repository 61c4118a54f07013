//! Request extractors whose rejections are problems, not axum's `text/plain` defaults.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::ApiError;

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
