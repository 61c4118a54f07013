//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and
//! served at `/openapi.json`. Routes and document come from one list in [`crate::router`],
//! so an undocumented route cannot exist.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
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
    modifiers(&AdminToken)
)]
pub struct ApiDoc;

/// Declares the bearer scheme that admin routes reference as `admin_token`.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("admin_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
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
