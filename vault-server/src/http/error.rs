//! The one place that maps errors to HTTP status codes and api.md's error body ([`ApiError`]).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::http::body::TooLarge;

/// An error answer: status, code and message of api.md's error body.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    /// The HTTP status of this answer (the citizen's page maps library errors through here too).
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The message of this answer.
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such thing")
    }
    pub(crate) fn idle() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout", "the request body stalled; send it again")
    }
    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the operator can see it in the server log",
        )
    }
}

/// The one mapping from library errors to the contract's status codes.
impl From<vault::Error> for ApiError {
    fn from(e: vault::Error) -> Self {
        use vault::Error as E;
        if let E::Source(io) = &e {
            if io.get_ref().is_some_and(|i| i.is::<TooLarge>()) {
                return Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the content is larger than the server accepts",
                );
            }
        }
        let status = match e.code() {
            "invalid_request" | "digest_mismatch" | "invalid_signature" | "unknown_issuer_key" | "purpose_required" => {
                StatusCode::BAD_REQUEST
            }
            "forbidden" | "grant_required" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "conflict" => StatusCode::CONFLICT,
            "gone" => StatusCode::GONE,
            "too_many_requests" => StatusCode::TOO_MANY_REQUESTS,
            "sealed" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => return Self::internal(&e),
        };
        if let vault::Error::Store(vault::StoreError::Unavailable(_)) = &e {
            // The store's own message names endpoints, buckets and keyed names: logged, not sent.
            tracing::warn!(error = %e, "blob store unavailable");
            return Self::new(status, e.code(), "the blob store is unavailable; retry later".to_owned());
        }
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<crate::http::batch::BatchError> for ApiError {
    fn from(e: crate::http::batch::BatchError) -> Self {
        use crate::http::batch::BatchError as E;
        match &e {
            E::Malformed(_) => Self::invalid(e.to_string()),
            E::TooLarge(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn json_response(status: StatusCode, v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}
