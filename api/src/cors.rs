//! CORS for browsers calling the API from a merchant's pages (`CORS_ALLOWED_ORIGINS`; off by
//! default: no CORS header at all). tower-http's layer answers preflight requests (`OPTIONS`
//! with `Access-Control-Request-Method`) itself and adds `Access-Control-Allow-Origin` for
//! allowed origins to every other answer, errors included. No credentials mode: buyers
//! authenticate with a bearer token, never a cookie, so `*` cannot hand a session to
//! another site.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsOrigins;

/// How long a browser may cache a preflight answer.
pub const MAX_AGE: Duration = Duration::from_secs(600);

pub fn layer(origins: &CorsOrigins) -> CorsLayer {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => {
            AllowOrigin::list(list.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()))
        }
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            crate::observe::REQUEST_ID,
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            HeaderName::from_static("idempotent-replayed"),
            crate::observe::REQUEST_ID,
        ])
        .max_age(MAX_AGE)
}
