//! `GET /v1/events/{event_id}/orders/{order_id}`: what a buyer polls after a 202.

use axum::Json;
use axum::extract::{Path, State};
use flashsale_shared::domain::from_unix_ms;
use flashsale_shared::order::{self, OrderRecord, OrderStatus};
use flashsale_shared::{EventId, EventKeys, OrderId};
use serde::Serialize;
use time::OffsetDateTime;

use crate::AppState;
use crate::error::ApiError;

/// An order as clients see it (the 202 and replay bodies, and order polling).
#[derive(Debug, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub event_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub status: OrderStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<OffsetDateTime>,
}

impl OrderView {
    pub fn new(event: &EventId, order_id: OrderId, order: OrderRecord) -> Self {
        let done_at = order.done_ms.map(from_unix_ms);
        Self {
            order_id: order_id.to_string(),
            event_id: event.to_string(),
            user_id: order.user_id,
            quantity: order.quantity,
            status: order.status,
            created_at: from_unix_ms(order.created_ms),
            confirmed_at: done_at.filter(|_| order.status == OrderStatus::Confirmed),
            failed_at: done_at.filter(|_| order.status == OrderStatus::Failed),
        }
    }

    /// Where the order can be polled (the `Location` of a 202).
    pub fn location(&self) -> String {
        format!("/v1/events/{}/orders/{}", self.event_id, self.order_id)
    }
}

pub async fn get_order(
    State(state): State<AppState>,
    Path((event_id, order_id)): Path<(String, String)>,
) -> Result<Json<OrderView>, ApiError> {
    let event = super::event_id(event_id)?;
    let order_id = OrderId::parse(&order_id).ok_or(ApiError::OrderNotFound)?;
    let keys = EventKeys::new(&event);
    let order =
        state.redis(false, |mut conn| async move { order::load(&mut conn, &keys, order_id).await }).await?;
    let order = order.ok_or(ApiError::OrderNotFound)?;
    Ok(Json(OrderView::new(&event, order_id, order)))
}
