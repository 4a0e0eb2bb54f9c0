//! `X-Request-Id`: one id per request, to find a client's request in the gateway's logs and its
//! dead letters.
//!
//! Taken from the request when it is a plausible id (1 to `MAX_LEN` bytes of ASCII letters,
//! digits and `-_.:=+/`, enough for UUIDs, hex ids, W3C trace ids and base64), otherwise replaced by
//! a fresh UUID v4: the value lands in log lines, response headers and Kafka records, so a client
//! must not be able to put newlines, escape sequences or kilobytes there. The layer is the
//! outermost of the public router, so every answer it produces carries the header (408, 413, 429,
//! 503, CORS preflights ...). Answers hyper gives before the router (431 for an oversized head,
//! 400 for a malformed one) do not.
//!
//! The id is a field of the `request` tracing span, so every log line written while the request
//! is handled names it, and it is stored in the request's dead letters (`DeadLetter.request_id`).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Longest id taken from a client.
pub const MAX_LEN: usize = 64;

/// The request's id, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The client's id when it is acceptable, else a new UUID v4; the flag says it was replaced
    /// (a client sent one that was not acceptable).
    pub fn from_header(value: Option<&HeaderValue>) -> (RequestId, bool) {
        match value.map(|v| v.to_str()) {
            Some(Ok(s)) if acceptable(s) => (RequestId(s.into()), false),
            other => (RequestId::generate(), other.is_some()),
        }
    }

    pub fn generate() -> RequestId {
        RequestId(uuid::Uuid::new_v4().to_string().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn acceptable(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:=+/".contains(&b))
}

/// Middleware: assigns the id, runs the request inside a `request` span carrying it, and echoes it
/// in the answer.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let (id, replaced) = RequestId::from_header(req.headers().get(HEADER));
    // At ERROR level so that it is enabled whenever any line is logged: a span below the log
    // level (`EVENTPIPE_LOG=warn` and an INFO span) is dropped from the lines inside it.
    let span = tracing::error_span!("request", request_id = id.as_str());
    if replaced {
        span.in_scope(|| tracing::debug!("X-Request-Id not acceptable: replaced"));
    }
    // Only acceptable characters reach here, so the header value is always valid.
    let header = HeaderValue::from_str(id.as_str()).ok();
    req.extensions_mut().insert(id);
    let mut response = next.run(req).instrument(span).await;
    if let Some(value) = header {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(value: &[u8]) -> (RequestId, bool) {
        RequestId::from_header(Some(&HeaderValue::from_bytes(value).unwrap()))
    }

    #[test]
    fn plausible_ids_are_kept() {
        for id in [
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "a",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "YWJjZA+/=",
            &"x".repeat(MAX_LEN),
        ] {
            assert_eq!(from(id.as_bytes()), (RequestId(id.into()), false), "{id}");
        }
    }

    #[test]
    fn hostile_or_oversized_ids_are_replaced_by_a_uuid() {
        for bad in [
            &b""[..],
            b"has space",
            b"quote\"",
            b"tab\there",
            b"<script>",
            b"%0d%0aSet-Cookie:x",
            b"caf\xe9",
            "caf\u{e9}".as_bytes(),
            &[b'x'; MAX_LEN + 1][..],
        ] {
            let (id, replaced) = from(bad);
            assert!(replaced, "{bad:?} kept");
            assert!(uuid::Uuid::try_parse(id.as_str()).is_ok(), "{id:?}");
        }
    }

    #[test]
    fn a_missing_id_is_generated_not_replaced() {
        let (id, replaced) = RequestId::from_header(None);
        assert!(!replaced);
        let uuid = uuid::Uuid::try_parse(id.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
