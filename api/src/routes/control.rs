//! `POST /v1/events/{event_id}/pause`, `/resume` and `/end` (admin): an operator stops one
//! misbehaving sale without touching any other. Each is one atomic step in Redis
//! (`lua/control.lua`); the purchase script checks the state, so every gateway obeys at once,
//! and their local sold-out flags are dropped (pub/sub, and re-validation within 25 ms).
//! Replays of accepted orders still answer 200 in every state. One audit log line each.

use axum::Json;
use axum::extract::{Path, State};
use flashsale_shared::event::{self, ControlAction, ControlOutcome};

use super::EventPath;
use super::events::EventView;
use crate::error::{ApiError, Mutation};
use crate::extract::Admin;
use crate::openapi::{AdminProblems, EventProblems, PathProblems, ServerProblems};
use crate::state::AppState;

crate::problems! {
    /// Pause or resume after an end.
    EndedProblems { SaleNotActive => "The sale was ended." }
}

crate::problems! {
    /// Resume of a sale that is not paused.
    ResumeProblems { NotPaused, SaleNotActive => "The sale was ended." }
}

async fn control(
    state: AppState,
    admin: Admin,
    raw: String,
    action: ControlAction,
) -> Result<Json<EventView>, ApiError> {
    let id = super::event_id(raw)?;
    let retention = state.idempotency_retention();
    let id_ref = &id;
    let outcome = state
        .redis(Mutation::Write, |mut conn| async move {
            event::control(&mut conn, id_ref, action, retention).await
        })
        .await;
    admin.audit(&action, id.as_str(), None, outcome.as_ref().map(|o| o as _));
    match outcome? {
        ControlOutcome::NotFound => Err(ApiError::EventNotFound),
        ControlOutcome::EndedAlready => Err(ApiError::SaleNotActive),
        ControlOutcome::NotPaused => Err(ApiError::NotPaused),
        ControlOutcome::Paused
        | ControlOutcome::Resumed
        | ControlOutcome::Ended
        | ControlOutcome::Unchanged => Ok(Json(super::events::load(&state, &id).await?)),
    }
}

/// Pause a sale (admin): purchases answer `409 sale_paused` until it is resumed; replays of
/// accepted orders still answer 200.
#[utoipa::path(post, path = "/v1/events/{event_id}/pause", tag = "events", params(EventPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Paused (or already paused): the event, `state: paused`", body = EventView),
        AdminProblems,
        EventProblems,
        EndedProblems,
        PathProblems,
        ServerProblems,
    ))]
pub async fn pause(
    admin: Admin,
    State(state): State<AppState>,
    Path(EventPath { event_id }): Path<EventPath>,
) -> Result<Json<EventView>, ApiError> {
    control(state, admin, event_id, ControlAction::Pause).await
}

/// Resume a paused sale (admin).
#[utoipa::path(post, path = "/v1/events/{event_id}/resume", tag = "events", params(EventPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Selling again: the event", body = EventView),
        AdminProblems,
        EventProblems,
        ResumeProblems,
        PathProblems,
        ServerProblems,
    ))]
pub async fn resume(
    admin: Admin,
    State(state): State<AppState>,
    Path(EventPath { event_id }): Path<EventPath>,
) -> Result<Json<EventView>, ApiError> {
    control(state, admin, event_id, ControlAction::Resume).await
}

/// End a sale for good (admin): purchases answer `409 sale_not_active`; replays still answer
/// 200 until the retention passes (counted from now), then the event leaves Redis.
#[utoipa::path(post, path = "/v1/events/{event_id}/end", tag = "events", params(EventPath),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Ended (or already ended): the event, `state: ended`", body = EventView),
        AdminProblems,
        EventProblems,
        PathProblems,
        ServerProblems,
    ))]
pub async fn end(
    admin: Admin,
    State(state): State<AppState>,
    Path(EventPath { event_id }): Path<EventPath>,
) -> Result<Json<EventView>, ApiError> {
    control(state, admin, event_id, ControlAction::End).await
}
