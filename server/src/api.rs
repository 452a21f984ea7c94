//! The HTTP API (v1, JSON): routes, wire types, authentication, errors.
//!
//! Wire types live here and are converted into domain types at the edge (`EventIn` ->
//! `LogEvent` after validating every field). Errors are JSON problem bodies with a stable
//! `code`; one exhaustive `match` maps them to statuses; 5xx bodies say nothing internal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tongban_features::catalogue::Stage;
use tongban_features::domain::{Channel, EventId, EventKind, Rating, ServiceId, SubjectId};
use tongban_features::io::{fnv1a, LogEvent};
use tongban_features::profile::Profile;
use tongban_features::time::Timestamp;
use tongban_model::{reason, Request as ModelRequest};

use crate::metrics::Metrics;
use crate::models::Models;
use crate::render::{self, Locale, SuggestionOut};
use crate::store::{Batch, Store, StoreError};

/// Limits and secrets of a running server.
#[derive(Clone)]
pub struct Settings {
    pub keys: ApiKeys,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    pub max_k: usize,
    pub portal_url: String,
    /// Server time source: `None` reads the clock; tests pin it.
    pub fixed_now: Option<i64>,
    /// Requests per second allowed per API key (burst: one second's worth); 0 = no limit.
    pub rate_per_key: u32,
    /// Push caps and lifetimes.
    pub caps: crate::push::Caps,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("keys", &self.keys)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keys: ApiKeys::default(),
            max_body_bytes: 1 << 20,
            max_batch: 1000,
            max_k: 50,
            portal_url: "https://zwfw.dl.gov.cn".into(),
            fixed_now: None,
            caps: crate::push::Caps::default(),
            rate_per_key: 0,
        }
    }
}

/// API keys by scope. With no key at all configured, the API is open (development only).
#[derive(Clone, Default)]
pub struct ApiKeys {
    pub portal: Vec<String>,
    pub ingest: Vec<String>,
    pub operator: Vec<String>,
}

impl std::fmt::Debug for ApiKeys {
    /// Never prints a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ApiKeys {{ portal: {}, ingest: {}, operator: {} }}",
            self.portal.len(),
            self.ingest.len(),
            self.operator.len()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Portal,
    Ingest,
    Operator,
}

/// Compares in time independent of where the strings differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

impl ApiKeys {
    pub fn is_open(&self) -> bool {
        self.portal.is_empty() && self.ingest.is_empty() && self.operator.is_empty()
    }

    /// The scopes a presented key holds (the operator key holds all).
    fn scopes(&self, key: &str) -> Vec<Scope> {
        let has = |list: &[String]| list.iter().fold(false, |acc, k| acc | ct_eq(k.as_bytes(), key.as_bytes()));
        let mut out = Vec::new();
        if has(&self.operator) {
            return vec![Scope::Portal, Scope::Ingest, Scope::Operator];
        }
        if has(&self.portal) {
            out.push(Scope::Portal);
        }
        if has(&self.ingest) {
            out.push(Scope::Ingest);
        }
        out
    }
}

/// Shared state of all handlers.
#[derive(Debug)]
pub struct AppState {
    pub models: Models,
    pub store: Arc<Store>,
    /// The delivery queue (pushes).
    pub queue: Arc<crate::queue::Queue>,
    pub settings: Settings,
    pub metrics: Metrics,
    /// Segments of known subjects (from an imported subjects file).
    pub segments: HashMap<String, u16>,
    /// Pushes: present when the model has a catalogue and templates were loaded.
    pub pusher: Option<Arc<crate::deliver::Pusher>>,
    /// Token buckets per API key (by a hash of the key, never the key itself).
    pub buckets: std::sync::Mutex<HashMap<u64, (f64, Instant)>>,
}

impl AppState {
    fn now(&self) -> i64 {
        self.settings.fixed_now.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
        })
    }
}

