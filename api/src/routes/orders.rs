//! `GET /v1/events/{event_id}/orders/{order_id}`: what a buyer polls after a 202.

use axum::Json;
use axum::extract::{Path, State};
use flashsale_shared::domain::from_unix_ms;
use flashsale_shared::order::{self, OrderRecord};
use flashsale_shared::schema::OrderStatus;
use flashsale_shared::{EventId, EventKeys, OrderId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{ApiError, Mutation};
use crate::extract::Buyer;
use crate::extract::ClientAllowed;
use crate::openapi::{
    AdminProblems, BuyerProblems, InvalidProblems, PathProblems, QueryProblems, ServerProblems,
};
use crate::state::AppState;

/// An order as clients see it (the 202 and replay bodies, and order polling).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    /// A random UUID (unguessable: 122 random bits).
    #[schema(value_type = String)]
    pub order_id: OrderId,
    #[schema(value_type = String)]
    pub event_id: EventId,
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub quantity: u32,
    pub status: OrderStatus,
    /// When the stock was reserved.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Present once a worker confirmed the order.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub confirmed_at: Option<OffsetDateTime>,
    /// Present once the order failed (its units went back on sale).
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failed_at: Option<OffsetDateTime>,
}

impl OrderView {
    pub fn new(event: &EventId, order_id: OrderId, order: OrderRecord) -> Self {
        let done_at = order.done_ms.map(from_unix_ms);
        Self {
            order_id,
            event_id: event.clone(),
            user_id: order.user_id,
            quantity: order.quantity,
            status: order.status,
            created_at: from_unix_ms(order.created_ms),
            confirmed_at: done_at.filter(|_| order.status == OrderStatus::Confirmed),
            failed_at: done_at.filter(|_| order.status == OrderStatus::Failed),
        }
    }

    /// An order as the ledger recorded it.
    pub fn from_ledger(order: flashsale_ledger::LedgerOrder) -> Self {
        let status = order.status;
        Self {
            order_id: order.order_id,
            event_id: order.event_id,
            user_id: order.user_id,
            quantity: order.quantity,
            status,
            created_at: order.created_at,
            confirmed_at: order.finalized_at.filter(|_| status == OrderStatus::Confirmed),
            failed_at: order.finalized_at.filter(|_| status == OrderStatus::Failed),
        }
    }

    /// Where the order can be polled (the `Location` of a 202).
    pub fn location(&self) -> String {
        format!("/v1/events/{}/orders/{}", self.event_id, self.order_id)
    }
}

crate::problems! {
    /// An order this buyer cannot see.
    OrderProblems { OrderNotFound }
}

crate::problems! {
    /// A ledger listing on a gateway without one.
    LedgerProblems { LedgerNotConfigured }
}

/// The `{event_id}/orders/{order_id}` path segments.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrderPath {
    /// The event: 1-64 characters of `[A-Za-z0-9._:-]`.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    event_id: String,
    /// The order id from the purchase's 202 (a UUID).
    order_id: String,
}

