//! Error responses in the spec's JSON shape.

use crate::edge::json_response;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_proto::ErrorCode;
use berth_registry::RegistryError;
use serde_json::json;

pub(crate) struct ApiError(RegistryError);

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError(e)
    }
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(RegistryError::new(code, message))
    }

    pub(crate) fn code(&self) -> ErrorCode {
        self.0.code
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError::new(ErrorCode::NameUnknown, "no such endpoint")
    }

    pub(crate) fn method_not_allowed() -> ApiError {
        ApiError::new(ErrorCode::Unsupported, "method not allowed on this endpoint")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let mut entry = json!({ "code": e.code.code(), "message": e.message });
        if let Some(detail) = e.detail {
            entry["detail"] = detail;
        }
        let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(status, json!({ "errors": [entry] }).to_string().into_bytes());
        // How long a client should wait before it tries again, where waiting helps.
        let retry_after = match e.code {
            ErrorCode::Unavailable => Some("5"),
            ErrorCode::TooManyRequests => Some("10"),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        resp
    }
}