/// Every failure a request can meet.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    BadRequest(&'static str, String),
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("missing or unknown API key (send it in the x-api-key header)")]
    Unauthorized,
    #[error("this API key may not use this route")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(String),
    #[error("request body too large (the server's limit is set by --max-body-bytes)")]
    TooLarge,
    #[error("too many requests for this API key; retry after a second")]
    RateLimited,
    #[error("the store is unavailable; nothing was stored, retry later")]
    StoreUnavailable(#[source] StoreError),
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Contention => ApiError::StoreUnavailable(e),
            StoreError::Corrupt(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::BadRequest(c, _) => (StatusCode::BAD_REQUEST, *c),
            ApiError::Unprocessable(c, _) => (StatusCode::UNPROCESSABLE_ENTITY, *c),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if let ApiError::Internal(cause) | ApiError::StoreUnavailable(StoreError::Unavailable(cause)) = &self {
            eprintln!("error: {code}: {cause}");
        }
        let body = json!({
            "type": format!("https://tongban.example/problems/{code}"),
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "code": code,
            "detail": self.to_string(),
        });
        let mut r = (status, Json(body)).into_response();
        r.headers_mut().insert("content-type", HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        }
        r
    }
}

/// A token bucket per key: `rate` tokens a second, at most `rate` stored.
fn rate_check(state: &AppState, key: &str) -> Result<(), ApiError> {
    let rate = f64::from(state.settings.rate_per_key);
    if rate == 0.0 {
        return Ok(());
    }
    let now = Instant::now();
    let mut buckets = state.buckets.lock().expect("no panics while holding the lock");
    if buckets.len() > 10_000 {
        // Only configured keys reach here, so this bounds memory against a misconfiguration.
        buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
    }
    let (tokens, at) = buckets.entry(fnv1a(key.as_bytes())).or_insert((rate, now));
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
    *at = now;
    if *tokens < 1.0 {
        return Err(ApiError::RateLimited);
    }
    *tokens -= 1.0;
    Ok(())
}

fn parse_subject(id: &str) -> Result<SubjectId, ApiError> {
    SubjectId::parse(id).map_err(|e| ApiError::BadRequest("bad_subject", e.to_string()))
}

fn authorize(state: &AppState, headers: &HeaderMap, scope: Scope) -> Result<(), ApiError> {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    if state.settings.keys.is_open() {
        // Without keys, one bucket for everyone: a client cannot mint itself new buckets.
        return rate_check(state, "");
    }
    let key = key.ok_or(ApiError::Unauthorized)?;
    let scopes = state.settings.keys.scopes(key);
    if scopes.is_empty() {
        Err(ApiError::Unauthorized)
    } else if scopes.contains(&scope) {
        rate_check(state, key)
    } else {
        Err(ApiError::Forbidden)
    }
}

/// JSON body extraction with our problem bodies instead of axum's plain text.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge),
            Err(e) => Err(ApiError::BadRequest("bad_json", e.body_text())),
        }
    }
}

/// Query-string extraction with our problem bodies instead of axum's plain text.
struct QueryParams<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::BadRequest("bad_query", e.body_text()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecQuery {
    k: Option<usize>,
    locale: Option<String>,
    /// Comma-separated service ids.
    exclude: Option<String>,
    category: Option<String>,
    /// `personalised` (default) or `popular`.
    mode: Option<String>,
}

#[derive(Debug, Serialize)]
struct RecResponse<'a> {
    subject: Option<String>,
    model: String,
    locale: &'static str,
    mode: &'static str,
    /// Why the answer is not personalised, when it is not.
    fallback: Option<&'static str>,
    suggestions: Vec<SuggestionOut<'a>>,
}

fn parse_category(s: Option<&str>) -> Result<Option<Stage>, ApiError> {
    let Some(s) = s else { return Ok(None) };
    Stage::ALL.iter().copied().find(|st| st.as_str() == s).map(Some).ok_or_else(|| {
        ApiError::BadRequest(
            "bad_category",
            format!("unknown category {s:?}; expected a life stage such as birth, housing, market_entry"),
        )
    })
}

struct Ask {
    k: usize,
    locale: Locale,
    exclude: Vec<u32>,
    category: Option<Stage>,
    personalised: bool,
}

