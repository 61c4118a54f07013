//! Probes and metrics: `/healthz` (the process is up), `/readyz` (Redis answers and has our
//! scripts), `/metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use std::time::Instant;

use crate::readiness::Verdict;
use crate::state::AppState;
use flashsale_shared::connection;

use crate::error::{ApiError, Mutation, Unavailable};
use crate::openapi::ServerProblems;

/// Liveness: the process is up. Never touches Redis.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Up", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when Redis answers within the deadline as a primary that accepts writes (a probe
/// write: a full, read-only or misconfigured Redis refuses it), its eviction policy cannot
/// evict a live event's keys, every script is cached, and a worker has reconciled it with the
/// ledger since it started (the purchase script is loaded: the fence). A Redis that restarted
/// gets the other scripts loaded here; the purchase script only a worker loads. The answer is
/// at most about a second old (sooner after a request saw Redis fail).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        ServerProblems,
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    // Public and polled: answered from a check at most a second old, one per gateway however
    // many callers (see `crate::readiness`).
    let verdict = state.readiness().get(Instant::now(), || async { Verdict::of(check(&state).await) });
    verdict.await.into_result()?;
    Ok(Json(json!({"status": "ready"})))
}

/// One readiness check: a few Redis commands.
async fn check(state: &AppState) -> Result<(), ApiError> {
    let info = state
        .redis(Mutation::Read, |mut conn| async move {
            let info = connection::server_info(&mut conn).await?;
            if info.is_primary() {
                connection::probe_write(&mut conn).await?;
            }
            if !flashsale_shared::scripts::all_loaded(&mut conn).await? {
                flashsale_shared::scripts::load_all(&mut conn).await?;
            }
            let fenced = flashsale_shared::scripts::is_fenced(&mut conn).await?;
            Ok((info, fenced))
        })
        .await?;
    let (info, fenced) = info;
    let primary = info.is_primary();
    state.redis_status().record(info);
    if fenced {
        return Err(ApiError::Unavailable {
            why: Unavailable::Reconciling,
            outcome_unknown: false,
            cause: "the purchase script is not loaded: no worker has reconciled Redis yet".into(),
        });
    }
    if !primary {
        return Err(ApiError::Unavailable {
            why: Unavailable::ReadOnly,
            outcome_unknown: false,
            cause: "Redis is a replica".into(),
        });
    }
    state.may_sell().await
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics().render())
}
