//! `PUT /v1/events/{event_id}` (admin) and `GET /v1/events/{event_id}` (public).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_shared::domain::{from_unix_ms, to_unix_ms};
use flashsale_shared::event::{self, EventConfig, EventSnapshot, EventState, PutOutcome};
use flashsale_shared::{EventId, InvalidField};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::extract::JsonBody;

/// Larger stocks would not be exact in Lua's double-precision numbers.
const MAX_STOCK: u64 = 1_000_000_000;
const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutEventBody {
    stock: u64,
    #[serde(default = "one")]
    per_user_limit: u32,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    starts_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    ends_at: Option<OffsetDateTime>,
}

fn one() -> u32 {
    1
}

impl PutEventBody {
    fn validate(self) -> Result<EventConfig, ApiError> {
        let mut invalid = Vec::new();
        if !(1..=MAX_STOCK).contains(&self.stock) {
            invalid.push(InvalidField::new("stock", format!("must be between 1 and {MAX_STOCK}")));
        }
        if self.per_user_limit == 0 {
            invalid.push(InvalidField::new("per_user_limit", "must be at least 1"));
        }
        if let Some(name) = &self.name
            && (name.trim().is_empty()
                || name.chars().count() > MAX_NAME_LEN
                || name.chars().any(char::is_control))
        {
            invalid.push(InvalidField::new(
                "name",
                format!("must be 1 to {MAX_NAME_LEN} characters, not blank, without control characters"),
            ));
        }
        if let (Some(starts), Some(ends)) = (self.starts_at, self.ends_at)
            && starts >= ends
        {
            invalid.push(InvalidField::new("ends_at", "must be after starts_at"));
        }
        if !invalid.is_empty() {
            return Err(ApiError::InvalidFields(invalid));
        }
        Ok(EventConfig {
            stock: self.stock,
            per_user_limit: self.per_user_limit,
            name: self.name,
            starts_at_ms: self.starts_at.map(to_unix_ms),
            ends_at_ms: self.ends_at.map(to_unix_ms),
        })
    }
}

/// An event as clients see it.
#[derive(Debug, Serialize)]
pub struct EventView {
    event_id: String,
    name: Option<String>,
    stock: u64,
    remaining: u64,
    confirmed: u64,
    per_user_limit: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    starts_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    ends_at: Option<OffsetDateTime>,
    state: EventState,
}

impl EventView {
    fn new(id: &EventId, snapshot: EventSnapshot) -> Self {
        let state = snapshot.state();
        let EventSnapshot { config, remaining, confirmed, .. } = snapshot;
        Self {
            event_id: id.to_string(),
            name: config.name,
            stock: config.stock,
            remaining,
            confirmed,
            per_user_limit: config.per_user_limit,
            starts_at: config.starts_at_ms.map(from_unix_ms),
            ends_at: config.ends_at_ms.map(from_unix_ms),
            state,
        }
    }
}

async fn load(state: &AppState, id: &EventId) -> Result<EventView, ApiError> {
    let snapshot = state
        .redis(false, |mut conn| async move { event::load(&mut conn, id).await })
        .await?
        .ok_or(ApiError::EventNotFound)?;
    Ok(EventView::new(id, snapshot))
}

/// 201 when created, 200 when unchanged or replaced before any sale, 409 once it has sales.
pub async fn put_event(
    _admin: Admin,
    State(state): State<AppState>,
    Path(event_id): Path<String>,
    JsonBody(body): JsonBody<PutEventBody>,
) -> Result<Response, ApiError> {
    let id = super::event_id(event_id)?;
    let config = body.validate()?;
    let retention = state.idempotency_retention();
    let (id_ref, config) = (&id, &config);
    let outcome = state
        .redis(true, |mut conn| async move { event::put(&mut conn, id_ref, config, retention).await })
        .await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Unchanged | PutOutcome::Replaced => StatusCode::OK,
        PutOutcome::Conflict => return Err(ApiError::EventConflict),
    };
    let view = load(&state, &id).await?;
    let mut response = (status, Json(view)).into_response();
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::try_from(format!("/v1/events/{id}"))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn get_event(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let id = super::event_id(event_id)?;
    Ok(Json(load(&state, &id).await?))
}
