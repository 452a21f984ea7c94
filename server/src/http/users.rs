//! `/v1/users/{id}`: erasure, preferences, the inbox.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tongban_features::catalogue::Stage;

use super::events::{ingest_wire, EventIn};
use super::extract::{self, JsonBody, PathParams};
use super::problem::{ApiError, ProblemCode};
use crate::app::AppState;
use crate::locale::Locale;
use crate::push::{Outbound, Preferences};

pub(super) async fn erase(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    let subject = extract::subject(&id)?;
    state.store.erase(&subject).await?;
    state.console.forget(subject.as_str());
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_prefs(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
) -> Result<Json<Preferences>, ApiError> {
    let subject = extract::subject(&id)?;
    Ok(Json(state.store.profile_and_prefs(&subject).await?.1.unwrap_or_default()))
}

/// Preferences on the wire: the locale and channels as strings, so that a bad value is named
/// in a `bad_preferences` problem rather than a parser message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PreferencesIn {
    push: Option<bool>,
    categories_off: Option<Vec<Stage>>,
    #[serde(default, deserialize_with = "some")]
    quiet_hours: Option<Option<[u8; 2]>>,
    utc_offset_minutes: Option<i32>,
    personalised: Option<bool>,
    locale: Option<String>,
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

pub(super) async fn put_prefs(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
    JsonBody(prefs): JsonBody<PreferencesIn>,
) -> Result<Json<Preferences>, ApiError> {
    let subject = extract::subject(&id)?;
    let prefs = prefs.into_preferences().map_err(|e| ApiError::new(ProblemCode::BadPreferences, e))?;
    state.store.put_prefs(&subject, &prefs).await?;
    Ok(Json(prefs))
}

pub(super) async fn get_inbox(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let subject = extract::subject(&id)?;
    let now = state.now();
    // Deferred (quiet hours) and expired messages are not shown.
    let messages: Vec<_> =
        state.store.inbox(&subject).await?.into_iter().filter(|m| m.deliver_at <= now && m.expires_at > now).collect();
    let unread = messages.iter().filter(|m| !m.read).count();
    Ok(Json(json!({ "subject": subject.as_str(), "unread": unread, "messages": messages })))
}

pub(super) async fn read_message(
    State(state): State<Arc<AppState>>,
    PathParams((id, msg)): PathParams<(String, String)>,
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
