//! `/admin`: models (list, activate, roll back), push records, the queue, campaigns.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, PathParams};
use super::problem::{ApiError, Problem, ProblemCode};
use crate::app::{AppState, CampaignIn, CampaignReport};
use crate::models::ModelList;
use crate::queue::PushRecord;
use tongban_model::artifact::ArtifactError;

#[utoipa::path(get, path = "/admin/models", tag = "operator", summary = "Loaded models and their metadata",
    responses((status = 200, description = "The activations, oldest first", body = ModelList)))]
pub(super) async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(state.models.list())
}

/// A model file to activate.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Activate)]
pub(super) struct ActivateIn {
    /// The file's path on the server: inside the models directory (`--models-dir`), relative
    /// to it or absolute.
    #[schema(min_length = 1)]
    path: String,
}

/// The model serving after an activation or a roll-back.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Active {
    active: String,
}

/// The largest model file accepted (today's are a few MB; a city's with 12,000 services about 50).
const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Loads and activates a model file off the async runtime. Only regular files inside the
/// models directory (`--models-dir`, when set) are read: a FIFO or a device would block or never
/// end, and the route must not read whatever the server can. An unreadable or refused path is
/// answered the same way whatever the reason, so the route tells nothing about the server's
/// file system. Shared by the API and the console.
pub(crate) async fn activate_file(state: Arc<AppState>, path_text: &str) -> Result<String, ApiError> {
    let unreadable = || ApiError::new(ProblemCode::BadModel, format!("{path_text}: no readable model file there"));
    let path = match &state.settings.models_dir {
        Some(dir) => {
            let wanted = dir.join(path_text);
            // Inside the directory once links and `..` are resolved.
            let real = std::fs::canonicalize(&wanted).ok();
            match (real, std::fs::canonicalize(dir).ok()) {
                (Some(real), Some(root)) if real.starts_with(&root) => real,
                _ => return Err(unreadable()),
            }
        }
        None => std::path::PathBuf::from(path_text),
    };
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

#[utoipa::path(post, path = "/admin/models", tag = "operator", summary = "Load, validate and activate a model file",
    request_body = ActivateIn,
    responses(
        (status = 200, description = "Activated", body = Active),
        (status = 400, description = "A bad body", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No readable model file there, or one this server cannot serve", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn activate(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<ActivateIn>,
) -> Result<Json<Active>, ApiError> {
    let version = activate_file(state, &body.path).await?;
    Ok(Json(Active { active: version }))
}

#[utoipa::path(post, path = "/admin/models/rollback", tag = "operator", summary = "Re-activate the previous model",
    responses(
        (status = 200, description = "Rolled back", body = Active),
        (status = 422, description = "There is no previous model", body = Problem,
            content_type = "application/problem+json"),
    ))]
pub(super) async fn rollback(State(state): State<Arc<AppState>>) -> Result<Json<Active>, ApiError> {
    let version = state
        .models
        .rollback()
        .ok_or_else(|| ApiError::new(ProblemCode::NoPrevious, "no previous model to roll back to"))?;
    Ok(Json(Active { active: version }))
}

#[utoipa::path(get, path = "/admin/pushes/{id}", tag = "operator",
    summary = "A push's audit record: trigger, model, reasons, policy decisions, attempts, status",
    params(("id" = String, Path, description = "The push id")),
    responses(
        (status = 200, description = "The record", body = PushRecord),
        (status = 404, description = "No such push", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn push(
    State(state): State<Arc<AppState>>,
    PathParams(id): PathParams<String>,
) -> Result<Json<PushRecord>, ApiError> {
    state.queue.record(&id).await?.map(Json).ok_or_else(|| ApiError::not_found(format!("push {id:?}")))
}

/// The push queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct QueueOut {
    /// The queue backend: disk, memory or redis.
    backend: &'static str,
    depth: crate::queue::Depth,
    /// The latest dead letters, newest first.
    dead_letters: Vec<DeadLetter>,
}

/// A push given up on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct DeadLetter {
    /// The push id (none when the entry could not be read).
    id: Option<String>,
    #[schema(schema_with = crate::openapi::trigger_or_null)]
    trigger: Option<crate::push::Trigger>,
    attempts: Option<u32>,
    /// Why it was given up.
    reason: String,
}

#[utoipa::path(get, path = "/admin/queue", tag = "operator", summary = "Push queue depth and the latest dead letters",
    responses((status = 200, description = "The queue", body = QueueOut)))]
pub(super) async fn queue(State(state): State<Arc<AppState>>) -> Result<Json<QueueOut>, ApiError> {
    let depth = state.queue.depth().await?;
    let dead_letters = state
        .queue
        .dead_letters(20)
        .await?
        .into_iter()
        .map(|(job, reason)| match job {
            Some(job) => DeadLetter {
                id: Some(job.message.id),
                trigger: Some(job.message.trigger),
                attempts: Some(job.attempts),
                reason,
            },
            None => DeadLetter { id: None, trigger: None, attempts: None, reason },
        })
        .collect();
    Ok(Json(QueueOut { backend: state.queue.kind(), depth, dead_letters }))
}

#[utoipa::path(post, path = "/admin/campaigns", tag = "operator",
    summary = "Push a service to the n subjects most likely to need it (scored, not broadcast); dry_run only counts",
    request_body = CampaignIn,
    responses(
        (status = 200, description = "What the campaign did (or would do)", body = CampaignReport),
        (status = 400, description = "A bad body, n or id", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The service is not in the catalogue, or pushes are not set up", body = Problem,
            content_type = "application/problem+json"),
    ))]
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
