//! What every request goes through, in one middleware: the request deadline, a problem
//! document for any error axum produced itself, the HTTP and purchase metrics, and a log line
//! carrying the request id for every server-side failure.
//!
//! One layer rather than four: each `from_fn` layer clones a boxed service per request, and
//! the profile of the sold-out path (which never reaches Redis) showed those clones and their
//! allocations among its larger costs.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::{self, ApiError, ProblemCode, ServerFault};
use crate::metrics::PURCHASE_ROUTE;

pub async fn every_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let request_id = request.headers().get(crate::REQUEST_ID).cloned();

    let response = match tokio::time::timeout(state.request_timeout(), next.run(request)).await {
        Ok(response) => error::as_problem(response).await,
        Err(_) => ApiError::timeout(false).into_response(),
    };

    let elapsed = started.elapsed();
    let status = response.status();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    if let Some(ServerFault(cause)) = response.extensions().get::<ServerFault>() {
        let request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        if status.as_u16() == 503 {
            tracing::warn!(request_id, %method, route, %status, %cause, "Redis unavailable");
        } else {
            tracing::error!(request_id, %method, route, %status, %cause, "request failed");
        }
    }
    let metrics = state.metrics();
    if method == Method::POST && route == PURCHASE_ROUTE {
        let code = response.extensions().get::<ProblemCode>().map(|c| c.0);
        metrics.record_purchase(status, code, elapsed);
    }
    metrics.record_http(&method, route, status, elapsed);
    response
}
