//! What every request goes through, in one middleware: its request id (the client's
//! `x-request-id`, or a new UUID, echoed on the response), a debug-level span, the request
//! deadline, a problem document for any error axum produced itself and for a handler that
//! panicked, the HTTP and purchase metrics, and a log line carrying the request id for every
//! server-side failure.
//!
//! One layer rather than six: each tower layer wraps the request, the response or its body
//! and each `from_fn` layer clones a boxed service per request. On the sold-out path (which
//! never reaches Redis) tower-http's request-id and trace layers alone cost ~9 % of the
//! gateway's CPU per request, measured side by side.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::error::{self, ApiError, Mutation, ProblemCode, ServerFault};
use crate::metrics::PURCHASE_ROUTE;
use crate::state::AppState;

/// The request id header: the client's, or one the gateway made up; echoed on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A client's `x-request-id` longer than this (or not visible ASCII) is replaced: it goes into
/// log lines.
const MAX_REQUEST_ID: usize = 128;

pub async fn every_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::enter(state.metrics());
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let request_id = match request.headers().get(REQUEST_ID) {
        Some(id) if id.len() <= MAX_REQUEST_ID && id.to_str().is_ok() => id.clone(),
        _ => new_request_id(),
    };
    let id = request_id.to_str().unwrap_or("");
    let span = tracing::debug_span!("request", %method, uri = %request.uri(), request_id = id);

    // A panic in a handler is a bug like any other: a 500 problem with the request id, and
    // the cause in the error log line below, rather than a connection dropped unanswered.
    // Unwind safety: the request's own state dies with it; what it shares (the Redis
    // connection, metrics, the sold-out board) is only touched through atomic operations.
    let handled = AssertUnwindSafe(next.run(request)).catch_unwind();
    let handled = tokio::time::timeout(state.request_timeout(), handled).instrument(span.clone());
    let mut response = match handled.await {
        Ok(Ok(response)) => error::as_problem(response).await,
        Ok(Err(panic)) => {
            ApiError::Internal(format!("handler panicked: {}", panic_message(&*panic))).into_response()
        }
        // The handler was cut short: a request that may change state may have reached Redis.
        Err(_) => {
            let mutation =
                if matches!(method, Method::GET | Method::HEAD) { Mutation::Read } else { Mutation::Write };
            ApiError::timeout(mutation).into_response()
        }
    };

    let elapsed = started.elapsed();
    let status = response.status();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    if let Some(ServerFault(cause)) = response.extensions().get::<ServerFault>() {
        if status.as_u16() == 503 {
            tracing::warn!(request_id = id, %method, route, %status, %cause, "Redis unavailable");
        } else {
            tracing::error!(request_id = id, %method, route, %status, %cause, "request failed");
        }
    }
    span.in_scope(|| tracing::debug!(%status, latency_us = elapsed.as_micros() as u64, "finished"));
    let metrics = state.metrics();
    if method == Method::POST && route == PURCHASE_ROUTE {
        let code = response.extensions().get::<ProblemCode>().copied();
        metrics.record_purchase(status, code, elapsed);
    }
    metrics.record_http(&method, route, status, elapsed);
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// A fresh UUID v4 as a header value, formatted on the stack.
fn new_request_id() -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// Counts a request in `flashsale_http_requests_in_flight` for as long as it lives (also when
/// its handler panics or its future is dropped).
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter(metrics: &crate::metrics::ApiMetrics) -> Self {
        metrics.in_flight.increment(1.0);
        Self(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
