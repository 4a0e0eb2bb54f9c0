//! Whole-request failures and their one mapping to HTTP. Bodies carry a machine-readable `error`
//! and a human `message`; internal details stay in the logs.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::sink::SinkError;

static LAST_UNAVAILABLE_LOG: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Why a request as a whole was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Undecodable(String),
    #[error("{0}")]
    NotABundle(String),
    #[error("request body exceeds {limit} bytes on the wire")]
    BodyTooLarge { limit: usize },
    #[error("request body exceeds {limit} bytes after decompression")]
    DecompressedTooLarge { limit: usize },
    #[error("bundle has {count} events; the limit is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("unsupported Content-Type '{0}': send application/json or text/plain")]
    UnsupportedMediaType(String),
    #[error("unsupported Content-Encoding '{0}': send gzip, deflate, zstd, br or none")]
    UnsupportedEncoding(String),
    /// No write key, or one that is not ours (auth on).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The write key may not be used from the request's `Origin`.
    #[error("this write key may not be used from this origin")]
    ForbiddenOrigin,
    /// A token bucket is empty: `scope` says which (`client` IP or write `key`).
    #[error("rate limit for this {scope} exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u64,
    },
    #[error("events could not be stored right now; retry later")]
    Unavailable {
        cause: SinkError,
        retry_after_secs: u64,
    },
}

impl ApiError {
    /// Stable machine-readable code, also the metrics `reason` label.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Undecodable(_) => "undecodable_body",
            ApiError::NotABundle(_) => "not_a_bundle",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::DecompressedTooLarge { .. } => "decompressed_too_large",
            ApiError::TooManyEvents { .. } => "too_many_events",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::ForbiddenOrigin => "forbidden_origin",
            ApiError::RateLimited { .. } => "rate_limited",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Undecodable(_) | ApiError::NotABundle(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. }
            | ApiError::DecompressedTooLarge { .. }
            | ApiError::TooManyEvents { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // During an outage every request fails the same way: say so once a second, and let
            // the metrics count them all.
            if let ApiError::Unavailable { cause, .. } = &self {
                if crate::metrics::log_allowed(&LAST_UNAVAILABLE_LOG) {
                    tracing::error!(error = %cause, "requests refused: kafka and spool unavailable (logged at most once a second)");
                }
            }
        } else {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        }
        let body = Json(json!({"error": self.code(), "message": self.to_string()}));
        let mut response = (status, body).into_response();
        super::auth::add_headers(&self, &mut response);
        if let ApiError::Unavailable {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}
