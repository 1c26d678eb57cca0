//! The contract's error body `{error, message, details?}` and the type that renders it.
//!
//! Each service keeps its own error enum per route module and converts it into [`ApiError`];
//! this type only knows how to become a response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable, machine-readable code, e.g. `INVALID_INPUT`.
    pub error: String,
    /// A sentence for humans.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.to_string(),
                message: message.into(),
                details: None,
            },
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.body.details = Some(details.into());
        self
    }

    pub fn bad_request(error: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, message)
    }

    pub fn not_found(error: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error, message)
    }

    pub fn unavailable(error: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, error, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
    }

    /// `INVALID_INPUT` naming the offending field.
    pub fn invalid_field(field: &str, problem: impl Into<String>) -> Self {
        let problem = problem.into();
        Self::bad_request("INVALID_INPUT", format!("{field}: {problem}")).with_details(field)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.body.error,
            self.body.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
