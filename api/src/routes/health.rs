//! Probes and metrics: `/healthz` (the process is up), `/readyz` (Redis answers and has our
//! scripts), `/metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::openapi::ServerProblems;

/// Liveness: the process is up. Never touches Redis.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Redis answers within the deadline with every script cached; a Redis that
/// restarted empty gets the scripts loaded here, so readiness heals without a restart.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        ServerProblems,
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .redis(false, |mut conn| async move {
            if !flashsale_shared::scripts::all_loaded(&mut conn).await? {
                flashsale_shared::scripts::load_all(&mut conn).await?;
            }
            Ok(())
        })
        .await?;
    Ok(Json(json!({"status": "ready"})))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics().render())
}
