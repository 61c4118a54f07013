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

use super::orders::OrderView;
use crate::AppState;
use crate::error::ApiError;
use crate::extract::JsonBody;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseBody {
    user_id: String,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

pub async fn create(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PurchaseBody>,
) -> Result<Response, ApiError> {
    let event = super::event_id(event_id)?;
    let key = idempotency_key(&headers)?;
    let user = UserId::parse(body.user_id);
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

    let keys = EventKeys::new(&event);
    let scope = purchase::scope(&user, key.as_ref());
    let outcome = state
        .redis(true, |mut conn| async move {
            purchase::purchase(&mut conn, &keys, &scope, &user, quantity, OrderId::random()).await
        })
        .await?;

    match outcome {
        PurchaseOutcome::Accepted { order_id, order, .. } => {
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
        PurchaseOutcome::SoldOut { .. } => Err(ApiError::SoldOut),
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
