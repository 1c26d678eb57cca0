//! Extractors whose rejections are the contract's error body.
//!
//! axum's own `Json` and `Path` reject with plain text; a client of this API must always be able to
//! parse `{error, message, details?}`, so every route uses these instead.

use crate::error::ApiError;
use axum::extract::rejection::{JsonRejection, RawPathParamsRejection};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// JSON body; malformed JSON, a wrong field type, a missing field, a missing or wrong content type
/// → 400, an oversize body → 413, each with the error body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let details = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::bad_request(
            "INVALID_INPUT",
            "the request body does not match the expected schema",
        )
        .with_details(details),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("MALFORMED_JSON", "the request body is not valid JSON")
                .with_details(details)
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::bad_request(
            "INVALID_CONTENT_TYPE",
            "expected a JSON body with content-type application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "the request body is larger than this service accepts",
        ),
        other => ApiError::bad_request("INVALID_INPUT", "the request body could not be read")
            .with_details(other.body_text()),
    }
}

/// The single `{id}` segment of a path as a positive int32: non-integers, zero, negatives and
/// values above 2^31-1 → 400 `INVALID_ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathId(pub i32);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The raw (already percent-decoded) parameters rather than `Path<String>`: no serde and no
        // allocation on the hot path of every `GET /products/{id}`.
        let params = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => params,
            Err(rejection) => return Err(path_rejection(rejection)),
        };
        match params.iter().next() {
            Some((_, raw)) => parse_id(raw).map(PathId),
            None => Err(no_id_in_path()),
        }
    }
}

fn no_id_in_path() -> ApiError {
    ApiError::bad_request("INVALID_ID", "the path does not carry a valid id")
}

fn path_rejection(rejection: RawPathParamsRejection) -> ApiError {
    no_id_in_path().with_details(rejection.body_text())
}

/// Parses an id the contract allows: an integer in `1..=2147483647`.
pub fn parse_id(raw: &str) -> Result<i32, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id >= 1 && id <= i64::from(i32::MAX) => Ok(id as i32),
        Ok(_) => Err(ApiError::bad_request(
            "INVALID_ID",
            format!("id must be between 1 and {}", i32::MAX),
        )
        .with_details(format!("got {raw}"))),
        Err(_) => Err(
            ApiError::bad_request("INVALID_ID", "id must be a positive integer")
                .with_details(format!("got {raw:?}")),
        ),
    }
}

/// The request's `x-request-id` (set by the request-id layer before any handler runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get(crate::http::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Self(id))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn ids_must_be_positive_int32() {
        assert_eq!(parse_id("1").ok(), Some(1));
        assert_eq!(parse_id("2147483647").ok(), Some(i32::MAX));
        for bad in [
            "0",
            "-1",
            "2147483648",
            "99999999999999999999",
            "abc",
            "1.5",
            "",
        ] {
            let err = parse_id(bad).unwrap_err();
            assert_eq!(err.status.as_u16(), 400, "{bad}");
            assert_eq!(err.body.error, "INVALID_ID");
        }
    }
}
