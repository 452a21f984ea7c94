//! `POST /v1/events` and `POST /v1/feedback`: wire events -> validated domain events (every
//! field checked; nothing stored if one is bad) -> [`crate::app::ingest`].

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use tongban_features::domain::{Channel, EventId, EventKind, Rating, ServiceId, SubjectId};
use tongban_features::io::{fnv1a, LogEvent};
use tongban_features::time::Timestamp;

use super::extract::JsonBody;
use super::problem::{ApiError, Problem, ProblemCode};
use crate::app::{ingest, AppState, Ingested, NewEvent};

// Strings here, checked in `validate`, so that a bad value is named in a `bad_event` problem
// (`events[3].kind: ...`) rather than a parser's message.
/// One event.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Event)]
pub(super) struct EventIn {
    /// The sender's id of the event: a replay with the same id (for the same subject) is a
    /// duplicate.
    #[schema(schema_with = crate::openapi::id)]
    pub event_id: String,
    #[schema(schema_with = crate::openapi::id)]
    pub subject: String,
    #[schema(schema_with = crate::openapi::id)]
    pub service: String,
    #[schema(schema_with = crate::openapi::event_kind)]
    pub kind: String,
    /// 1-5, on `rated` events only.
    #[schema(minimum = 1, maximum = 5)]
    pub rating: Option<u8>,
    #[schema(schema_with = crate::openapi::timestamp)]
    pub at: Option<String>,
    #[schema(schema_with = crate::openapi::channel)]
    pub channel: Option<String>,
}

/// One event, or a batch of them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = Events)]
pub(super) enum EventsIn {
    Batch {
        /// At most the server's batch size (1,000 by default).
        #[schema(max_items = 1000, min_items = 1)]
        events: Vec<EventIn>,
    },
    One(EventIn),
}

fn validate(state: &AppState, model: &tongban_model::Model, i: usize, e: &EventIn) -> Result<NewEvent, ApiError> {
    let bad = |field: &str, msg: String| ApiError::new(ProblemCode::BadEvent, format!("events[{i}].{field}: {msg}"));
    let id = EventId::parse(&e.event_id).map_err(|x| bad("event_id", x.to_string()))?;
    let subject = SubjectId::parse(&e.subject).map_err(|x| bad("subject", x.to_string()))?;
    ServiceId::parse(&e.service).map_err(|x| bad("service", x.to_string()))?;
    let service = model.lookup(&e.service).ok_or_else(|| {
        ApiError::new(ProblemCode::UnknownService, format!("events[{i}].service: unknown service {:?}", e.service))
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
    // A clock ahead by a little is tolerated; an event far in the future would hold a place in
    // the profile window that every real event after it could never take back.
    let skew = state.settings.max_future_secs;
    if at.0 > state.now() + skew {
        return Err(ApiError::new(
            ProblemCode::EventInFuture,
            format!(
                "events[{i}].at: {} is more than {} s ahead of the server's clock ({}); events older than a \
                 subject's retained window are acknowledged as too_late",
                Timestamp(at.0),
                skew,
                Timestamp(state.now())
            ),
        ));
    }
    let channel = Channel::parse(e.channel.as_deref().unwrap_or("web")).map_err(|x| bad("channel", x.to_string()))?;
    let event = LogEvent { id: fnv1a(id.as_str().as_bytes()), subject: 0, service, kind, rating, channel, at };
    Ok(NewEvent { id: id.as_str().to_owned(), subject, event })
}

/// Validates every event first, then ingests them.
pub(super) async fn ingest_wire(state: &AppState, events: Vec<EventIn>) -> Result<Ingested, ApiError> {
    if events.is_empty() {
        return Err(ApiError::new(ProblemCode::EmptyBatch, "no events"));
    }
    if events.len() > state.settings.max_batch {
        return Err(ApiError::new(
            ProblemCode::BatchTooLarge,
            format!("at most {} events per request, got {}", state.settings.max_batch, events.len()),
        ));
    }
    let served = state.models.active();
    let valid: Vec<NewEvent> =
        events.iter().enumerate().map(|(i, e)| validate(state, &served.model, i, e)).collect::<Result<_, _>>()?;
    Ok(ingest::ingest(state, &served, &valid).await?)
}

#[utoipa::path(post, path = "/v1/events", tag = "ingest",
    summary = "Ingest one event or a batch ({\"events\": [...]}), idempotent by event_id per subject",
    description = "Every event is checked first; nothing is stored if one is bad. Completed bundle steps \
                   trigger next-step pushes.",
    request_body = EventsIn,
    responses(
        (status = 200, description = "What was stored", body = Ingested),
        (status = 400, description = "A bad body or event (the field is named), an empty or too large batch",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than the server's limit", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "A service is not in the catalogue, or an event is further ahead of the \
            server's clock than it allows (`event_in_future`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn post_events(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<EventsIn>,
) -> Result<Json<Ingested>, ApiError> {
    let events = match body {
        EventsIn::Batch { events } => events,
        EventsIn::One(e) => vec![e],
    };
    Ok(Json(ingest_wire(&state, events).await?))
}

/// Feedback on a suggestion or push.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Feedback)]
pub(super) struct FeedbackIn {
    #[schema(schema_with = crate::openapi::id)]
    event_id: String,
    #[schema(schema_with = crate::openapi::id)]
    subject: String,
    #[schema(schema_with = crate::openapi::id)]
    service: String,
    #[schema(schema_with = crate::openapi::feedback_action)]
    action: String,
    /// 1-5, with `rated` only.
    #[schema(minimum = 1, maximum = 5)]
    rating: Option<u8>,
    #[schema(schema_with = crate::openapi::timestamp)]
    at: Option<String>,
}

/// Feedback on a suggestion or push, stored as an event (done elsewhere counts as completed,
/// through the office channel).
#[utoipa::path(post, path = "/v1/feedback", tag = "ingest",
    summary = "Feedback on a suggestion or push: clicked, dismissed, done_elsewhere, rated",
    request_body = FeedbackIn,
    responses(
        (status = 200, description = "What was stored", body = Ingested),
        (status = 400, description = "A bad body, action or field (named)", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "The service is not in the catalogue", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn post_feedback(
    State(state): State<Arc<AppState>>,
    JsonBody(f): JsonBody<FeedbackIn>,
) -> Result<Json<Ingested>, ApiError> {
    let (kind, channel) = match f.action.as_str() {
        "clicked" => ("clicked", "web"),
        "dismissed" => ("dismissed", "web"),
        "done_elsewhere" => ("completed", "office"),
        "rated" => ("rated", "web"),
        a => {
            return Err(ApiError::new(
                ProblemCode::BadAction,
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
    Ok(Json(ingest_wire(&state, vec![e]).await?))
}