fn parse_ask(state: &AppState, q: &RecQuery, model: &tongban_model::Model) -> Result<Ask, ApiError> {
    let k = q.k.unwrap_or(10);
    if k == 0 || k > state.settings.max_k {
        return Err(ApiError::BadRequest("bad_k", format!("k must be 1 to {}", state.settings.max_k)));
    }
    let locale = Locale::parse(q.locale.as_deref())
        .ok_or_else(|| ApiError::BadRequest("bad_locale", "locale must be zh-CN or en".into()))?;
    let mut exclude = Vec::new();
    for id in q.exclude.as_deref().unwrap_or("").split(',').filter(|s| !s.is_empty()) {
        match model.lookup(id) {
            Some(i) => exclude.push(i),
            None => return Err(ApiError::Unprocessable("unknown_service", format!("exclude: unknown service {id:?}"))),
        }
    }
    exclude.sort_unstable();
    let personalised = match q.mode.as_deref() {
        None | Some("personalised") | Some("personalized") => true,
        Some("popular") => false,
        Some(m) => {
            return Err(ApiError::BadRequest("bad_mode", format!("mode {m:?}: expected personalised or popular")))
        }
    };
    Ok(Ask { k, locale, exclude, category: parse_category(q.category.as_deref())?, personalised })
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Option<(usize, tongban_model::ScoreScratch)>> = const { std::cell::RefCell::new(None) };
}

