//! Extractors that answer problem bodies instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use tongban_features::domain::SubjectId;

use super::problem::{ApiError, ProblemCode};

/// A JSON body.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                ProblemCode::TooLarge,
                "request body too large (the server's limit is set by --max-body-bytes)",
            )),
            Err(e) => Err(ApiError::new(ProblemCode::BadJson, e.body_text())),
        }
    }
}

/// A query string.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::new(ProblemCode::BadQuery, e.body_text()))
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| PathParams(v))
            .map_err(|e| ApiError::new(ProblemCode::BadPath, e.body_text()))
    }
}

/// The subject of a `/v1/users/{id}...` route, validated.
pub fn subject(id: &str) -> Result<SubjectId, ApiError> {
    SubjectId::parse(id).map_err(|e| ApiError::new(ProblemCode::BadSubject, e.to_string()))
}

/// The language the `Accept-Language` header prefers among ours, if it names one; used when a
/// request has no `locale`. Never fails: a header we cannot read is as good as none.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptLanguage(pub Option<crate::locale::Locale>);

impl<S: Send + Sync> FromRequestParts<S> for AcceptLanguage {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok());
        Ok(AcceptLanguage(header.and_then(crate::locale::Locale::from_accept_language)))
    }
}

/// The subject of a `/v1/users/{id}` route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubjectPath {
    /// The subject.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
}

/// The service of a `/v1/services/{id}` route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ServicePath {
    /// The service.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
}

/// A message of a subject's inbox.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    /// The subject.
    #[param(pattern = "^[A-Za-z0-9._:-]{1,64}$", min_length = 1, max_length = 64)]
    pub id: String,
    /// The message (push) id.
    pub msg: String,
}
