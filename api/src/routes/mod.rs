//! One module per resource; the router in `lib.rs` lists every route in one place.

pub mod events;
pub mod health;
pub mod orders;
pub mod purchases;

use flashsale_shared::EventId;

use crate::error::ApiError;

/// Path ids are validated like body fields: an id outside the charset is a 422, not a 404.
pub fn event_id(raw: String) -> Result<EventId, ApiError> {
    EventId::parse(raw).map_err(ApiError::invalid)
}
