//! `GET /v1/users/{id}/recommendations`, `POST /v1/sessions/recommendations`, and the answer
//! they share with `GET /v1/services/popular`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tongban_features::catalogue::Stage;
use tongban_features::domain::{Channel, EventKind};
use tongban_features::io::LogEvent;
use tongban_features::profile::Profile;
use tongban_features::time::Timestamp;
use tongban_model::{reason, Request as ModelRequest};

use super::extract::{self, JsonBody, PathParams, QueryParams};
use super::problem::{ApiError, ProblemCode};
use crate::app::AppState;
use crate::render::{self, Locale, SuggestionOut};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecQuery {
    pub k: Option<usize>,
    pub locale: Option<String>,
    /// Comma-separated service ids.
    pub exclude: Option<String>,
    pub category: Option<String>,
    /// `personalised` (default) or `popular`.
    pub mode: Option<String>,
}

#[derive(Debug, Serialize)]
struct RecResponse<'a> {
    subject: Option<&'a str>,
    model: &'a str,
    locale: &'static str,
    mode: &'static str,
    /// Why the answer is not personalised, when it is not.
    fallback: Option<&'static str>,
    suggestions: Vec<SuggestionOut<'a>>,
}

/// What a request asks for, validated.
pub(super) struct Ask {
    k: usize,
    locale: Locale,
    exclude: Vec<u32>,
    category: Option<Stage>,
    personalised: bool,
}

pub(super) fn parse_locale(s: Option<&str>) -> Result<Locale, ApiError> {
    Locale::parse(s).ok_or_else(|| ApiError::new(ProblemCode::BadLocale, "locale must be zh-CN or en"))
}

fn parse_category(s: Option<&str>) -> Result<Option<Stage>, ApiError> {
    let Some(s) = s else { return Ok(None) };
    Stage::ALL.iter().copied().find(|st| st.as_str() == s).map(Some).ok_or_else(|| {
        ApiError::new(
            ProblemCode::BadCategory,
            format!("unknown category {s:?}; expected a life stage such as birth, housing, market_entry"),
        )
    })
}

pub(super) fn parse_ask(state: &AppState, q: &RecQuery, model: &tongban_model::Model) -> Result<Ask, ApiError> {
    let k = q.k.unwrap_or(10);
    if k == 0 || k > state.settings.max_k {
        return Err(ApiError::new(ProblemCode::BadK, format!("k must be 1 to {}", state.settings.max_k)));
    }
    let locale = parse_locale(q.locale.as_deref())?;
    let mut exclude = Vec::new();
    for id in q.exclude.as_deref().unwrap_or("").split(',').filter(|s| !s.is_empty()) {
        match model.lookup(id) {
            Some(i) => exclude.push(i),
            None => return Err(ApiError::new(ProblemCode::UnknownService, format!("exclude: unknown service {id:?}"))),
        }
    }
    exclude.sort_unstable();
    let personalised = match q.mode.as_deref() {
        None | Some("personalised") | Some("personalized") => true,
        Some("popular") => false,
        Some(m) => {
            return Err(ApiError::new(ProblemCode::BadMode, format!("mode {m:?}: expected personalised or popular")))
        }
    };
    Ok(Ask { k, locale, exclude, category: parse_category(q.category.as_deref())?, personalised })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Option<(usize, tongban_model::ScoreScratch)>> = const { std::cell::RefCell::new(None) };
}

/// Scores and renders the answer for a profile.
pub(super) fn suggest(
    state: &AppState,
    profile: &Profile,
    ask: &Ask,
    personalised: bool,
    fallback: Option<&'static str>,
    subject: Option<&str>,
) -> Response {
    let served = state.models.active();
    let model = &served.model;
    let req = ModelRequest { k: ask.k, exclude: &ask.exclude, personalised, category: ask.category, audience: None };
    let now = state.now();
    let sugs = SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        let n = model.service_count();
        if cell.as_ref().is_none_or(|(size, _)| *size != n) {
            *cell = Some((n, model.scratch()));
        }
        let (_, scratch) = cell.as_mut().expect("just set");
        model.recommend(profile, &req, now, scratch)
    });
    let portal = &state.settings.portal_url;
    let suggestions = match model.catalogue() {
        Some(cat) => sugs
            .iter()
            .filter_map(|s| {
                Some(SuggestionOut {
                    service: served.guidance(s.service, ask.locale, portal, &state.templates)?,
                    score: s.score,
                    reasons: reason::codes(s.reasons).collect(),
                    reason_text: render::reason_text(cat, &state.templates, s, Some(profile), ask.locale),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    // Serialised here: the suggestions borrow the served model's catalogue.
    Json(RecResponse {
        subject,
        model: &served.version,
        locale: ask.locale.tag(),
        mode: if req.personalised { "personalised" } else { "popular" },
        fallback,
        suggestions,
    })
    .into_response()
}

pub(super) async fn for_subject(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<RecQuery>,
) -> Result<Response, ApiError> {
    let subject = extract::subject(&id)?;
    let served = state.models.active();
    let ask = parse_ask(&state, &q, &served.model)?;
    let segment = state.segment(subject.as_str());
    // A store outage must not take suggestions down: answer from popularity instead.
    let (profile, fallback, opted_out) = match state.store.profile_and_prefs(&subject).await {
        Ok((p, prefs)) => {
            let opted_out = prefs.is_some_and(|p| !p.personalised);
            match p {
                Some(p) => (p, opted_out.then_some("personalisation_off"), opted_out),
                None => (Profile::new(segment), Some("no_history"), opted_out),
            }
        }
        Err(e) => {
            state.metrics.store_error();
            tracing::warn!(error = %e, "store read failed, answering from popularity");
            (Profile::new(segment), Some("store_unavailable"), false)
        }
    };
    // Unknown subjects still get a useful answer: the model with an empty profile ranks by
    // segment popularity and open deadlines; `fallback` says why it is not personal. A subject
    // who switched personalisation off gets popularity only.
    let personalised = ask.personalised && !opted_out && fallback != Some("store_unavailable");
    Ok(suggest(&state, &profile, &ask, personalised, fallback, Some(subject.as_str())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SessionIn {
    /// Service ids the anonymous visitor looked at or applied for, oldest first.
    recent: Vec<String>,
    k: Option<usize>,
    locale: Option<String>,
    exclude: Option<String>,
    category: Option<String>,
}

pub(super) async fn for_session(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<SessionIn>,
) -> Result<Response, ApiError> {
    let served = state.models.active();
    let q = RecQuery { k: body.k, locale: body.locale, exclude: body.exclude, category: body.category, mode: None };
    let ask = parse_ask(&state, &q, &served.model)?;
    if body.recent.len() > 100 {
        return Err(ApiError::new(ProblemCode::TooMany, "recent: at most 100 services"));
    }
    let ctx = served.model.profile_context();
    let mut profile = Profile::new(0);
    let now = state.now();
    for (i, id) in body.recent.iter().enumerate() {
        let s = served.model.lookup(id).ok_or_else(|| {
            ApiError::new(ProblemCode::UnknownService, format!("recent[{i}]: unknown service {id:?}"))
        })?;
        let at = now - (body.recent.len() - i) as i64;
        let event = LogEvent {
            id: i as u64,
            subject: 0,
            service: s,
            kind: EventKind::Applied,
            rating: 0,
            channel: Channel::Web,
            at: Timestamp(at),
        };
        profile.apply(&event, &ctx);
    }
    Ok(suggest(&state, &profile, &ask, true, None, None))
}
