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
use super::problem::{ApiError, ProblemCode};
use crate::app::{ingest, AppState, Ingested, NewEvent};

/// How far ahead of the server's clock an event's time may be.
const MAX_AHEAD_SECS: i64 = 86_400;

/// One event on the wire.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventIn {
    pub event_id: String,
    pub subject: String,
    pub service: String,
    pub kind: String,
    pub rating: Option<u8>,
    /// RFC 3339; default: now.
    pub at: Option<String>,
    pub channel: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum EventsIn {
    Batch { events: Vec<EventIn> },
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
    if at.0 > state.now() + MAX_AHEAD_SECS {
        return Err(bad("at", format!("{} is more than a day ahead of the server's clock", Timestamp(at.0))));
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedbackIn {
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
