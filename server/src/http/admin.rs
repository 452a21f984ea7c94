//! `/admin`: models (list, activate, roll back), push records, the queue, campaigns.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{JsonBody, PathParams};
use super::problem::{ApiError, ProblemCode};
use crate::app::{AppState, CampaignIn, CampaignReport};
use crate::queue::PushRecord;
use tongban_model::artifact::ArtifactError;

pub(super) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.models.list())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ActivateIn {
    path: String,
}

/// The largest model file accepted (today's are a few MB; a city's with 12,000 services about 50).
const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Loads and activates a model file off the async runtime. Only regular files are read (a FIFO
/// or a device would block or never end), and an unreadable path is answered the same way
/// whatever the reason, so the route tells nothing about the server's file system. Shared by
/// the API and the console.
pub(crate) async fn activate_file(state: Arc<AppState>, path_text: &str) -> Result<String, ApiError> {
    let path = std::path::PathBuf::from(path_text);
    let unreadable = || ApiError::new(ProblemCode::BadModel, format!("{path_text}: no readable model file there"));
    let loaded = tokio::task::spawn_blocking(move || {
        let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file() && m.len() <= MAX_MODEL_BYTES);
        meta.map(|_| state.models.load_and_activate(&path))
    })
    .await
    .map_err(|e| ApiError::internal(format!("model loading task: {e}")))?;
    match loaded {
        None | Some(Err(ArtifactError::Read { .. })) => Err(unreadable()),
        Some(Err(e)) => Err(ApiError::new(ProblemCode::BadModel, e.to_string())),
        Some(Ok(version)) => Ok(version),
    }
}

pub(super) async fn activate(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<ActivateIn>,
) -> Result<Json<Value>, ApiError> {
    let version = activate_file(state, &body.path).await?;
    Ok(Json(json!({ "active": version })))
}

pub(super) async fn rollback(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let version = state
        .models
        .rollback()
        .ok_or_else(|| ApiError::new(ProblemCode::NoPrevious, "no previous model to roll back to"))?;
    Ok(Json(json!({ "active": version })))
}

pub(super) async fn push(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
) -> Result<Json<PushRecord>, ApiError> {
    state.queue.record(&id).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("push {id:?}")))
}

pub(super) async fn queue(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
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

pub(super) async fn campaign(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<CampaignIn>,
) -> Result<Json<CampaignReport>, ApiError> {
    let pusher = state
        .pusher
        .as_ref()
        .ok_or_else(|| ApiError::new(ProblemCode::NoPushes, "pushes need a model with a catalogue and templates"))?;
    if pusher.catalogue.lookup(&body.service).is_none() {
        return Err(ApiError::new(
            ProblemCode::UnknownService,
            format!("service {:?} is not in the catalogue", body.service),
        ));
    }
    if body.n == 0 || body.n > 1_000_000 {
        return Err(ApiError::new(ProblemCode::BadN, format!("n: expected 1 to 1000000, got {}", body.n)));
    }
    if body.id.is_empty() || body.id.len() > 64 {
        return Err(ApiError::new(ProblemCode::BadId, "id: expected 1 to 64 characters"));
    }
    let served = state.models.active();
    Ok(Json(pusher.campaign(&served.model, &served.version, &body).await?))
}
