//! `GET /v1/pixel.gif?e=<base64url JSON event>`: one native event from a place that can only
//! load an image (an email, a page without JavaScript), and the 1x1 GIF answers shared with
//! Snowplow's `GET /i`.
//!
//! `e` is one event exactly as in a bundle (`{"schema", "event_id", "ts", "context", "data"}`),
//! as JSON in base64 (URL-safe or standard alphabet, padding optional). The query is presented to
//! the pipeline as the request body (`ingest::run` with a translator), so limits, write keys (the
//! `key` parameter, by its percent-decoded name), dedup, validation and dead letters are those of
//! `POST /v1/events`. The event is read exactly as a native client's: it can never pass for a
//! translator's own rejection (`pipeline::translated`).
//!
//! Answers, all with the GIF body (an `<img>` shows nothing broken either way) and
//! `Cache-Control: no-cache, no-store, must-revalidate`: 200 when the event was made durable or
//! dead-lettered (a bad event is not retried: its dead letter holds the reason); 400 when `e` is
//! missing or not base64 JSON, 414 when the query is over `pixel.max_query_bytes`, else the native
//! status (429/503 with `Retry-After`, 500). A non-200 names its reason in `X-Eventpipe-Error`
//! (`<code>: <message>`), which a developer sees in the browser's network panel.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::ApiError;
use super::ingest::{self, Outcome, Translate};
use super::AppState;

/// A transparent 1x1 GIF (the one Snowplow's collector answers).
pub const GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Where a GIF answer's refusal reason goes.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-eventpipe-error");

/// The GIF with no-cache headers, `status`, and the reason for a non-200.
pub fn gif(status: StatusCode, reason: Option<(&str, &str)>) -> Response {
    let mut response = (status, GIF).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    if let Some((code, message)) = reason {
        // Visible ASCII only; anything else is dropped from the header, not the status.
        let text: String = format!("{code}: {message}")
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .take(300)
            .collect();
        if let Ok(v) = HeaderValue::from_str(&text) {
            h.insert(ERROR_HEADER, v);
        }
    }
    response
}

/// The GIF for a pipeline outcome: 200 unless an event could be stored nowhere (500, retry).
pub fn gif_for_outcome(outcome: &Outcome) -> Response {
    if outcome.failed.is_empty() {
        gif(StatusCode::OK, None)
    } else {
        gif(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some((
                "dead_letter_refused",
                "the event could not be stored; retry later",
            )),
        )
    }
}

/// The GIF for a refused request, keeping the native status (client errors are 400: an image
/// request cannot act on finer ones) and `Retry-After`.
pub fn gif_for_error(err: &ApiError) -> Response {
    let status = match err.status() {
        s if s.is_client_error()
            && !matches!(
                err,
                ApiError::RateLimited { .. }
                    | ApiError::Unauthorized(_)
                    | ApiError::ForbiddenOrigin
                    | ApiError::RequestTimeout { .. }
            ) =>
        {
            StatusCode::BAD_REQUEST
        }
        s => s,
    };
    let mut response = gif(status, Some((err.code(), &err.to_string())));
    if let ApiError::RateLimited {
        retry_after_secs, ..
    }
    | ApiError::Unavailable {
        retry_after_secs, ..
    }
    | ApiError::Overloaded { retry_after_secs } = err
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    response
}

/// The request with its query string as its body (for `ingest::run` and a translator), without
/// any body headers the client sent, and without a `key` parameter: a write key is read from the
/// URI by `auth` and must not reach events or the dead letters of refused requests. Names are
/// compared percent-decoded, as `auth` reads them (`%6Bey=` is a `key`).
pub fn query_as_body(req: Request) -> Request {
    let (mut parts, _body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !is_key_param(p))
        .collect::<Vec<_>>()
        .join("&");
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(query.len()));
    Request::from_parts(parts, Body::from(query))
}

/// Is this `name[=value]` pair the `key` parameter, once its name is decoded?
fn is_key_param(pair: &str) -> bool {
    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
    if name == "key" {
        return true;
    }
    // Decoded as `auth` decodes it (form encoding: `%XX` and `+`).
    let decoded = query_pairs(format!("{name}=").as_bytes())
        .and_then(|pairs| pairs.into_iter().next())
        .map(|(k, _)| k);
    decoded.as_deref() == Some("key")
}

/// The query's parameters, percent-decoded; `None` if it is not a query string.
pub fn query_pairs(query: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(query).ok()?;
    let uri: axum::http::Uri = format!("/?{text}").parse().ok()?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .ok()
        .map(|q| q.0)
}

