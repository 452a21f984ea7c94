//! `/v1/users/{id}`: erasure, preferences, the inbox.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tongban_features::catalogue::Stage;

use super::events::{ingest_wire, EventIn};
use super::extract::{self, JsonBody, MessagePath, PathParams, SubjectPath};
use super::problem::{ApiError, Problem, ProblemCode};
use crate::app::AppState;
use crate::locale::Locale;
use crate::push::{InboxMessage, Outbound, Preferences};

#[utoipa::path(delete, path = "/v1/users/{id}", tag = "ingest",
    summary = "Erase a subject's profile, preferences, inbox and dead letters (right to erasure)",
    description = "Final: a later import or replay never brings the subject back; live events after it start anew.",
    params(SubjectPath),
    responses(
        (status = 204, description = "Erased (also when nothing was kept)"),
        (status = 400, description = "A bad subject id", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn erase(
    State(state): State<Arc<AppState>>,
    PathParams(SubjectPath { id }): PathParams<SubjectPath>,
) -> Result<StatusCode, ApiError> {
    let subject = extract::subject(&id)?;
    state.store.erase(&subject).await?;
    state.queue.forget_subject(&subject).await?;
    state.console.forget(subject.as_str());
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/users/{id}/preferences", tag = "portal",
    summary = "A subject's push and personalisation preferences (the defaults if never set)",
    params(SubjectPath),
    responses(
        (status = 200, description = "The preferences", body = Preferences),
        (status = 400, description = "A bad subject id", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn get_prefs(
    State(state): State<Arc<AppState>>,
    PathParams(SubjectPath { id }): PathParams<SubjectPath>,
) -> Result<Json<Preferences>, ApiError> {
    let subject = extract::subject(&id)?;
    Ok(Json(state.store.profile_and_prefs(&subject).await?.1.unwrap_or_default()))
}

/// Preferences on the wire: the locale and channels as strings, so that a bad value is named
/// in a `bad_preferences` problem rather than a parser message.
/// Absent fields take their defaults.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PreferencesUpdate)]
pub(super) struct PreferencesIn {
    /// The off switch for every push.
    push: Option<bool>,
    /// Life stages the subject wants no pushes about.
    #[schema(schema_with = crate::openapi::stages)]
    categories_off: Option<Vec<Stage>>,
    /// Quiet hours in local time, `[start, end)`; null: none.
    #[serde(default, deserialize_with = "some")]
    #[schema(schema_with = crate::openapi::quiet_hours)]
    quiet_hours: Option<Option<[u8; 2]>>,
    /// Offset of the subject's time zone from UTC in minutes (Asia/Shanghai: 480).
    #[schema(minimum = -720, maximum = 840)]
    utc_offset_minutes: Option<i32>,
    /// Suggestions from the subject's history (false: popularity only).
    personalised: Option<bool>,
    #[schema(schema_with = crate::openapi::locale)]
    locale: Option<String>,
    #[schema(schema_with = crate::openapi::outbound)]
    channels: Option<Vec<String>>,
}

/// A field that is present (even as `null`) becomes `Some`.
fn some<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl PreferencesIn {
    /// The preferences, with the defaults for absent fields; the message names the field.
    fn into_preferences(self) -> Result<Preferences, String> {
        let d = Preferences::default();
        let locale = match self.locale.as_deref() {
            None => d.locale,
            Some(l) => Locale::parse(Some(l)).ok_or("locale: expected zh-CN or en")?,
        };
        let mut channels = Vec::new();
        for c in self.channels.unwrap_or_default() {
            let known = Outbound::ALL.map(Outbound::as_str);
            channels.push(
                Outbound::parse(&c)
                    .ok_or_else(|| format!("channels: unknown channel {c:?}, expected some of {known:?}"))?,
            );
        }
        let p = Preferences {
            push: self.push.unwrap_or(d.push),
            categories_off: self.categories_off.unwrap_or(d.categories_off),
            quiet_hours: self.quiet_hours.unwrap_or(d.quiet_hours),
            utc_offset_minutes: self.utc_offset_minutes.unwrap_or(d.utc_offset_minutes),
            personalised: self.personalised.unwrap_or(d.personalised),
            locale,
            channels,
        };
        p.check()?;
        Ok(p)
    }
}

#[utoipa::path(put, path = "/v1/users/{id}/preferences", tag = "portal",
    summary = "Set them: off switch, categories, quiet hours, time zone, personalisation, locale, channels",
    params(SubjectPath),
    request_body = PreferencesIn,
    responses(
        (status = 200, description = "The preferences stored", body = Preferences),
        (status = 400, description = "A bad subject id, body or value (named)", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn put_prefs(
    State(state): State<Arc<AppState>>,
    PathParams(SubjectPath { id }): PathParams<SubjectPath>,
    JsonBody(prefs): JsonBody<PreferencesIn>,
) -> Result<Json<Preferences>, ApiError> {
    let subject = extract::subject(&id)?;
    let prefs = prefs.into_preferences().map_err(|e| ApiError::new(ProblemCode::BadPreferences, e))?;
    state.store.put_prefs(&subject, &prefs).await?;
    Ok(Json(prefs))
}

/// A subject's portal inbox.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Inbox)]
pub(super) struct InboxOut {
    subject: String,
    /// Messages not yet read.
    unread: usize,
    /// Delivered and not expired, newest first.
    messages: Vec<InboxMessage>,
}

#[utoipa::path(get, path = "/v1/users/{id}/inbox", tag = "portal",
    summary = "The portal inbox of guidance pushes (delivered, not expired)",
    params(SubjectPath),
    responses(
        (status = 200, description = "The inbox", body = InboxOut),
        (status = 400, description = "A bad subject id", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn get_inbox(
    State(state): State<Arc<AppState>>,
    PathParams(SubjectPath { id }): PathParams<SubjectPath>,
) -> Result<Json<InboxOut>, ApiError> {
    let subject = extract::subject(&id)?;
    let now = state.now();
    // Deferred (quiet hours) and expired messages are not shown.
    let messages: Vec<_> =
        state.store.inbox(&subject).await?.into_iter().filter(|m| m.deliver_at <= now && m.expires_at > now).collect();
    let unread = messages.iter().filter(|m| !m.read).count();
    Ok(Json(InboxOut { subject: subject.as_str().to_owned(), unread, messages }))
}

#[utoipa::path(post, path = "/v1/users/{id}/inbox/{msg}/read", tag = "portal", summary = "Mark a message read",
    description = "The open also comes back to the model as a signal on the message's first service.",
    params(MessagePath),
    responses(
        (status = 204, description = "Marked read"),
        (status = 400, description = "A bad subject id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such message in the inbox", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn read_message(
    State(state): State<Arc<AppState>>,
    PathParams(MessagePath { id, msg }): PathParams<MessagePath>,
) -> Result<StatusCode, ApiError> {
    let subject = extract::subject(&id)?;
    let inbox = state.store.inbox(&subject).await?;
    let Some(m) = inbox.iter().find(|m| m.id == msg) else {
        return Err(ApiError::not_found(format!("message {msg:?}")));
    };
    state.store.mark_read(&subject, &msg).await?;
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
        ingest_wire(&state, vec![opened]).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
