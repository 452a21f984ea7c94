//! The OpenAPI 3.1 document, generated from the types: every handler carries a
//! `#[utoipa::path]` annotation, every wire type derives `ToSchema` or `IntoParams`, and the one
//! route table in [`crate::http::router`] feeds both the router and this document
//! (utoipa-axum), so a route cannot be served undocumented or documented unserved.
//!
//! Closed sets (event kinds, channels, locales, life stages, triggers, problem codes...) are
//! taken from the domain's own `ALL` lists by the `schema_with` functions below, so the document
//! cannot drift from what the server accepts. Two facts are known only at run time and are
//! patched in by [`finish`]: whether API keys are configured (an open server declares no
//! security), and the configured largest `k`.

use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, Schema};
use utoipa::{Modify, OpenApi as _};

use tongban_features::catalogue::Stage;
use tongban_features::domain::{Channel, EventKind, ID_PATTERN};
use tongban_model::reason;

use crate::http::problem::ProblemCode;
use crate::locale::Locale;
use crate::push::{Outbound, Skip, Trigger};
use crate::queue::Status;

/// The tags of the route groups, each with the key scope it needs ("ops" needs none).
pub const SCOPED_TAGS: [(&str, &str); 3] = [("portal", "portal"), ("ingest", "ingest"), ("operator", "operator")];

fn strings<S: Into<String>>(values: impl IntoIterator<Item = S>, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.into_iter().map(Into::into)))
        .description(Some(description))
        .build()
}

fn array_of(items: Object, description: &str) -> RefOr<Schema> {
    ArrayBuilder::new().items(items).description(Some(description)).build().into()
}

/// A subject, service or event id.
pub fn id() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(64))
        .description(Some("An id: ASCII letters, digits and . _ : -, at most 64 characters"))
        .build()
}

pub fn event_kind() -> Object {
    strings(EventKind::ALL.iter().map(|k| k.as_str()), "What happened")
}

pub fn channel() -> Object {
    strings(Channel::ALL.iter().map(|c| c.as_str()), "Where it happened (default: web)")
}

/// A `locale` parameter.
pub fn locale() -> Object {
    strings(
        Locale::ACCEPTED.iter().map(|(tag, _)| *tag),
        "The answer's language (absent: from Accept-Language, else zh-CN)",
    )
}

/// The language an answer is in.
pub fn locale_tag() -> Object {
    strings(Locale::ALL.iter().map(|l| l.tag()), "The language of the answer")
}

pub fn stage() -> Object {
    strings(Stage::ALL.iter().map(|s| s.as_str()), "A life stage (category of services)")
}

pub fn stages() -> RefOr<Schema> {
    array_of(stage(), "Life stages")
}

pub fn outbound() -> RefOr<Schema> {
    array_of(
        strings(Outbound::ALL.iter().map(|c| c.as_str()), "An outbound channel"),
        "Outbound channels allowed besides the portal inbox",
    )
}

pub fn trigger() -> Object {
    strings(Trigger::ALL.iter().map(|t| t.as_str()), "Why the push was made")
}

/// A trigger, or null when unknown.
pub fn trigger_or_null() -> Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(
            Trigger::ALL.iter().map(|t| serde_json::Value::from(t.as_str())).chain([serde_json::Value::Null]),
        ))
        .description(Some("Why the push was made (null: unreadable entry)"))
        .build()
}

pub fn status() -> Object {
    strings(Status::ALL.iter().map(|s| s.as_str()), "Where the push is")
}

pub fn reasons() -> RefOr<Schema> {
    array_of(strings(reason::CODES.iter().copied(), "A reason code"), "Why the service is suggested")
}

pub fn problem_code() -> Object {
    strings(ProblemCode::ALL.iter().map(|c| c.as_str()), "A stable code for the failure")
}

pub fn skips() -> Object {
    let mut b = ObjectBuilder::new().description(Some("Subjects skipped, by reason"));
    for s in Skip::ALL {
        b = b.property(s.as_str(), ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)));
    }
    b.build()
}

/// A life stage filter, as a query parameter.
pub fn category() -> Object {
    stage()
}

pub fn segment() -> Object {
    strings(
        (0..tongban_features::io::SEGMENTS as u16).map(tongban_features::io::segment_name),
        "A segment, e.g. person:30-39 or enterprise:S (default: the first)",
    )
}

pub fn mode() -> Object {
    strings(["personalised", "personalized", "popular"], "personalised (default) or popular")
}

pub fn feedback_action() -> Object {
    strings(["clicked", "dismissed", "done_elsewhere", "rated"], "What the subject did")
}

