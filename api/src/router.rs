//! Every route in one place, and the middleware every request goes through.
//!
//! The OpenAPI document (every route, whichever listener serves it) is generated from the
//! same lists of handlers and served at `/openapi.json`, so an undocumented route cannot
//! exist: each handler's `#[utoipa::path]` gives its method, path and responses.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::BODY_LIMIT;
use crate::error::ApiError;
use crate::routes::{control, dead_letters, events, health, orders, purchases};
use crate::state::AppState;
use crate::{observe, openapi};

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything (one listener, `ADMIN_LISTEN_ADDR` unset).
    All,
    /// What buyers use: purchases, order and event reads, probes, the OpenAPI document.
    Public,
    /// What operators use: event writes, sale control, listings, dead letters, `/metrics`
    /// (and the probes).
    Admin,
}

/// The routes of `which`, behind the gateway's middleware (see [`observed`]), and
/// `/openapi.json`.
pub fn router_for(which: Routes, state: AppState) -> Router {
    let (_, mut openapi) = public_routes().merge(admin_routes()).split_for_parts();
    if state.buyer_keys().is_none() {
        openapi::buyer_routes_public(&mut openapi);
    }
    let document = openapi.to_pretty_json().unwrap_or_default();
    let routes = match which {
        Routes::All => public_routes().merge(admin_routes()),
        Routes::Public => public_routes(),
        Routes::Admin => admin_routes().merge(probe_routes()),
    };
    let (routes, _) = routes.split_for_parts();
    let routes = routes.route(
        "/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], document) }),
    );
    observed(routes, state)
}

/// Every route on one listener.
pub fn router(state: AppState) -> Router {
    router_for(Routes::All, state)
}

/// `routes` with the middleware stack every request goes through (outermost first):
/// `observe` (request id, debug span, metrics, problem documents for every error and for a
/// panic, request timeout), then the body limit, and the problem-document fallback for
/// unknown routes. Public so that tests can put a route of their own (one that panics, say)
/// behind exactly the production stack.
pub fn observed(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::every_request))
        .with_state(state)
}

/// The routes buyers use.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(events::get_event))
        .routes(routes!(purchases::create))
        .routes(routes!(orders::get_order))
        .merge(probe_routes())
}

/// `/healthz` and `/readyz`, served on every listener.
fn probe_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health::healthz)).routes(routes!(health::readyz))
}

/// The routes operators use (every one but `/metrics` takes the admin token).
fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events::put_event))
        .routes(routes!(events::list_events))
        .routes(routes!(control::pause))
        .routes(routes!(control::resume))
        .routes(routes!(control::end))
        .routes(routes!(orders::list_orders))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::redrive))
        .routes(routes!(dead_letters::fail))
        .routes(routes!(health::metrics))
}
