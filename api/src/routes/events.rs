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

use super::EventPath;
use crate::error::{ApiError, Mutation};
use crate::extract::Admin;
use crate::extract::ClientAllowed;
use crate::extract::JsonBody;
use crate::openapi::{
    AdminProblems, BodyProblems, ClientProblems, EventProblems, PathProblems, QueryProblems, ServerProblems,
};
use crate::state::AppState;

/// Larger stocks would not be exact in Lua's double-precision numbers (and this is far below
/// the ledger's `events.stock bigint`).
const MAX_STOCK: u64 = 1_000_000_000;
/// The ledger's `events.per_user_limit` is an `integer`: a larger limit was accepted here,
/// then refused by the database at the first order, and the event's orders stayed pending.
/// What the API accepts, the ledger holds.
const MAX_PER_USER_LIMIT: u32 = i32::MAX as u32;
const MAX_NAME_LEN: usize = 200;
/// Times must lie in years 1970 to 9999 UTC, as Unix seconds (`9999-12-31T23:59:59Z`): RFC
/// 3339 has four-digit years, and before 1970 the millisecond fields would be negative.
/// Outside it an event was stored and then every GET failed to format it (a 500). Comparing
/// timestamps also catches offsets that cross an edge (`9999-12-31T23:00:00-05:00`) without
/// `to_offset`, which panics out of range.
const TIMES: std::ops::RangeInclusive<i64> = 0..=253_402_300_799;

/// An event's configuration. It can be replaced until the first order is accepted.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutEventBody {
    /// Units on sale.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    stock: u64,
    /// Most units one user may hold over all their orders of this event.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 2_147_483_647, default = 1)]
    per_user_limit: u32,
    /// A display name.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Start of the sale window (inclusive), RFC 3339, in years 1970-9999 UTC. Absent: open now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    starts_at: Option<OffsetDateTime>,
    /// End of the sale window (exclusive), RFC 3339, in years 1970-9999 UTC; after `starts_at`.
    /// Absent: no end.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
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
        if !(1..=MAX_PER_USER_LIMIT).contains(&self.per_user_limit) {
            invalid.push(InvalidField::new(
                "per_user_limit",
                format!("must be between 1 and {MAX_PER_USER_LIMIT}"),
            ));
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
        for (field, at) in [("starts_at", self.starts_at), ("ends_at", self.ends_at)] {
            if at.is_some_and(|at| !TIMES.contains(&at.unix_timestamp())) {
                invalid.push(InvalidField::new(
                    field,
                    "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
                ));
            }
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    #[schema(value_type = String)]
    event_id: EventId,
    name: Option<String>,
    /// Units put on sale.
    stock: u64,
    /// Units not held by a pending or confirmed order.
    remaining: u64,
    /// Units in orders the worker has confirmed.
    confirmed: u64,
    per_user_limit: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    starts_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    ends_at: Option<OffsetDateTime>,
    state: EventState,
}

impl EventView {
    /// An event that left Redis: its sale is over, and the ledger has every order.
    fn from_ledger(event: flashsale_ledger::LedgerEvent) -> Self {
        Self {
            event_id: event.event_id,
            name: event.name,
            stock: event.stock,
            remaining: event.stock.saturating_sub(event.confirmed_units),
            confirmed: event.confirmed_units,
            per_user_limit: event.per_user_limit,
            starts_at: event.starts_at,
            ends_at: event.ends_at,
            state: EventState::Ended,
        }
    }

    fn new(id: &EventId, snapshot: EventSnapshot) -> Self {
        let state = snapshot.state();
        let EventSnapshot { config, remaining, confirmed, .. } = snapshot;
        Self {
            event_id: id.clone(),
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

/// The event from Redis, or from the ledger once it has left Redis.
pub(crate) async fn load(state: &AppState, id: &EventId) -> Result<EventView, ApiError> {
    let snapshot =
        state.redis(Mutation::Read, |mut conn| async move { event::load(&mut conn, id).await }).await?;
    if let Some(snapshot) = snapshot {
        return Ok(EventView::new(id, snapshot));
    }
    // A public read of any id: an id the ledger just did not have is not asked again for a
    // second, so a flood of unknown ids is not a flood of database queries.
    let now = std::time::Instant::now();
    if state.event_misses().contains(id, now) {
        return Err(ApiError::EventNotFound);
    }
    let recorded = state.ledger(|ledger| async move { ledger.event(id).await }).await?.flatten();
    let found = recorded.filter(|e| e.left_redis_at.is_some()).map(EventView::from_ledger);
    if found.is_none() {
        state.event_misses().insert(id.clone(), now);
    }
    found.ok_or(ApiError::EventNotFound)
}

crate::problems! {
    /// A configuration that can no longer change.
    ConflictProblems { EventConflict }
}

/// Create or replace an event (admin).
///
/// 201 when created (also an id whose sale left Redis without any order), 200 when the same
/// configuration is put again or a different one replaces it before any sale, 409
/// `event_conflict` once the event has sales.
#[utoipa::path(
    put,
    path = "/v1/events/{event_id}",
    tag = "events",
    params(EventPath),
    request_body = PutEventBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created", body = EventView,
         headers(("Location" = String, description = "The event's URL"))),
        (status = 200, description = "Unchanged, or replaced before any sale", body = EventView),
        AdminProblems,
        ConflictProblems,
        BodyProblems,
        ServerProblems,
    )
)]
pub async fn put_event(
    admin: Admin,
    State(state): State<AppState>,
    Path(EventPath { event_id }): Path<EventPath>,
    JsonBody(body): JsonBody<PutEventBody>,
) -> Result<Response, ApiError> {
    let answer = put(&state, event_id.clone(), body).await;
    let status = answer.as_ref().map(|response| response.status().as_u16());
    admin.audit(&"put_event", &event_id, None, status.as_ref().map(|s| s as _).map_err(|e| *e));
    answer
}

