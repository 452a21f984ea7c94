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

use super::extract::{self, AcceptLanguage, JsonBody, PathParams, QueryParams, SubjectPath};
use super::problem::{ApiError, Problem, ProblemCode};
use crate::app::AppState;
use crate::render::{self, Locale, SuggestionOut};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RecQuery {
    /// How many suggestions (default 10).
    #[param(minimum = 1, maximum = 50)]
    pub k: Option<usize>,
    #[param(schema_with = crate::openapi::locale)]
    pub locale: Option<String>,
    /// Comma-separated service ids not to suggest.
    #[param(schema_with = crate::openapi::id_list)]
    pub exclude: Option<String>,
    /// Only services of this life stage.
    #[param(schema_with = crate::openapi::category)]
    pub category: Option<String>,
    #[param(schema_with = crate::openapi::mode)]
    pub mode: Option<String>,
}

/// Suggestions, ranked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Recommendations)]
pub(super) struct RecResponse<'a> {
    /// The subject asked about (none for sessions and popularity).
    subject: Option<&'a str>,
    /// The model version that ranked them.
    model: &'a str,
    #[schema(schema_with = crate::openapi::locale_tag)]
    locale: &'static str,
    #[schema(schema_with = crate::openapi::answer_mode)]
    mode: &'static str,
    /// Why the answer is not personalised, when it is not.
    #[schema(schema_with = crate::openapi::fallback)]
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

impl Ask {
    pub(super) fn k(&self) -> usize {
        self.k
    }

    pub(super) fn locale(&self) -> Locale {
        self.locale
    }
}

/// The `locale` parameter, else the `Accept-Language` header's choice, else zh-CN.
pub(super) fn parse_locale(s: Option<&str>, accept: AcceptLanguage) -> Result<Locale, ApiError> {
    match s {
        None => Ok(accept.0.unwrap_or_default()),
        Some(_) => Locale::parse(s).ok_or_else(|| ApiError::new(ProblemCode::BadLocale, "locale must be zh-CN or en")),
    }
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

pub(super) fn parse_ask(
    state: &AppState,
    q: &RecQuery,
    accept: AcceptLanguage,
    model: &tongban_model::Model,
) -> Result<Ask, ApiError> {
    let k = q.k.unwrap_or(10);
    if k == 0 || k > state.settings.max_k {
        return Err(ApiError::new(ProblemCode::BadK, format!("k must be 1 to {}", state.settings.max_k)));
    }
    let locale = parse_locale(q.locale.as_deref(), accept)?;
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

#[utoipa::path(get, path = "/v1/users/{id}/recommendations", tag = "portal",
    summary = "Top-k suggestions with reasons and guidance",
    description = "A subject without history, or who switched personalisation off, gets popularity in their \
                   segment; `fallback` says why. A store outage answers from popularity too.",
    params(SubjectPath, RecQuery,
        ("accept-language" = Option<String>, Header, description = "Used when `locale` is absent", pattern = "^[ -~]*$")),
    responses(
        (status = 200, description = "Suggestions", body = RecResponse),
        (status = 400, description = "A bad subject id, k, locale, category or mode", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "An excluded service is not in the catalogue", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn for_subject(
    State(state): State<Arc<AppState>>,
    PathParams(SubjectPath { id }): PathParams<SubjectPath>,
    QueryParams(q): QueryParams<RecQuery>,
    accept: AcceptLanguage,
) -> Result<Response, ApiError> {
    let subject = extract::subject(&id)?;
    let served = state.models.active();
    let ask = parse_ask(&state, &q, accept, &served.model)?;
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

/// An anonymous visitor's recent services.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Session)]
pub(super) struct SessionIn {
    /// Service ids the anonymous visitor looked at or applied for, oldest first.
    #[schema(schema_with = crate::openapi::recent)]
    recent: Vec<String>,
    #[schema(minimum = 1, maximum = 50)]
    k: Option<usize>,
    #[schema(schema_with = crate::openapi::locale)]
    locale: Option<String>,
    #[schema(schema_with = crate::openapi::id_list)]
    exclude: Option<String>,
    #[schema(schema_with = crate::openapi::category)]
    category: Option<String>,
}

#[utoipa::path(post, path = "/v1/sessions/recommendations", tag = "portal",
    summary = "Suggestions for an anonymous session from its recent services",
    params(("accept-language" = Option<String>, Header, description = "Used when `locale` is absent", pattern = "^[ -~]*$")),
    request_body = SessionIn,
    responses(
        (status = 200, description = "Suggestions", body = RecResponse),
        (status = 400, description = "A bad body, k, locale or category, or more than 100 recent services",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A service is not in the catalogue", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn for_session(
    State(state): State<Arc<AppState>>,
    accept: AcceptLanguage,
    JsonBody(body): JsonBody<SessionIn>,
) -> Result<Response, ApiError> {
    let served = state.models.active();
    let q = RecQuery { k: body.k, locale: body.locale, exclude: body.exclude, category: body.category, mode: None };
    let ask = parse_ask(&state, &q, accept, &served.model)?;
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
