//! One module per resource; the router in `lib.rs` lists every route in one place.

pub mod control;
pub mod dead_letters;
pub mod events;
pub mod health;
pub mod orders;
pub mod purchases;

use flashsale_shared::EventId;
use serde::Deserialize;

use crate::error::ApiError;

/// The `{event_id}` path segment.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EventPath {
    /// The event: 1-64 characters of `[A-Za-z0-9._:-]`.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    pub event_id: String,
}

/// Path ids are validated like body fields: an id outside the charset is a 422, not a 404.
pub fn event_id(raw: String) -> Result<EventId, ApiError> {
    EventId::parse(raw).map_err(ApiError::invalid)
}
