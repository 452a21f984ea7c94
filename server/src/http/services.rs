//! `/v1/services`: guidance for one service, related services, the popular ones.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tongban_features::profile::Profile;

use super::extract::{PathParams, QueryParams};
use super::problem::{ApiError, ProblemCode};
use super::recommendations::{parse_ask, parse_locale, suggest, RecQuery};
use crate::app::{related, AppState};
use crate::render;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LocaleQuery {
    locale: Option<String>,
    k: Option<usize>,
    segment: Option<String>,
}

pub(super) async fn guidance(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<LocaleQuery>,
) -> Result<Response, ApiError> {
    let served = state.models.active();
    let cat = served.model.catalogue().ok_or_else(|| ApiError::not_found("catalogue"))?;
    let idx = cat.lookup(&id).ok_or_else(|| ApiError::not_found(format!("service {id:?}")))?;
    let locale = parse_locale(q.locale.as_deref())?;
    Ok(Json(render::service(cat, &state.templates, idx, locale, &state.settings.portal_url)).into_response())
}

pub(super) async fn related_services(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<LocaleQuery>,
) -> Result<Json<Value>, ApiError> {
    let served = state.models.active();
    let model = &served.model;
    let cat = model.catalogue().ok_or_else(|| ApiError::not_found("catalogue"))?;
    let idx = cat.lookup(&id).ok_or_else(|| ApiError::not_found(format!("service {id:?}")))?;
    let k = q.k.unwrap_or(10).clamp(1, state.settings.max_k);
    let locale = parse_locale(q.locale.as_deref())?;
    let portal = &state.settings.portal_url;
    let out: Vec<Value> = related::related(model, idx, k)
        .into_iter()
        .map(|(score, s)| json!({ "service": render::service(cat, &state.templates, s, locale, portal), "score": score }))
        .collect();
    Ok(Json(json!({ "service": id, "related": out })))
}

pub(super) async fn popular(
    State(state): State<Arc<AppState>>,
    QueryParams(q): QueryParams<LocaleQuery>,
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
    let ask = parse_ask(&state, &rq, &served.model)?;
    Ok(suggest(&state, &Profile::new(segment), &ask, false, None, None))
}