/// A comma-separated list of service ids.
pub fn id_list() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^([A-Za-z0-9._:-]{1,64}(,[A-Za-z0-9._:-]{1,64})*)?$"))
        .description(Some("Comma-separated service ids"))
        .build()
}

/// Quiet hours: `[start, end)` in local hours, or null.
pub fn quiet_hours() -> RefOr<Schema> {
    let hour = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).maximum(Some(23));
    ArrayBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::Array, Type::Null]))
        .items(hour)
        .min_items(Some(2))
        .max_items(Some(2))
        .description(Some("Quiet hours in local time, [start, end), e.g. [22, 8]; null: none"))
        .build()
        .into()
}

/// An anonymous session's recent services.
pub fn recent() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(id())
        .max_items(Some(100))
        .description(Some("Service ids looked at or applied for, oldest first (at most 100)"))
        .build()
        .into()
}

/// How an answer was ranked.
pub fn answer_mode() -> Object {
    strings(["personalised", "popular"], "personalised, or popular")
}

/// Why an answer is not personalised (null when it is).
pub fn fallback() -> Object {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(
            ["no_history", "personalisation_off", "store_unavailable"]
                .into_iter()
                .map(serde_json::Value::from)
                .chain([serde_json::Value::Null]),
        ))
        .description(Some("Why the answer is not personalised; null when it is"))
        .build()
}

/// A timestamp: RFC 3339.
pub fn timestamp() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime)))
        .description(Some("RFC 3339 (default: now); at most a day ahead of the server's clock"))
        .build()
}

/// `/docs`: Swagger UI reading `/openapi.json`, its assets inside the binary.
pub fn docs_ui<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    utoipa_swagger_ui::SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")).into()
}

/// What the document says beside its paths: title, the problem body, the key scheme.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "tongban",
        description = "Recommendation and proactive guidance API of a one-stop government services portal. \
                       Errors are application/problem+json with a stable code. API keys belong on the \
                       portal's backend, never in browsers.",
    ),
    components(schemas(crate::http::problem::Problem)),
    modifiers(&KeyScheme),
    tags(
        (name = "portal", description = "Suggestions, guidance, preferences and the inbox (portal key)"),
        (name = "ingest", description = "Events, feedback and erasure (ingest key)"),
        (name = "operator", description = "Models, push records, the queue and campaigns (operator key)"),
        (name = "ops", description = "Health, readiness, metrics and this document (no key)"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug)]
struct KeyScheme;

impl Modify for KeyScheme {
    fn modify(&self, api: &mut OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("apiKey", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

/// The base document the route table's paths are merged into.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// A problem answer, for the responses every route can give.
fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    let content =
        utoipa::openapi::ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("Problem")));
    utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content.build())
        .build()
        .into()
}

/// Completes the route table's document with what is known at run time. `open`: no API keys are
/// configured, so no route asks for one (the document says what this server does, not what a
/// keyed deployment would). `max_k`: the largest `k` this server accepts.
pub fn finish(mut api: OpenApi, open: bool, max_k: usize) -> OpenApi {
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    for item in api.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            let scope = op.tags.iter().flatten().find_map(|t| SCOPED_TAGS.iter().find(|(tag, _)| tag == t));
            let mut common = vec![
                ("500", "An internal error (the cause is logged, never answered)"),
                ("504", "The request took too long; nothing is known to be stored"),
            ];
            if op.request_body.is_some() {
                common.push(("413", "The body is larger than the server's limit"));
            }
            if scope.is_some() {
                common.push(("503", "The store is unavailable, or lost its data; retry later"));
                if !open {
                    common.push(("401", "No API key, or an unknown one"));
                    common.push(("403", "The key may not use this route"));
                    common.push(("429", "Too many requests for this key"));
                }
            }
            for (code, description) in common {
                op.responses.responses.entry(code.to_owned()).or_insert_with(|| problem(description));
            }
            if let Some((_, scope)) = scope {
                if !open {
                    op.security = Some(vec![SecurityRequirement::new("apiKey", Vec::<String>::new())]);
                    let text = format!("Needs an API key of scope `{scope}` (or operator).");
                    op.description = Some(match op.description.take() {
                        Some(d) => format!("{d}\n\n{text}"),
                        None => text,
                    });
                }
            }
            for p in op.parameters.iter_mut().flatten() {
                if let RefOr::T(p) = p {
                    if p.name != "k" {
                        continue;
                    }
                    if let Some(RefOr::T(Schema::Object(o))) = p.schema.as_mut() {
                        o.maximum = Some(utoipa::Number::UInt(max_k));
                    }
                }
            }
        }
    }
    if open {
        if let Some(c) = api.components.as_mut() {
            c.security_schemes.clear();
        }
    }
    api
}