async fn put(state: &AppState, event_id: String, body: PutEventBody) -> Result<Response, ApiError> {
    let id = super::event_id(event_id)?;
    let config = body.validate()?;
    // An event that left Redis and ever sold cannot be created again under its id (its orders
    // are in the ledger: 409 `event_conflict`, as for any event with sales). One that left with
    // no order held no sale: its id is free again, so the ledger's row goes (after any copy
    // of it Redis still has, so neither outlives the other), and the PUT creates it anew.
    let recorded = state
        .ledger(|ledger| {
            let id = id.clone();
            async move { ledger.event(&id).await }
        })
        .await?
        .flatten()
        .filter(|e| e.left_redis_at.is_some());
    if let Some(left) = recorded {
        if left.sold {
            return Err(ApiError::EventConflict);
        }
        let id_ref = &id;
        let removal = state
            .redis(Mutation::Write, |mut conn| async move {
                event::remove(&mut conn, id_ref, 0, event::Leaving::Left).await
            })
            .await?;
        if let event::Removal::Kept(_) = removal {
            // Redis accepted orders the ledger does not hold yet: they sold.
            return Err(ApiError::EventConflict);
        }
        state
            .ledger(|ledger| {
                let id = id.clone();
                async move { ledger.forget_unsold_left(&id).await }
            })
            .await?;
    }
    let retention = state.idempotency_retention();
    let (id_ref, config) = (&id, &config);
    let outcome = state
        .redis(
            Mutation::Write,
            |mut conn| async move { event::put(&mut conn, id_ref, config, retention).await },
        )
        .await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Unchanged | PutOutcome::Replaced => StatusCode::OK,
        PutOutcome::Conflict => return Err(ApiError::EventConflict),
    };
    let view = load(state, &id).await?;
    let mut response = (status, Json(view)).into_response();
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::try_from(format!("/v1/events/{id}"))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// An event's configuration, live counters and state.
#[utoipa::path(
    get,
    path = "/v1/events/{event_id}",
    tag = "events",
    params(EventPath),
    security(()),
    responses(
        (status = 200, description = "The event", body = EventView),
        ClientProblems,
        EventProblems,
        PathProblems,
        ServerProblems,
    )
)]
pub async fn get_event(
    _client: ClientAllowed,
    State(state): State<AppState>,
    Path(EventPath { event_id }): Path<EventPath>,
) -> Result<Json<EventView>, ApiError> {
    let id = super::event_id(event_id)?;
    Ok(Json(load(&state, &id).await?))
}

/// Most events per page of [`list_events`].
const MAX_EVENTS_PAGE: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events in this state.
    state: Option<EventState>,
    /// `next_cursor` of the previous page.
    #[param(maximum = 18446744073709551615u64)]
    cursor: Option<u64>,
    /// How many events to look at, 1-100 (default 50). A page may hold fewer, even none, when
    /// a state is asked for: follow `next_cursor` until it is absent.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// A page of events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventsPage {
    events: Vec<EventView>,
    /// Pass as `cursor` for the next page; absent once every event was seen.
    next_cursor: Option<u64>,
}

/// Every event still in Redis, with its state and counts, a page at a time (admin). Events
/// that have left Redis are in the ledger (`GET /v1/events/{event_id}` still answers for them).
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        AdminProblems,
        QueryProblems,
        ServerProblems,
    )
)]
pub async fn list_events(
    _admin: Admin,
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, MAX_EVENTS_PAGE);
    let cursor = query.cursor.unwrap_or(0);
    let (next, ids) = state
        .redis(Mutation::Read, |mut conn| async move { event::scan(&mut conn, cursor, limit).await })
        .await?;
    let mut events = Vec::with_capacity(ids.len());
    for id in &ids {
        let snapshot =
            state.redis(Mutation::Read, |mut conn| async move { event::load(&mut conn, id).await }).await?;
        let Some(snapshot) = snapshot else { continue };
        if query.state.is_none_or(|wanted| snapshot.state() == wanted) {
            events.push(EventView::new(id, snapshot));
        }
    }
    Ok(Json(EventsPage { events, next_cursor: (next != 0).then_some(next) }))
}
