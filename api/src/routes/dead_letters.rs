//! Dead letters over HTTP (admin): the same list and the same two atomic decisions as the
//! `flashsale-worker dead-letters` commands (`shared::dead_letter`). A parked entry's order
//! stays pending, its units held, until an operator redrives it (a worker confirms it) or
//! fails it (units back on sale and to the buyer's allowance).

use axum::Json;
use axum::extract::{Path, Query, State};
use flashsale_shared::EventKeys;
use flashsale_shared::dead_letter::{self, Action, DeadLetter, Resolution};
use flashsale_shared::schema::OrderStatus;
use serde::{Deserialize, Serialize};

use super::EventPath;
use crate::error::{ApiError, Mutation};
use crate::extract::Admin;
use crate::openapi::{AdminProblems, InvalidProblems, PathProblems, QueryProblems, ServerProblems};
use crate::state::AppState;

crate::problems! {
    /// A dead letter that is not there (any more).
    DeadLetterProblems { DeadLetterNotFound }
}

crate::problems! {
    /// Redrive: no such dead letter, or its order was decided.
    RedriveProblems { DeadLetterNotFound, OrderNotPending }
}

/// Most dead letters per page.
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The last `id` of the previous page (exclusive).
    #[param(max_length = 40)]
    cursor: Option<String>,
    /// Page size, 1-500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// One dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    /// Its id: what redrive and fail take.
    id: String,
    /// The order stream entry it came from.
    entry: String,
    /// `max_attempts` (parked: its order waits for a decision), `unparseable`,
    /// `entry_missing`, `unknown_order`, `corrupt_order`.
    reason: String,
    /// Failed finalize attempts.
    deliveries: u64,
    order_id: Option<String>,
    /// Its order's status now (`pending` while parked).
    #[schema(value_type = Option<String>)]
    order_status: Option<OrderStatus>,
    /// Parked: its order is pending and holds units.
    parked: bool,
    /// The last error, for parked entries.
    error: Option<String>,
    /// When it was dead-lettered (Unix ms).
    at_ms: i64,
}

/// The letter as it is, without its raw `payload` and with `parked`. Destructured in full, so
/// that a field `DeadLetter` gains is a decision here, not silently left out. (Serializing
/// `DeadLetter` itself, flattened, would put `payload` in the JSON: `shared` would need to
/// skip it, which its worker CLI output prints.)
impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        let parked = letter.is_parked();
        let DeadLetter { id, entry, reason, deliveries, order_id, order_status, payload: _, error, at_ms } =
            letter;
        Self { id, entry, reason, deliveries, order_id, order_status, parked, error, at_ms }
    }
}

/// A page of dead letters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    dead_letters: Vec<DeadLetterView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    next_cursor: Option<String>,
}

/// A stream id: digits, a dash, digits (what the dead-letter stream's ids look like).
fn stream_id(raw: &str) -> Result<&str, ApiError> {
    let valid = raw.len() <= 40
        && raw.split_once('-').is_some_and(|(ms, seq)| {
            !ms.is_empty() && !seq.is_empty() && ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit())
        });
    if valid {
        Ok(raw)
    } else {
        Err(ApiError::invalid(flashsale_shared::InvalidField::new(
            "entry_id",
            "must be a stream id such as 1764064800000-0",
        )))
    }
}

/// An event's dead letters, oldest first (admin).
#[utoipa::path(get, path = "/v1/events/{event_id}/dead-letters", tag = "events",
    params(EventPath, PageQuery), security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of dead letters", body = DeadLetterPage),
        AdminProblems,
        InvalidProblems,
        QueryProblems,
        ServerProblems,
    ))]
pub async fn list(
    _admin: Admin,
    State(state): State<AppState>,
    Path(EventPath { event_id }): Path<EventPath>,
    Query(page): Query<PageQuery>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let id = super::event_id(event_id)?;
    let cursor = page.cursor.as_deref().map(stream_id).transpose()?.map(str::to_owned);
    let limit = page.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let keys = EventKeys::new(&id);
    let letters = state
        .redis(Mutation::Read, |mut conn| async move {
            dead_letter::list(&mut conn, &keys, cursor.as_deref(), limit).await
        })
        .await?;
    let next_cursor = (letters.len() == limit).then(|| letters.last().map(|l| l.id.clone())).flatten();
    Ok(Json(DeadLetterPage { dead_letters: letters.into_iter().map(Into::into).collect(), next_cursor }))
}

/// The `{event_id}/dead-letters/{entry_id}` path segments.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeadLetterPath {
    /// The event: 1-64 characters of `[A-Za-z0-9._:-]`.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    event_id: String,
    /// The dead letter's `id`.
    #[param(max_length = 40)]
    entry_id: String,
}

async fn resolve(
    state: AppState,
    admin: Admin,
    path: DeadLetterPath,
    action: Action,
) -> Result<Json<Resolution>, ApiError> {
    let id = super::event_id(path.event_id)?;
    let entry = stream_id(&path.entry_id)?.to_owned();
    let keys = EventKeys::new(&id);
    let (id_ref, entry_ref) = (&id, entry.as_str());
    let resolution = state
        .redis(Mutation::Write, |mut conn| async move {
            dead_letter::resolve(&mut conn, id_ref, &keys, action, entry_ref).await
        })
        .await;
    admin.audit(&action, id.as_str(), Some(&entry), resolution.as_ref().map(|r| r as _));
    match resolution? {
        Resolution::NotFound => Err(ApiError::DeadLetterNotFound),
        Resolution::NotPending { status, .. } => Err(ApiError::NotPending { status }),
        done => Ok(Json(done)),
    }
}

/// Put a parked entry's order back on the stream (admin): a worker confirms it.
#[utoipa::path(post, path = "/v1/events/{event_id}/dead-letters/{entry_id}/redrive", tag = "events",
    params(DeadLetterPath), security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"outcome\": \"redriven\", \"order_id\", \"entry\"}`", body = Object),
        AdminProblems,
        RedriveProblems,
        PathProblems,
        ServerProblems,
    ))]
pub async fn redrive(
    admin: Admin,
    State(state): State<AppState>,
    Path(path): Path<DeadLetterPath>,
) -> Result<Json<Resolution>, ApiError> {
    resolve(state, admin, path, Action::Redrive).await
}

/// Fail a parked entry's order (admin): its units go back on sale and to the buyer's
/// allowance; a dead letter with no pending order is just removed.
#[utoipa::path(post, path = "/v1/events/{event_id}/dead-letters/{entry_id}/fail", tag = "events",
    params(DeadLetterPath), security(("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"outcome\": \"failed\" | \"removed\", ...}`", body = Object),
        AdminProblems,
        DeadLetterProblems,
        PathProblems,
        ServerProblems,
    ))]
pub async fn fail(
    admin: Admin,
    State(state): State<AppState>,
    Path(path): Path<DeadLetterPath>,
) -> Result<Json<Resolution>, ApiError> {
    resolve(state, admin, path, Action::Fail).await
}