/// An order and its status: `pending` until a worker confirms it.
///
/// With buyer tokens only its buyer sees it: for anyone else it is `404 order_not_found`, as
/// if it did not exist.
#[utoipa::path(
    get,
    path = "/v1/events/{event_id}/orders/{order_id}",
    tag = "purchases",
    params(OrderPath),
    security(("buyer_token" = [])),
    responses(
        (status = 200, description = "The order", body = OrderView),
        BuyerProblems,
        OrderProblems,
        PathProblems,
        ServerProblems,
    )
)]
pub async fn get_order(
    _client: ClientAllowed,
    Buyer(buyer): Buyer,
    State(state): State<AppState>,
    Path(OrderPath { event_id, order_id }): Path<OrderPath>,
) -> Result<Json<OrderView>, ApiError> {
    if let Some(buyer) = &buyer {
        state.limit_buyer(buyer)?;
    }
    // Someone else's order is no order at all to this buyer.
    let visible = |owner: &UserId| buyer.as_ref().is_none_or(|buyer| buyer.as_str() == owner.as_str());
    let event = super::event_id(event_id)?;
    let order_id = OrderId::parse(&order_id).ok_or(ApiError::OrderNotFound)?;
    let keys = EventKeys::new(&event);
    let order = state
        .redis(Mutation::Read, |mut conn| async move { order::load(&mut conn, &keys, order_id).await })
        .await?;
    if let Some(order) = order {
        if !visible(&order.user_id) {
            return Err(ApiError::OrderNotFound);
        }
        return Ok(Json(OrderView::new(&event, order_id, order)));
    }
    // Not in Redis: its event may have left Redis, and the ledger holds every one of its orders.
    // An order the ledger just did not have is not asked again for a second (an order is in
    // Redis from its 202 until its event leaves, by then in the ledger), so polling unknown
    // ids is not a database query each.
    let (now, missed) = (std::time::Instant::now(), (event.clone(), order_id));
    if state.order_misses().contains(&missed, now) {
        return Err(ApiError::OrderNotFound);
    }
    let recorded = state
        .ledger(|ledger| {
            let event = event.clone();
            async move { ledger.order(&event, order_id).await }
        })
        .await?
        .flatten();
    if recorded.is_none() {
        state.order_misses().insert(missed, now);
    }
    let order = recorded.filter(|order| visible(&order.user_id)).ok_or(ApiError::OrderNotFound)?;
    Ok(Json(OrderView::from_ledger(order)))
}

/// Most orders per page of [`list_orders`].
const MAX_ORDERS_PAGE: i64 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// Only `confirmed` or `failed` orders.
    #[param(value_type = Option<String>, pattern = "^(confirmed|failed)$")]
    status: Option<String>,
    /// `next_cursor` of the previous page (an order id).
    cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of an event's recorded orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrdersPage {
    orders: Vec<OrderView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    next_cursor: Option<String>,
}

/// An event's finalized orders, from the ledger, by order id (admin). Needs `DATABASE_URL`.
#[utoipa::path(
    get,
    path = "/v1/events/{event_id}/orders",
    tag = "events",
    params(crate::routes::EventPath, OrdersQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of orders", body = OrdersPage),
        AdminProblems,
        InvalidProblems,
        QueryProblems,
        LedgerProblems,
        ServerProblems,
    )
)]
pub async fn list_orders(
    _admin: crate::extract::Admin,
    State(state): State<AppState>,
    Path(crate::routes::EventPath { event_id }): Path<crate::routes::EventPath>,
    axum::extract::Query(query): axum::extract::Query<OrdersQuery>,
) -> Result<Json<OrdersPage>, ApiError> {
    let event = super::event_id(event_id)?;
    let status = match query.status.as_deref() {
        None => None,
        // The ledger holds decided orders only: a pending one is never a filter that matches.
        Some(text) => Some(OrderStatus::parse(text).filter(|status| status.is_final()).ok_or_else(|| {
            ApiError::invalid(flashsale_shared::InvalidField::new("status", "must be confirmed or failed"))
        })?),
    };
    let cursor = match query.cursor.as_deref() {
        None => None,
        Some(text) => Some(OrderId::parse(text).ok_or_else(|| {
            ApiError::invalid(flashsale_shared::InvalidField::new("cursor", "must be an order id"))
        })?),
    };
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_ORDERS_PAGE);
    let page = state
        .ledger(|ledger| {
            let event = event.clone();
            async move {
                match status {
                    Some(status) => ledger.page_with_status(&event, status, cursor, limit).await,
                    None => ledger.page(&event, cursor, limit).await,
                }
            }
        })
        .await?
        .ok_or(ApiError::NoLedger)?;
    let next_cursor =
        (page.len() as i64 == limit).then(|| page.last().map(|o| o.order_id.to_string())).flatten();
    Ok(Json(OrdersPage { orders: page.into_iter().map(OrderView::from_ledger).collect(), next_cursor }))
}
