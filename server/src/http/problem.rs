//! Problem bodies (RFC 9457 style JSON): every failure a request can meet, with a stable
//! `code` from one list ([`ProblemCode`]; the OpenAPI document takes its values from it). 5xx
//! bodies say nothing internal; the cause goes to the log.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::store::StoreError;

macro_rules! problem_codes {
    ($($variant:ident = $code:literal, $status:ident;)*) => {
        /// Every problem code the API answers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemCode {
            $($variant,)*
        }

        impl ProblemCode {
            pub const ALL: &'static [ProblemCode] = &[$(ProblemCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProblemCode::$variant => $code,)*
                }
            }

            pub fn status(self) -> StatusCode {
                match self {
                    $(ProblemCode::$variant => StatusCode::$status,)*
                }
            }
        }
    };
}

problem_codes! {
    BadJson = "bad_json", BAD_REQUEST;
    BadQuery = "bad_query", BAD_REQUEST;
    BadPath = "bad_path", BAD_REQUEST;
    BadSubject = "bad_subject", BAD_REQUEST;
    BadK = "bad_k", BAD_REQUEST;
    BadLocale = "bad_locale", BAD_REQUEST;
    BadMode = "bad_mode", BAD_REQUEST;
    BadCategory = "bad_category", BAD_REQUEST;
    BadSegment = "bad_segment", BAD_REQUEST;
    BadEvent = "bad_event", BAD_REQUEST;
    BadAction = "bad_action", BAD_REQUEST;
    BadPreferences = "bad_preferences", BAD_REQUEST;
    BadN = "bad_n", BAD_REQUEST;
    BadId = "bad_id", BAD_REQUEST;
    EmptyBatch = "empty_batch", BAD_REQUEST;
    BatchTooLarge = "batch_too_large", BAD_REQUEST;
    TooMany = "too_many", BAD_REQUEST;
    Unauthorized = "unauthorized", UNAUTHORIZED;
    Forbidden = "forbidden", FORBIDDEN;
    NotFound = "not_found", NOT_FOUND;
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED;
    TooLarge = "too_large", PAYLOAD_TOO_LARGE;
    UnknownService = "unknown_service", UNPROCESSABLE_ENTITY;
    EventInFuture = "event_in_future", UNPROCESSABLE_ENTITY;
    BadModel = "bad_model", UNPROCESSABLE_ENTITY;
    NoPrevious = "no_previous", UNPROCESSABLE_ENTITY;
    NoPushes = "no_pushes", UNPROCESSABLE_ENTITY;
    RateLimited = "rate_limited", TOO_MANY_REQUESTS;
    Internal = "internal", INTERNAL_SERVER_ERROR;
    StoreUnavailable = "store_unavailable", SERVICE_UNAVAILABLE;
    Draining = "draining", SERVICE_UNAVAILABLE;
    StoreLost = "store_lost", SERVICE_UNAVAILABLE;
    Timeout = "timeout", GATEWAY_TIMEOUT;
}

/// A failed request: its code, what to tell the client, and (for 5xx) the cause for the log.
#[derive(Debug)]
pub struct ApiError {
    pub code: ProblemCode,
    pub detail: String,
    cause: Option<String>,
}

impl ApiError {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> ApiError {
        ApiError { code, detail: detail.into(), cause: None }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(ProblemCode::Unauthorized, "missing or unknown API key (send it in the x-api-key header)")
    }

    pub fn forbidden() -> ApiError {
        ApiError::new(ProblemCode::Forbidden, "this API key may not use this route")
    }

    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(ProblemCode::NotFound, format!("{what} not found"))
    }

    pub fn rate_limited() -> ApiError {
        ApiError::new(ProblemCode::RateLimited, "too many requests for this API key; retry after a second")
    }

    pub fn internal(cause: impl Into<String>) -> ApiError {
        ApiError { code: ProblemCode::Internal, detail: "internal error".into(), cause: Some(cause.into()) }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Contention => ApiError {
                code: ProblemCode::StoreUnavailable,
                detail: "the store is unavailable; nothing was stored, retry later".into(),
                cause: Some(e.to_string()),
            },
            StoreError::Corrupt(_) => ApiError::internal(e.to_string()),
            StoreError::Lost(_) => ApiError {
                code: ProblemCode::StoreLost,
                detail: "the store lost its data (profiles, preferences, erasures): restore it or re-import, then \
                         restart tongban"
                    .into(),
                cause: Some(e.to_string()),
            },
        }
    }
}

/// A problem body on the wire.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the code.
    #[serde(rename = "type")]
    #[schema(example = "https://tongban.example/problems/bad_k")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    #[schema(schema_with = crate::openapi::problem_code)]
    pub code: &'static str,
    /// What went wrong, for a person (never internal detail on 5xx).
    pub detail: String,
    /// The request's `x-request-id` (the caller's, or the one the server made), to find it in the logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let code = self.code.as_str();
        if let Some(cause) = &self.cause {
            tracing::error!(code, cause = %cause, "request failed");
        }
        let body = Problem {
            kind: format!("https://tongban.example/problems/{code}"),
            title: status.canonical_reason().unwrap_or("").to_owned(),
            status: status.as_u16(),
            code,
            detail: self.detail,
            request_id: crate::app::request_id(),
        };
        let mut r = (status, Json(body)).into_response();
        r.headers_mut().insert("content-type", HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_errors_are_4xx_or_5xx() {
        let mut seen = std::collections::HashSet::new();
        for c in ProblemCode::ALL {
            assert!(seen.insert(c.as_str()), "{} twice", c.as_str());
            assert!(c.as_str().chars().all(|x| x.is_ascii_lowercase() || x == '_'), "{}", c.as_str());
            assert!(c.status().is_client_error() || c.status().is_server_error());
        }
    }
}