/// `GET /v1/pixel.gif`.
pub async fn pixel(State(gw): State<AppState>, req: Request) -> Response {
    let limit = gw.pixel.max_query_bytes;
    let len = req.uri().query().map_or(0, str::len);
    if len > limit {
        metrics::counter!(crate::metrics::REQUESTS_REFUSED, "reason" => "query_too_large")
            .increment(1);
        let message =
            format!("the query is {len} bytes; the limit is {limit} (pixel.max_query_bytes)");
        return gif(
            StatusCode::URI_TOO_LONG,
            Some(("query_too_large", &message)),
        );
    }
    match ingest::run(&gw, query_as_body(req), Some(Arc::new(PixelEvent))).await {
        Ok(outcome) => gif_for_outcome(&outcome),
        Err(err) => gif_for_error(&err),
    }
}

/// `e=<base64 JSON event>` -> `{"events": [event]}`.
struct PixelEvent;

impl Translate for PixelEvent {
    fn translate(&self, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        let undecodable = |m: &str| ApiError::Undecodable(m.to_owned());
        let pairs =
            query_pairs(body).ok_or_else(|| undecodable("the query string is not readable"))?;
        let e = pairs
            .iter()
            .find(|(k, _)| k == "e")
            .map(|(_, v)| v)
            .ok_or_else(|| undecodable("missing `e`: the event as base64url JSON"))?;
        let json = crate::protocol::snowplow::payload::decode_base64(e).ok_or_else(|| {
            undecodable("`e` is not base64 (URL-safe or standard, padding optional)")
        })?;
        let event: Value = serde_json::from_slice(&json)
            .map_err(|err| ApiError::Undecodable(format!("`e` is not JSON: {err}")))?;
        // The event stays as sent (a non-object is rejected alone, dead-lettered, like in a bundle).
        serde_json::to_vec(&serde_json::json!({ "events": [event] }))
            .map_err(|err| ApiError::Undecodable(err.to_string()))
    }

    /// The event is the client's JSON: read as a native client's, never as a translator's
    /// rejection (`pipeline::translated`), whatever members it has.
    fn writes_rejections(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gif_is_a_1x1_gif_and_never_cached() {
        assert_eq!(&GIF[..6], b"GIF89a");
        assert_eq!((GIF[6], GIF[8]), (1, 1), "width and height 1");
        assert_eq!(GIF.last(), Some(&0x3b), "GIF trailer");
        let r = gif(StatusCode::OK, None);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "image/gif");
        assert_eq!(
            r.headers()[header::CACHE_CONTROL],
            "no-cache, no-store, must-revalidate"
        );
        assert!(r.headers().get(ERROR_HEADER).is_none());
        let r = gif_for_error(&ApiError::Undecodable("bad\nthing é".into()));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[ERROR_HEADER], "undecodable_body: badthing ");
    }

    #[test]
    fn the_pixel_event_decodes_from_either_alphabet() {
        use base64::Engine;
        let event = br#"{"schema":"click/1","data":{"element":"a??>"}}"#;
        for engine in [
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
            base64::engine::general_purpose::STANDARD,
        ] {
            let q = format!(
                "e={}",
                engine.encode(event).replace('+', "%2B").replace('=', "%3D")
            );
            let out = PixelEvent.translate(q.as_bytes()).unwrap();
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["events"][0]["data"]["element"], "a??>");
        }
        for bad in ["", "x=1", "e=%%%", "e=bm90IGpzb24"] {
            let err = PixelEvent.translate(bad.as_bytes()).unwrap_err();
            assert_eq!(err.code(), "undecodable_body", "{bad}");
        }
    }

    #[tokio::test]
    async fn the_key_parameter_is_dropped_by_its_decoded_name() {
        async fn body(q: &str) -> axum::body::Bytes {
            let req = axum::http::Request::get(format!("/v1/pixel.gif?{q}"))
                .body(Body::empty())
                .unwrap();
            let req = query_as_body(req);
            axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap()
        }
        for q in [
            "key=SECRET&e=abc",
            "%6Bey=SECRET&e=abc",
            "%6b%65%79=SECRET&e=abc",
            "e=abc&k%65y=SECRET",
            "key&e=abc",
        ] {
            assert_eq!(&body(q).await[..], b"e=abc", "{q}");
        }
        // Other names, and `key` inside a value, stay.
        assert_eq!(&body("keys=1&e=key%3D1").await[..], b"keys=1&e=key%3D1");
    }
}
