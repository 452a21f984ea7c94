//! `/v1/services`: guidance for one service, related services, the popular ones.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tongban_features::io::fnv1a;
use tongban_features::profile::Profile;

use super::extract::{AcceptLanguage, PathParams, QueryParams, ServicePath};
use super::problem::{ApiError, Problem, ProblemCode};
use super::recommendations::{parse_ask, parse_locale, suggest, RecQuery};
use crate::app::{related, AppState};
use crate::render::{self, ServiceOut};

/// How long portals and caches may keep a catalogue or popularity answer. They change only
/// with the model, which the ETag names, so a revalidation after this is cheap (304).
const CACHE_CONTROL: &str = "max-age=300";

/// `locale` for guidance.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct GuidanceQuery {
    #[param(schema_with = crate::openapi::locale)]
    locale: Option<String>,
}

/// `locale` and `k` for related services.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RelatedQuery {
    #[param(schema_with = crate::openapi::locale)]
    locale: Option<String>,
    /// How many (default 10; larger values are cut to the server's largest k).
    #[param(minimum = 1)]
    k: Option<usize>,
}

/// `locale`, `k` and `segment` for the popular list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PopularQuery {
    #[param(schema_with = crate::openapi::locale)]
    locale: Option<String>,
    /// How many (default 10).
    #[param(minimum = 1, maximum = 50)]
    k: Option<usize>,
    #[param(schema_with = crate::openapi::segment)]
    segment: Option<String>,
}

/// Answers 304 when the caller holds the answer for this model, locale and query; else builds
/// it. Either way with the ETag and the cache lifetime.
fn cached(state: &AppState, headers: &HeaderMap, key: &str, build: impl FnOnce() -> Response) -> Response {
    let version = &state.models.active().version;
    let tag = format!("\"{:016x}\"", fnv1a(format!("{version}|{key}").as_bytes()));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().trim_start_matches("W/") == tag || t.trim() == "*"));
    let mut res = if matches { StatusCode::NOT_MODIFIED.into_response() } else { build() };
    let h = res.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex in quotes is a header value"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    h.insert(header::VARY, HeaderValue::from_static("accept-language"));
    res
}

#[utoipa::path(get, path = "/v1/services/{id}", tag = "portal", summary = "Catalogue entry with guidance",
    params(ServicePath, GuidanceQuery,
        ("accept-language" = Option<String>, Header, description = "Used when `locale` is absent", pattern = "^[ -~]*$"),
        ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer", pattern = "^[ -~]*$")),
    responses(
        (status = 200, description = "The service's guidance", body = ServiceOut,
            headers(("etag" = String, description = "Changes with the model and the language"))),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 400, description = "A bad locale", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such service", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn guidance(
    State(state): State<Arc<AppState>>,
    PathParams(ServicePath { id }): PathParams<ServicePath>,
    QueryParams(q): QueryParams<GuidanceQuery>,
    accept: AcceptLanguage,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let served = state.models.active();
    let cat = served.model.catalogue().ok_or_else(|| ApiError::not_found("catalogue"))?;
    let idx = cat.lookup(&id).ok_or_else(|| ApiError::not_found(format!("service {id:?}")))?;
    let locale = parse_locale(q.locale.as_deref(), accept)?;
    Ok(cached(&state, &headers, &format!("service|{id}|{}", locale.tag()), || {
        Json(render::service(cat, &state.templates, idx, locale, &state.settings.portal_url)).into_response()
    }))
}

/// Services needed around one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Related)]
pub(super) struct RelatedOut<'a> {
    /// The service asked about.
    service: &'a str,
    related: Vec<RelatedService<'a>>,
}

/// One related service, with how strongly it goes with the one asked about.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RelatedService<'a> {
    service: ServiceOut<'a>,
    score: f32,
}

#[utoipa::path(get, path = "/v1/services/{id}/related", tag = "portal", summary = "Services needed around this one",
    params(ServicePath, RelatedQuery,
        ("accept-language" = Option<String>, Header, description = "Used when `locale` is absent", pattern = "^[ -~]*$"),
        ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer", pattern = "^[ -~]*$")),
    responses(
        (status = 200, description = "Related services, the strongest first", body = RelatedOut,
            headers(("etag" = String, description = "Changes with the model, the language and k"))),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 400, description = "A bad locale or k", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such service", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn related_services(
    State(state): State<Arc<AppState>>,
    PathParams(ServicePath { id }): PathParams<ServicePath>,
    QueryParams(q): QueryParams<RelatedQuery>,
    accept: AcceptLanguage,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let served = state.models.active();
    let model = &served.model;
    let cat = model.catalogue().ok_or_else(|| ApiError::not_found("catalogue"))?;
    let idx = cat.lookup(&id).ok_or_else(|| ApiError::not_found(format!("service {id:?}")))?;
    let k = q.k.unwrap_or(10).clamp(1, state.settings.max_k);
    let locale = parse_locale(q.locale.as_deref(), accept)?;
    let portal = &state.settings.portal_url;
    Ok(cached(&state, &headers, &format!("related|{id}|{}|{k}", locale.tag()), || {
        let related = related::related(model, idx, k)
            .into_iter()
            .map(|(score, s)| RelatedService {
                service: render::service(cat, &state.templates, s, locale, portal),
                score,
            })
            .collect();
        Json(RelatedOut { service: &id, related }).into_response()
    }))
}

#[utoipa::path(get, path = "/v1/services/popular", tag = "portal",
    summary = "Non-personalised list, optionally for a segment",
    params(PopularQuery,
        ("accept-language" = Option<String>, Header, description = "Used when `locale` is absent", pattern = "^[ -~]*$"),
        ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer", pattern = "^[ -~]*$")),
    responses(
        (status = 200, description = "The most popular services", body = super::recommendations::RecResponse,
            headers(("etag" = String, description = "Changes with the model, the language, k and the segment"))),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 400, description = "A bad locale, k or segment", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn popular(
    State(state): State<Arc<AppState>>,
    QueryParams(q): QueryParams<PopularQuery>,
    accept: AcceptLanguage,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let segment = match q.segment.as_deref() {
        None => 0,
        Some(s) => (0..tongban_features::io::SEGMENTS as u16)
            .find(|&i| tongban_features::io::segment_name(i) == s)
            .ok_or_else(|| {
                ApiError::new(
                    ProblemCode::BadSegment,
                    format!("unknown segment {s:?}, e.g. person:30-39 or enterprise:S"),
                )
            })?,
    };
    let served = state.models.active();
    let rq = RecQuery { k: q.k, locale: q.locale.clone(), exclude: None, category: None, mode: Some("popular".into()) };
    let ask = parse_ask(&state, &rq, accept, &served.model)?;
    // Open deadlines rank too: the answer changes with the day as well as the model.
    let day = state.now().div_euclid(86_400);
    let key = format!("popular|{segment}|{}|{}|{day}", ask.locale().tag(), ask.k());
    Ok(cached(&state, &headers, &key, || suggest(&state, &Profile::new(segment), &ask, false, None, None)))
}