fn suggest(
    state: &AppState,
    profile: &Profile,
    ask: &Ask,
    personalised: bool,
    fallback: Option<&'static str>,
    subject: Option<String>,
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
    let suggestions = match model.catalogue() {
        Some(cat) => sugs
            .iter()
            .filter_map(|s| {
                Some(SuggestionOut {
                    service: served.guidance(s.service, ask.locale, &state.settings.portal_url)?,
                    score: s.score,
                    reasons: reason::codes(s.reasons).collect(),
                    reason_text: render::reason_text(cat, s, Some(profile), ask.locale),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    // Serialised here: the suggestions borrow the served model's catalogue.
    Json(RecResponse {
        subject,
        model: served.version.clone(),
        locale: ask.locale.tag(),
        mode: if req.personalised { "personalised" } else { "popular" },
        fallback,
        suggestions,
    })
    .into_response()
}

async fn recommendations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<RecQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let subject = parse_subject(&id)?;
    let served = state.models.active();
    let ask = parse_ask(&state, &q, &served.model)?;
    let segment = state.segments.get(subject.as_str()).copied().unwrap_or(0);
    // A store outage must not take suggestions down: answer from popularity instead.
    let (profile, fallback, opted_out) = match state.store.profile_and_prefs(subject.as_str()).await {
        Ok((p, prefs)) => {
            let opted_out = prefs.is_some_and(|p| !p.personalised);
            match p {
                Some(p) => (p, opted_out.then_some("personalisation_off"), opted_out),
                None => (Profile::new(segment), Some("no_history"), opted_out),
            }
        }
        Err(e) => {
            state.metrics.store_error();
            eprintln!("warning: store read failed, answering from popularity: {e}");
            (Profile::new(segment), Some("store_unavailable"), false)
        }
    };
    // Unknown subjects still get a useful answer: the model with an empty profile ranks by
    // segment popularity and open deadlines; `fallback` says why it is not personal. A subject
    // who switched personalisation off gets popularity only.
    let personalised = ask.personalised && !opted_out && fallback != Some("store_unavailable");
    Ok(suggest(&state, &profile, &ask, personalised, fallback, Some(subject.to_string())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionIn {
    /// Service ids the anonymous visitor looked at or applied for, oldest first.
    recent: Vec<String>,
    k: Option<usize>,
    locale: Option<String>,
    exclude: Option<String>,
    category: Option<String>,
}

async fn session_recommendations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SessionIn>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let served = state.models.active();
    let q = RecQuery { k: body.k, locale: body.locale, exclude: body.exclude, category: body.category, mode: None };
    let ask = parse_ask(&state, &q, &served.model)?;
    if body.recent.len() > 100 {
        return Err(ApiError::BadRequest("too_many", "recent: at most 100 services".into()));
    }
    let ctx = served.model.profile_context();
    let mut profile = Profile::new(0);
    let now = state.now();
    for (i, id) in body.recent.iter().enumerate() {
        let s = served.model.lookup(id).ok_or_else(|| {
            ApiError::Unprocessable("unknown_service", format!("recent[{i}]: unknown service {id:?}"))
        })?;
        let at = now - (body.recent.len() - i) as i64;
        profile.apply(
            &LogEvent {
                id: i as u64,
                subject: 0,
                service: s,
                kind: EventKind::Applied,
                rating: 0,
                channel: Channel::Web,
                at: Timestamp(at),
            },
            &ctx,
        );
    }
    Ok(suggest(&state, &profile, &ask, true, None, None))
}

/// One event on the wire.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    event_id: String,
    subject: String,
    service: String,
    kind: String,
    rating: Option<u8>,
    /// RFC 3339; default: now.
    at: Option<String>,
    channel: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EventsIn {
    Batch { events: Vec<EventIn> },
    One(EventIn),
}

struct Valid {
    id: String,
    subject: String,
    event: LogEvent,
}

fn validate(state: &AppState, model: &tongban_model::Model, i: usize, e: &EventIn) -> Result<Valid, ApiError> {
    let bad = |field: &str, msg: String| ApiError::BadRequest("bad_event", format!("events[{i}].{field}: {msg}"));
    let id = EventId::parse(&e.event_id).map_err(|x| bad("event_id", x.to_string()))?;
    let subject = SubjectId::parse(&e.subject).map_err(|x| bad("subject", x.to_string()))?;
    ServiceId::parse(&e.service).map_err(|x| bad("service", x.to_string()))?;
    let service = model.lookup(&e.service).ok_or_else(|| {
        ApiError::Unprocessable("unknown_service", format!("events[{i}].service: unknown service {:?}", e.service))
    })?;
    let kind = EventKind::parse(&e.kind).map_err(|x| bad("kind", x.to_string()))?;
    let rating = match (kind, e.rating) {
        (EventKind::Rated, Some(r)) => Rating::new(r).map_err(|x| bad("rating", x.to_string()))?.get(),
        (EventKind::Rated, None) => return Err(bad("rating", "a rated event needs a rating 1-5".into())),
        (_, Some(_)) => return Err(bad("rating", "only rated events carry a rating".into())),
        (_, None) => 0,
    };
    let at = match &e.at {
        Some(t) => Timestamp::parse(t).ok_or_else(|| bad("at", format!("expected RFC 3339, got {t:?}")))?,
        None => Timestamp(state.now()),
    };
    let channel = Channel::parse(e.channel.as_deref().unwrap_or("web")).map_err(|x| bad("channel", x.to_string()))?;
    Ok(Valid {
        id: id.as_str().to_owned(),
        subject: subject.as_str().to_owned(),
        event: LogEvent { id: fnv1a(id.as_str().as_bytes()), subject: 0, service, kind, rating, channel, at },
    })
}

/// Validates every event first (nothing is stored if one is bad), then applies them per subject.
async fn ingest(state: &AppState, events: Vec<EventIn>) -> Result<Value, ApiError> {
    if events.is_empty() {
        return Err(ApiError::BadRequest("empty_batch", "no events".into()));
    }
    if events.len() > state.settings.max_batch {
        return Err(ApiError::BadRequest(
            "batch_too_large",
            format!("at most {} events per request, got {}", state.settings.max_batch, events.len()),
        ));
    }
    let served = state.models.active();
    let valid: Vec<Valid> =
        events.iter().enumerate().map(|(i, e)| validate(state, &served.model, i, e)).collect::<Result<_, _>>()?;
    let mut by_subject: Vec<(&str, Vec<LogEvent>, Vec<String>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for v in &valid {
        let slot = *index.entry(&v.subject).or_insert_with(|| {
            by_subject.push((&v.subject, Vec::new(), Vec::new()));
            by_subject.len() - 1
        });
        by_subject[slot].1.push(v.event);
        by_subject[slot].2.push(v.id.clone());
    }
    let ctx = served.model.profile_context();
    let batches: Vec<Batch> = by_subject.iter().map(|(subject, events, ids)| Batch { subject, events, ids }).collect();
    let mut pushed = 0;
    let segments: Vec<u16> = by_subject.iter().map(|(s, _, _)| state.segments.get(*s).copied().unwrap_or(0)).collect();
    let done = state.store.apply_many(&batches, &segments, &ctx).await.inspect_err(|_| state.metrics.store_error())?;
    let accepted: usize = done.iter().map(|d| d.accepted).sum();
    let duplicates: usize = done.iter().map(|d| d.duplicates).sum();
    let too_late: usize = done.iter().map(|d| d.too_late).sum();
    // Triggers: a completed bundle step proposes its bundle's next steps. The events are stored
    // already; a failure here loses a push (reported), never an event.
    if let Some(pusher) = &state.pusher {
        let completed: Vec<(&str, Vec<u32>)> = batches
            .iter()
            .zip(&done)
            .filter(|(_, d)| d.accepted > 0)
            .map(|(b, _)| {
                (b.subject, b.events.iter().filter(|e| e.kind == EventKind::Completed).map(|e| e.service).collect())
            })
            .filter(|(_, c): &(&str, Vec<u32>)| !c.is_empty())
            .collect();
        let items: Vec<(&str, &[u32])> = completed.iter().map(|(s, c)| (*s, c.as_slice())).collect();
        if !items.is_empty() {
            match pusher.after_events_many(&items, Some(&served.model), &served.version).await {
                Ok(o) => {
                    pushed += o.queued;
                    for (_, skip) in &o.skipped {
                        state.metrics.push_skipped(*skip);
                    }
                }
                Err(e) => {
                    state.metrics.store_error();
                    eprintln!("warning: push trigger failed for {} subjects: {e}", items.len());
                }
            }
        }
    }
    state.metrics.events(accepted as u64);
    Ok(json!({ "accepted": accepted, "duplicates": duplicates, "too_late": too_late, "pushed": pushed }))
}

async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EventsIn>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Ingest)?;
    let events = match body {
        EventsIn::Batch { events } => events,
        EventsIn::One(e) => vec![e],
    };
    Ok(Json(ingest(&state, events).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackIn {
    event_id: String,
    subject: String,
    service: String,
    /// clicked, dismissed, done_elsewhere, rated
    action: String,
    rating: Option<u8>,
    at: Option<String>,
}

/// Feedback on a suggestion or push, stored as an event (done elsewhere counts as completed,
/// through the office channel).
async fn post_feedback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(f): JsonBody<FeedbackIn>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Ingest)?;
    let (kind, channel) = match f.action.as_str() {
        "clicked" => ("clicked", "web"),
        "dismissed" => ("dismissed", "web"),
        "done_elsewhere" => ("completed", "office"),
        "rated" => ("rated", "web"),
        a => {
            return Err(ApiError::BadRequest(
                "bad_action",
                format!("action {a:?}: expected clicked, dismissed, done_elsewhere or rated"),
            ))
        }
    };
    let e = EventIn {
        event_id: f.event_id,
        subject: f.subject,
        service: f.service,
        kind: kind.into(),
        rating: f.rating,
        at: f.at,
        channel: Some(channel.into()),
    };
    Ok(Json(ingest(&state, vec![e]).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocaleQuery {
    locale: Option<String>,
    k: Option<usize>,
    segment: Option<String>,
}

fn locale_of(q: &LocaleQuery) -> Result<Locale, ApiError> {
    Locale::parse(q.locale.as_deref())
        .ok_or_else(|| ApiError::BadRequest("bad_locale", "locale must be zh-CN or en".into()))
}

async fn service_guidance(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<LocaleQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let served = state.models.active();
    let cat = served.model.catalogue().ok_or_else(|| ApiError::NotFound("catalogue".into()))?;
    let idx = cat.lookup(&id).ok_or_else(|| ApiError::NotFound(format!("service {id:?}")))?;
    Ok(Json(render::service(cat, idx, locale_of(&q)?, &state.settings.portal_url)).into_response())
}

async fn related(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<LocaleQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let served = state.models.active();
    let model = &served.model;
    let cat = model.catalogue().ok_or_else(|| ApiError::NotFound("catalogue".into()))?;
    let idx = cat.lookup(&id).ok_or_else(|| ApiError::NotFound(format!("service {id:?}")))?;
    let k = q.k.unwrap_or(10).clamp(1, state.settings.max_k);
    let locale = locale_of(&q)?;
    // Services that follow it, then those used around it.
    let st = model.stats();
    let mut scored: Vec<(f32, u32)> = Vec::new();
    for e in st.trans1().row(idx) {
        scored.push((st.trans1().prob(idx, e.to), e.to));
    }
    let pop = st.pop(idx).max(1) as f32;
    for e in st.cooc().row(idx) {
        let v = e.count as f32 / pop * 0.5;
        match scored.iter_mut().find(|x| x.1 == e.to) {
            Some(x) => x.0 += v,
            None => scored.push((v, e.to)),
        }
    }
    scored.retain(|x| x.1 != idx);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let out: Vec<Value> = scored
        .iter()
        .take(k)
        .map(|&(score, s)| json!({ "service": render::service(cat, s, locale, &state.settings.portal_url), "score": score }))
        .collect();
    Ok(Json(json!({ "service": id, "related": out })))
}

async fn popular(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<LocaleQuery>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let segment = match q.segment.as_deref() {
        None => 0,
        Some(s) => (0..tongban_features::io::SEGMENTS as u16)
            .find(|&i| tongban_features::io::segment_name(i) == s)
            .ok_or_else(|| {
                ApiError::BadRequest("bad_segment", format!("unknown segment {s:?}, e.g. person:30-39 or enterprise:S"))
            })?,
    };
    let served = state.models.active();
    let rq = RecQuery { k: q.k, locale: q.locale.clone(), exclude: None, category: None, mode: Some("popular".into()) };
    let ask = parse_ask(&state, &rq, &served.model)?;
    Ok(suggest(&state, &Profile::new(segment), &ask, false, None, None))
}

async fn erase(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers, Scope::Ingest)?;
    let subject = parse_subject(&id)?;
    state.store.erase(subject.as_str()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_prefs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::push::Preferences>, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let subject = parse_subject(&id)?;
    Ok(Json(state.store.profile_and_prefs(subject.as_str()).await?.1.unwrap_or_default()))
}

async fn put_prefs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(prefs): JsonBody<crate::push::Preferences>,
) -> Result<Json<crate::push::Preferences>, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let subject = parse_subject(&id)?;
    prefs.check().map_err(|e| ApiError::BadRequest("bad_preferences", e))?;
    state.store.put_prefs(subject.as_str(), &prefs).await?;
    Ok(Json(prefs))
}

async fn get_inbox(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let subject = parse_subject(&id)?;
    let now = state.now();
    // Deferred (quiet hours) and expired messages are not shown.
    let messages: Vec<_> = state
        .store
        .inbox(subject.as_str())
        .await?
        .into_iter()
        .filter(|m| m.deliver_at <= now && m.expires_at > now)
        .collect();
    let unread = messages.iter().filter(|m| !m.read).count();
    Ok(Json(json!({ "subject": subject.as_str(), "unread": unread, "messages": messages })))
}

async fn read_message(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((id, msg)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers, Scope::Portal)?;
    let subject = parse_subject(&id)?;
    let inbox = state.store.inbox(subject.as_str()).await?;
    let Some(m) = inbox.iter().find(|m| m.id == msg) else {
        return Err(ApiError::NotFound(format!("message {msg:?}")));
    };
    state.store.mark_read(subject.as_str(), &msg).await?;
    // The open comes back as a signal on the message's first service (idempotent by its id).
    if let Some(service) = m.services.first() {
        let opened = EventIn {
            event_id: format!("{msg}-opened"),
            subject: subject.as_str().to_owned(),
            service: service.clone(),
            kind: "push_opened".into(),
            rating: None,
            at: None,
            channel: Some("push".into()),
        };
        ingest(&state, vec![opened]).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(json!({ "store": state.store.kind(), "model": state.models.active().version })))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = state.metrics.render(&state.models.active().version, state.store.kind());
    // Push counters live with the queue (in Redis: shared by every replica and worker).
    if let (Ok(counts), Ok(depth)) = (state.queue.counts().await, state.queue.depth().await) {
        crate::metrics::render_pushes(&mut body, &counts, &depth);
    }
    ([("content-type", "text/plain; version=0.0.4")], body)
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

async fn docs() -> axum::response::Html<String> {
    axum::response::Html(crate::openapi::html())
}

/// A static route of the same server, for load tests' side-by-side baseline.
async fn ping() -> &'static str {
    "pong"
}

async fn admin_models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Operator)?;
    Ok(Json(state.models.list()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateIn {
    path: String,
}

async fn admin_activate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ActivateIn>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Operator)?;
    let version = state
        .models
        .load_and_activate(std::path::Path::new(&body.path))
        .map_err(|e| ApiError::Unprocessable("bad_model", e.to_string()))?;
    Ok(Json(json!({ "active": version })))
}

async fn admin_rollback(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Operator)?;
    let version = state
        .models
        .rollback()
        .ok_or_else(|| ApiError::Unprocessable("no_previous", "no previous model to roll back to".into()))?;
    Ok(Json(json!({ "active": version })))
}

fn pusher(state: &AppState) -> Result<&Arc<crate::deliver::Pusher>, ApiError> {
    state.pusher.as_ref().ok_or_else(|| {
        ApiError::Unprocessable("no_pushes", "pushes need a model with a catalogue and templates".into())
    })
}

async fn admin_push(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<crate::queue::PushRecord>, ApiError> {
    authorize(&state, &headers, Scope::Operator)?;
    state.queue.record(&id).await?.map(Json).ok_or_else(|| ApiError::NotFound(format!("push {id:?}")))
}

async fn admin_queue(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers, Scope::Operator)?;
    let depth = state.queue.depth().await?;
    let dead: Vec<Value> = state
        .queue
        .dead_letters(20)
        .await?
        .into_iter()
        .map(|(job, reason)| match job {
            Some(job) => json!({ "id": job.message.id, "trigger": job.message.trigger, "attempts": job.attempts, "reason": reason }),
            None => json!({ "id": null, "reason": reason }),
        })
        .collect();
    Ok(Json(json!({ "backend": state.queue.kind(), "depth": depth, "dead_letters": dead })))
}

async fn admin_campaign(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<crate::deliver::CampaignIn>,
) -> Result<Json<crate::deliver::CampaignReport>, ApiError> {
    authorize(&state, &headers, Scope::Operator)?;
    let pusher = pusher(&state)?;
    if pusher.catalogue.lookup(&body.service).is_none() {
        return Err(ApiError::Unprocessable(
            "unknown_service",
            format!("service {:?} is not in the catalogue", body.service),
        ));
    }
    if body.n == 0 || body.n > 1_000_000 {
        return Err(ApiError::BadRequest("bad_n", format!("n: expected 1 to 1000000, got {}", body.n)));
    }
    if body.id.is_empty() || body.id.len() > 64 {
        return Err(ApiError::BadRequest("bad_id", "id: expected 1 to 64 characters".into()));
    }
    let served = state.models.active();
    Ok(Json(pusher.campaign(&served.model, &served.version, &body).await?))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route".into())
}

/// Counts requests and latency by route.
async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
    let started = Instant::now();
    let res = next.run(req).await;
    state.metrics.observe(route.as_ref().map_or("unmatched", |p| p.as_str()), res.status().as_u16(), started.elapsed());
    res
}

/// The application router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/v1/users/{id}/recommendations", get(recommendations))
        .route("/v1/users/{id}", axum::routing::delete(erase))
        .route("/v1/users/{id}/preferences", get(get_prefs).put(put_prefs))
        .route("/v1/users/{id}/inbox", get(get_inbox))
        .route("/v1/users/{id}/inbox/{msg}/read", post(read_message))
        .route("/v1/sessions/recommendations", post(session_recommendations))
        .route("/v1/events", post(post_events))
        .route("/v1/feedback", post(post_feedback))
        .route("/v1/services/popular", get(popular))
        .route("/v1/services/{id}", get(service_guidance))
        .route("/v1/services/{id}/related", get(related))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .route("/ping", get(ping))
        .route("/admin/models", get(admin_models).post(admin_activate))
        .route("/admin/models/rollback", post(admin_rollback))
        .route("/admin/pushes/{id}", get(admin_push))
        .route("/admin/queue", get(admin_queue))
        .route("/admin/campaigns", post(admin_campaign))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            std::time::Duration::from_secs(10),
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole_strings_and_debug_never_prints_them() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
        let keys = ApiKeys { portal: vec!["p-key".into()], ingest: vec![], operator: vec!["o-key".into()] };
        assert_eq!(keys.scopes("p-key"), vec![Scope::Portal]);
        assert_eq!(keys.scopes("o-key").len(), 3);
        assert!(keys.scopes("nope").is_empty());
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains("p-key") && !dbg.contains("o-key"), "{dbg}");
    }
}
