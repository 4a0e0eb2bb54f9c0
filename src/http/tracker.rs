//! `GET /v1/tracker.js`: the browser tracker (`clients/js/dist/eventpipe.min.js`, built into the
//! binary), so sites load it first-party from the gateway they send to.
//!
//! Answered with `Content-Type: application/javascript`, `Cache-Control: public, max-age=300`
//! (a deploy of a new gateway reaches browsers within minutes) and a strong `ETag` (CRC-32 and
//! length of the bytes); a matching `If-None-Match` gets a 304. Not behind write keys: the
//! script is public.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The route's path.
pub const PATH: &str = "/v1/tracker.js";

/// The tracker's bytes, as committed in `clients/js/dist` (CI checks they match the sources).
pub const TRACKER_JS: &[u8] = include_bytes!("../../clients/js/dist/eventpipe.min.js");

/// `Cache-Control` of the answer.
pub const CACHE_CONTROL: &str = "public, max-age=300";

/// The strong entity tag of [`TRACKER_JS`].
pub fn etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| {
        format!(
            "\"{:08x}-{:x}\"",
            crc32fast::hash(TRACKER_JS),
            TRACKER_JS.len()
        )
    })
}

/// The handler (GET; axum answers HEAD from it too).
pub async fn serve(headers: HeaderMap) -> Response {
    let etag = etag();
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let common = [
        (header::ETAG, HeaderValue::from_static(etag)),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        StatusCode::OK,
        common,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/javascript; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        TRACKER_JS,
    )
        .into_response()
}
