//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and
//! served at `/openapi.json`. Routes and document come from one list in [`crate::router`],
//! so an undocumented route cannot exist.

use utoipa::openapi::security::{Http, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "flashsale",
        description = "Flash sales without overselling: atomic purchases with idempotent retries, \
                       asynchronous confirmation. Every error is an RFC 9457 problem document \
                       (`application/problem+json`) with a machine-readable `code`.",
        license(name = "MIT")
    ),
    tags(
        (name = "purchases", description = "Buying, and polling what was bought."),
        (name = "events", description = "Sales: configuration (admin) and live counters."),
        (name = "operations", description = "Probes and metrics."),
    ),
    components(schemas(Problem)),
    modifiers(&SecuritySchemes)
)]
pub struct ApiDoc;

/// Declares the bearer schemes routes reference: `admin_token` (admin routes) and
/// `buyer_token` (a JWT: purchases and orders, with `BUYER_AUTH=jwt`).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let buyer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme(BUYER_TOKEN, SecurityScheme::Http(buyer));
    }
}

const BUYER_TOKEN: &str = "buyer_token";

/// With `BUYER_AUTH=none` the buyer routes take no token: the document says so (an empty
/// requirement), so that it describes this gateway as configured.
pub fn buyer_routes_public(openapi: &mut utoipa::openapi::OpenApi) {
    let buyer = SecurityRequirement::new(BUYER_TOKEN, Vec::<String>::new());
    for item in openapi.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post, &mut item.put].into_iter().flatten() {
            if let Some(security) = &mut operation.security {
                for requirement in security.iter_mut().filter(|r| **r == buyer) {
                    *requirement = SecurityRequirement::default();
                }
            }
        }
    }
}

/// Problems of the buyer routes: a refused buyer token, a rate limit.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: never constructed
pub enum BuyerProblems {
    /// `unauthorized`: no buyer token, or one that is malformed, badly signed, expired, not
    /// yet valid, or for another issuer or audience (with `BUYER_AUTH=jwt`).
    #[response(status = 401, content_type = "application/problem+json",
               headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`")))]
    Unauthorized(Problem),
    /// `rate_limited`: too many requests from this buyer or client address; nothing changed.
    #[response(status = 429, content_type = "application/problem+json",
               headers(("Retry-After" = String, description = "Seconds to wait before retrying")))]
    RateLimited(Problem),
}

/// Problems any route may answer: Redis unreachable or slow (503, with `Retry-After`), and
/// the opaque 500 a bug would produce.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: never constructed
pub enum ServerProblems {
    /// Redis unreachable or too slow; nothing changed unless `outcome_unknown` is true, and a
    /// retry of the same request is safe either way.
    #[response(status = 503, content_type = "application/problem+json",
               headers(("Retry-After" = String, description = "Seconds to wait before retrying")))]
    Unavailable(Problem),
    /// A bug; logged with its context on the server.
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
}

/// Problems of routes whose path names an event (or one of its entries): a malformed id.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: never constructed
pub enum PathProblems {
    /// `invalid_fields`: a path segment is not a valid id (see `invalid_params`).
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
}

/// Problems of routes that take a query string: one that cannot be parsed.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: never constructed
pub enum QueryProblems {
    /// `bad_request`: the query string is malformed (a repeated or non-numeric `limit`, ...).
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
}

/// Problems of routes that take a JSON body.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // a documentation type: never constructed
pub enum BodyProblems {
    /// The body is not JSON, or a header is malformed.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// The body is over 64 KiB.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The body is not `application/json`.
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// A field is invalid (`invalid_fields`; see `invalid_params`).
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
}
