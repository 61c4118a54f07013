//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and
//! served at `/openapi.json`. Routes and document come from one list in `router.rs`, so an
//! undocumented route cannot exist; problem responses come from groups of [`ProblemCode`]s
//! ([`crate::problems!`]), so they cannot disagree with what the gateway answers.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Object, Ref, RefOr, Response, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi};

use crate::error::{PROBLEM_JSON, Problem, ProblemCode, ProblemSpec};

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

/// The problem responses of `entries` (a code, and optionally what it means on this route
/// instead of the table's `when`), one response per status: the codes answering with it, each
/// with when, the headers the table gives them, and the [`Problem`] schema. Status, codes and
/// headers come from [`ProblemCode::spec`] only, so the document cannot disagree with what the
/// gateway answers.
pub fn problem_responses(entries: &[(ProblemCode, Option<&str>)]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<(ProblemSpec, &str)>> = BTreeMap::new();
    for (code, when) in entries {
        let spec = code.spec();
        by_status.entry(spec.status.as_u16()).or_default().push((spec, when.unwrap_or(spec.when)));
    }
    by_status
        .into_iter()
        .map(|(status, problems)| {
            let description =
                problems.iter().map(|(spec, when)| format!("`{}`: {when}", spec.code)).collect::<Vec<_>>();
            let mut response = ResponseBuilder::new().description(description.join("\n\n")).content(
                PROBLEM_JSON,
                ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
            );
            for header in problems.iter().filter_map(|(spec, _)| spec.header) {
                let doc = HeaderBuilder::new()
                    .schema(Some(Object::with_type(Type::String)))
                    .description(Some(header.description()))
                    .build();
                response = response.header(header.display_name(), doc);
            }
            (status.to_string(), RefOr::T(response.build()))
        })
        .collect()
}

/// Declares a group of problem responses for `#[utoipa::path(responses(...))]`: a type whose
/// `IntoResponses` is [`problem_responses`] of its codes (`Code` or `Code => "when, here"`).
/// Groups listed on one route must not share a status (the later one would replace it).
#[macro_export]
macro_rules! problems {
    ($(#[$meta:meta])* $vis:vis $name:ident { $($code:ident $(=> $when:literal)?),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::openapi::problem_responses(&[$((
                    $crate::error::ProblemCode::$code,
                    None::<&str>$(.or(Some($when)))?,
                )),+])
            }
        }
    };
}

problems! {
    /// The admin routes' refusal, written once.
    pub AdminProblems { Unauthorized => "Missing or wrong admin token (`WWW-Authenticate: Bearer`)." }
}

problems! {
    /// Problems of the buyer routes: a refused buyer token, a rate limit.
    pub BuyerProblems {
        Unauthorized => "No buyer token, or one that is malformed, badly signed, expired, not yet \
                         valid, or for another issuer or audience (with `BUYER_AUTH=jwt`).",
        RateLimited,
    }
}

problems! {
    /// The rate limit of public routes without a buyer: per client address.
    pub ClientProblems { RateLimited => "Too many requests from this client address; nothing was changed." }
}

problems! {
    /// Problems any route may answer: Redis unreachable or slow (503, with `Retry-After`), and
    /// the opaque 500 a bug would produce.
    pub ServerProblems { Unavailable, Internal }
}

problems! {
    /// Problems of routes whose path names an event (or one of its entries): a malformed id.
    pub PathProblems { InvalidFields => "A path segment is not a valid id (see `invalid_params`)." }
}

problems! {
    /// Any field (of the path, the query or the body) that is invalid.
    pub InvalidProblems { InvalidFields }
}

problems! {
    /// Problems of routes that take a query string: one that cannot be parsed.
    pub QueryProblems { BadRequest }
}

problems! {
    /// Problems of routes that take a JSON body (and headers).
    pub BodyProblems { MalformedJson, InvalidHeader, PayloadTooLarge, UnsupportedMediaType, InvalidFields }
}

problems! {
    /// A path naming an event that does not exist.
    pub EventProblems { EventNotFound }
}
