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
    let mut openapi = openapi_document();
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

/// The OpenAPI document of every route, whichever listener serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    public_routes().merge(admin_routes()).split_for_parts().1
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

#[cfg(test)]
mod tests {
    use crate::error::{PROBLEM_JSON, ProblemCode};

    /// Every error response of the document is a problem, names at least one code, and each
    /// code it names answers with that response's status.
    #[test]
    fn every_documented_problem_has_the_status_of_its_code() {
        let document = serde_json::to_value(super::openapi_document()).unwrap();
        let mut checked = 0;
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if !status.starts_with('4') && !status.starts_with('5') {
                        continue;
                    }
                    let what = format!("{method} {path} {status}");
                    assert!(response["content"][PROBLEM_JSON].is_object(), "{what}: not a problem");
                    let description = response["description"].as_str().unwrap();
                    let named: Vec<_> = ProblemCode::ALL
                        .into_iter()
                        .filter(|code| description.contains(&format!("`{}`", code.spec().code)))
                        .collect();
                    assert!(!named.is_empty(), "{what} names no problem code: {description}");
                    for code in named {
                        assert_eq!(code.spec().status.as_str(), status, "{what}: {code:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 50, "only {checked} documented problems");
    }
}
