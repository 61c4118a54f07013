//! `POST /v1/events/{event_id}/purchases`: the hot path.
//!
//! Validate, then one call of `lua/purchase.lua` does every check and, if they pass, reserves
//! the stock and enqueues the order atomically. The gateway answers 202 with the order at
//! once; the worker confirms it asynchronously.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flashsale_shared::purchase::{self, PurchaseOutcome};
use flashsale_shared::{EventKeys, IdempotencyKey, InvalidField, OrderId, UserId};
use serde::Deserialize;

use super::EventPath;
use super::orders::OrderView;
use crate::error::{ApiError, Mutation};
use crate::extract::Buyer;
use crate::extract::ClientAllowed;
use crate::extract::JsonBody;
use crate::openapi::{BodyProblems, BuyerProblems, ServerProblems};
use crate::state::AppState;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

crate::problems! {
    /// The sale's own refusals, and a buyer who is not the token's.
    PurchaseProblems { UserMismatch, EventNotFound, SoldOut, LimitExceeded, SaleNotActive, SalePaused }
}

/// A purchase request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    /// The buyer: 1-128 characters of `[A-Za-z0-9._:-]`. With buyer tokens it may be left out
    /// (the token's `sub` is the buyer) and, when present, must equal `sub` (else 403
    /// `user_mismatch`); without them (`BUYER_AUTH=none`) it is required.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
    user_id: Option<String>,
    /// Units to buy: 1 to the event's `per_user_limit`.
    #[serde(default = "one")]
    #[schema(minimum = 1, default = 1)]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// Buy units of an event.
///
/// One atomic step checks the sale window, the idempotency scope, the stock and the user's
/// limit, reserves the units and enqueues the order; the answer comes at once. The
/// idempotency scope is (event, user, `Idempotency-Key`); without the header it is the user,
/// so a plain retry is recognised. Repeating a successful purchase replays it (200) in every
/// state of the event; rejected requests are not remembered.
///
/// Checked in this order: the client address's rate limit, the buyer token, the body, the
/// buyer's rate limit (replays count), then the sale.
#[utoipa::path(
    post,
    path = "/v1/events/{event_id}/purchases",
    tag = "purchases",
    security(("buyer_token" = [])),
    params(
        EventPath,
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, min_length = 1,
         pattern = r"^[\x20-\x7E]+$",
         description = "Client-chosen key for this purchase (1-255 printable ASCII characters)"),
    ),
    request_body = PurchaseBody,
    responses(
        (status = 202, description = "Accepted: stock reserved, order pending", body = OrderView,
         headers(("Location" = String, description = "Where to poll the order"))),
        (status = 200, description = "A replay of an earlier successful purchase: the same order, as it is now",
         body = OrderView,
         headers(("Idempotent-Replayed" = String, description = "Always `true`"),
                 ("Location" = String, description = "Where to poll the order"))),
        BuyerProblems,
        PurchaseProblems,
        BodyProblems,
        ServerProblems,
    )
)]
pub async fn create(
    _client: ClientAllowed,
    Buyer(buyer): Buyer,
    State(state): State<AppState>,
    Path(EventPath { event_id }): Path<EventPath>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PurchaseBody>,
) -> Result<Response, ApiError> {
    let event = super::event_id(event_id)?;
    let key = idempotency_key(&headers)?;
    let user = match (buyer, body.user_id) {
        (Some(buyer), Some(claimed)) if claimed != buyer.as_str() => return Err(ApiError::UserMismatch),
        (Some(buyer), _) => Ok(buyer),
        (None, Some(claimed)) => UserId::parse(claimed),
        (None, None) => Err(InvalidField::new("user_id", "is required (this gateway takes no buyer tokens)")),
    };
    let quantity = if body.quantity == 0 {
        Err(InvalidField::new("quantity", "must be at least 1"))
    } else {
        Ok(body.quantity)
    };
    let (user, quantity) = match (user, quantity) {
        (Ok(user), Ok(quantity)) => (user, quantity),
        (user, quantity) => {
            return Err(ApiError::InvalidFields(
                [user.err(), quantity.err()].into_iter().flatten().collect(),
            ));
        }
    };

    state.limit_buyer(&user)?;

    let scope = purchase::scope(&user, key.as_ref());
    if state.sold_out().answers_sold_out(&event, &scope, quantity) {
        state.metrics().sold_out_locally();
        return Err(ApiError::SoldOut);
    }
    state.may_sell().await?;
    let keys = EventKeys::new(&event);
    let outcome = state
        .redis(Mutation::Write, |mut conn| async move {
            purchase::purchase(&mut conn, &keys, &scope, &user, quantity, OrderId::random()).await
        })
        .await?;

    match outcome {
        PurchaseOutcome::Accepted { order_id, order, remaining } => {
            if let Some(remaining) = remaining {
                state.observe_remaining(&event, remaining);
            }
            Ok(order_response(StatusCode::ACCEPTED, OrderView::new(&event, order_id, order), false))
        }
        PurchaseOutcome::Replayed { order_id, order } => {
            Ok(order_response(StatusCode::OK, OrderView::new(&event, order_id, order), true))
        }
        PurchaseOutcome::KeyMismatch { order_id } => Err(ApiError::IdempotencyKeyMismatch { order_id }),
        PurchaseOutcome::EventNotFound => Err(ApiError::EventNotFound),
        PurchaseOutcome::QuantityOverLimit { limit } => Err(ApiError::invalid(InvalidField::new(
            "quantity",
            format!("must be between 1 and this event's per_user_limit ({limit})"),
        ))),
        PurchaseOutcome::SaleNotActive => Err(ApiError::SaleNotActive),
        PurchaseOutcome::SalePaused => Err(ApiError::SalePaused),
        PurchaseOutcome::SoldOut { remaining } => {
            state.observe_remaining(&event, remaining);
            Err(ApiError::SoldOut)
        }
        PurchaseOutcome::LimitExceeded { held, limit } => Err(ApiError::LimitExceeded { held, limit }),
    }
}

/// The optional `Idempotency-Key`; sending it twice is ambiguous and refused.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::InvalidHeader(InvalidField::new(
            "Idempotency-Key",
            "must be sent at most once",
        )));
    }
    IdempotencyKey::parse(value.as_bytes()).map(Some).map_err(ApiError::InvalidHeader)
}

fn order_response(status: StatusCode, order: OrderView, replayed: bool) -> Response {
    let location = HeaderValue::try_from(order.location()).ok();
    let mut response = (status, Json(order)).into_response();
    let headers = response.headers_mut();
    if let Some(location) = location {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}
