//! Segment's HTTP Tracking API on the public listener (`[segment] enabled = true`):
//! `POST /v1/batch`, `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/group`,
//! `/v1/alias` and the short forms `/v1/b|t|i|p|s|g|a` analytics.js uses. Bodies are translated
//! by `crate::protocol::segment` and run through the native pipeline (`ingest::run`); this module
//! shapes the answers Segment's SDKs expect:
//!
//! - 200 `{"success": true}` once every event is durable, in Kafka **or in the spool**, and for
//!   invalid events too (they are dead-lettered): a 202 or a 4xx would make an SDK resend or drop
//!   the whole batch.
//! - 400 `{"success": false, "code", "message"}` for what resending cannot fix: undecodable or
//!   oversized bodies (some SDKs retry 413 for ever), bad content types.
//! - 429 + `Retry-After` for every "try later" (overloaded, Kafka and spool unavailable, request
//!   timeout, rate limits): both SDKs honour Retry-After on 429, not on 503.
//! - 401/403 as for native requests; 500 when the dead-letter topic refused events (retry).
//!
//! Write keys: when auth is on, a request whose head carries no key (analytics.js sends its key
//! only as `writeKey` in a text/plain body) is first held to the per-IP limit
//! (`auth::check_ip`), then, if its body can carry a key (uncompressed; text/plain, JSON or
//! untyped), has it read: at most `segment.max_batch_bytes`, charged to the in-flight bytes as
//! declared by Content-Length, and at most `segment.max_keyless_reads` such reads at once (429
//! beyond, so slow keyless bodies cannot starve keyed requests). Its `writeKey` is presented as
//! if it came in `X-Write-Key` and the key and origin checks run (`auth::authorize_key`).
//! Every refusal on this path is counted like other auth refusals (`auth::count_refusal`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;

use super::auth::{self, Grant, WRITE_KEY_HEADER};
use super::error::ApiError;
use super::ingest::{self, Outcome};
use super::AppState;
use crate::protocol::segment::{Call, SegmentRequest};

/// The routes, each with the call its body holds (None: a batch). Empty when Segment is off.
pub fn router(state: &AppState) -> Router<AppState> {
    if state.segment.is_none() {
        return Router::new();
    }
    let routes: [(&[&str], Option<Call>); 7] = [
        (&["/v1/batch", "/v1/b"], None),
        (&["/v1/track", "/v1/t"], Some(Call::Track)),
        (&["/v1/identify", "/v1/i"], Some(Call::Identify)),
        (&["/v1/page", "/v1/p"], Some(Call::Page)),
        (&["/v1/screen", "/v1/s"], Some(Call::Screen)),
        (&["/v1/group", "/v1/g"], Some(Call::Group)),
        (&["/v1/alias", "/v1/a"], Some(Call::Alias)),
    ];
    let mut router = Router::new();
    for (paths, call) in routes {
        for path in paths {
            router = router.route(
                path,
                post(move |State(gw): State<AppState>, req: Request| handle(gw, req, call)),
            );
        }
    }
    router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authorize_with_body_key,
        ))
        // Outermost of the route layers: key refusals are counted too.
        .route_layer(middleware::from_fn(count))
}

/// `eventpipe_protocol_requests_total{protocol="segment", status}`.
async fn count(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status().as_str().to_owned();
    metrics::counter!(crate::metrics::PROTOCOL_REQUESTS, "protocol" => "segment", "status" => status)
        .increment(1);
    response
}

async fn handle(gw: AppState, req: Request, call: Option<Call>) -> Response {
    let Some(segment) = gw.segment.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // Derived event ids name the sender: the key's name when auth is on (stable across key
    // rotation, and not a secret), else the key the client sent.
    let source = match req.extensions().get::<Grant>() {
        Some(grant) => Some(grant.0.name.to_string()),
        None => auth::presented_key(req.headers(), req.uri()).ok().flatten(),
    };
    let translate = Arc::new(SegmentRequest {
        segment,
        registry: gw.registry.clone(),
        call,
        source,
        limits: gw.pipeline.limits.clone(),
    });
    match ingest::run(&gw, req, Some(translate)).await {
        Ok(outcome) => answer(&outcome),
        Err(err) => refusal(err),
    }
}

/// The answer to a request whose events all ended somewhere.
pub fn answer(outcome: &Outcome) -> Response {
    if outcome.failed.is_empty() {
        (StatusCode::OK, Json(json!({"success": true}))).into_response()
    } else {
        let body = json!({
            "success": false,
            "code": "dead_letter_refused",
            "message": "some events could not be stored, not even in the dead-letter topic; retry later",
        });
        (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
    }
}

/// The status a Segment SDK acts on correctly for a refusal (see the module doc).
pub fn status(err: &ApiError) -> StatusCode {
    match err {
        ApiError::Overloaded { .. }
        | ApiError::Unavailable { .. }
        | ApiError::RequestTimeout { .. }
        | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        ApiError::ForbiddenOrigin => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A refusal in Segment's shape (`code` and `message` are what analytics-python reads), with
/// the native answer's `Retry-After` / `WWW-Authenticate` (at least 1 s on every 429).
pub fn refusal(err: ApiError) -> Response {
    let status = status(&err);
    let body = json!({"success": false, "code": err.code(), "message": err.to_string()});
    // The native answer logs the refusal and carries its headers.
    let native = err.into_response();
    let mut response = (status, Json(body)).into_response();
    for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = native.headers().get(&name) {
            response.headers_mut().insert(name, v.clone());
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    }
    response
}

/// A head that already presents a key, or a malformed one (`auth` answers it): the carriers and
/// the decoding are `auth`'s own, so `%6Bey=` counts as a `key` here as it does there.
fn head_has_key(req: &Request) -> bool {
    !matches!(auth::presented_key(req.headers(), req.uri()), Ok(None))
}

/// `auth::authorize`, accepting the body's `writeKey` when auth is on and the head has no key
/// (see the module doc).
async fn authorize_with_body_key(State(gw): State<AppState>, req: Request, next: Next) -> Response {
    let Some(segment) = gw.segment.clone() else {
        return auth::authorize(State(gw), req, next).await;
    };
    if gw.access.keys().is_none() || head_has_key(&req) {
        return auth::authorize(State(gw), req, next).await;
    }
    // The per-IP limit first, before any of the body is read (and only once).
    if let Err(err) = auth::check_ip(&gw, &req) {
        return refusal(err);
    }
    if !may_carry_key(&req) {
        // Not decompressed just to find a key: such clients can set a header.
        return auth::authorize_key(&gw, req, next)
            .await
            .unwrap_or_else(refusal);
    }
    // A budget of its own: keyless reads never hold the request slots keyed traffic needs.
    let Ok(reading) = segment.keyless_reads.try_acquire() else {
        let err = ApiError::Overloaded {
            retry_after_secs: 1,
        };
        auth::count_refusal(&gw, &err);
        return refusal(err);
    };
    let (mut parts, body) = req.into_parts();
    // A Segment body is at most `segment.max_batch_bytes`; it is charged to the in-flight bytes
    // as declared (else that limit) while read, released before the pipeline takes its own.
    let limit = segment
        .max_batch_bytes
        .min(gw.pipeline.limits.max_body_bytes);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let bytes = {
        let _charge = match gw.admission.charge(declared.unwrap_or(limit).min(limit)) {
            Ok(charge) => charge,
            Err(err) => {
                auth::count_refusal(&gw, &err);
                return refusal(err);
            }
        };
        match super::body::read_limited(body, &parts.headers, limit).await {
            Ok(b) => b,
            Err((err, _)) => {
                auth::count_refusal(&gw, &err);
                return refusal(err);
            }
        }
    };
    drop(reading);
    #[derive(serde::Deserialize)]
    struct Key {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    let key = serde_json::from_slice::<Key>(&bytes)
        .ok()
        .and_then(|k| k.write_key)
        .and_then(|k| HeaderValue::from_str(&k).ok());
    if let Some(key) = key {
        parts
            .headers
            .insert(header::HeaderName::from_static(WRITE_KEY_HEADER), key);
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    auth::authorize_key(&gw, req, next)
        .await
        .unwrap_or_else(refusal)
}

/// A body a key may be looked for in: uncompressed, `text/plain` (analytics.js), JSON or
/// untyped (read as JSON, as natively).
fn may_carry_key(req: &Request) -> bool {
    let h = req.headers();
    let identity = h
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let typed = h.get(header::CONTENT_TYPE).is_none_or(|v| {
        let essence = v.to_str().unwrap_or("").split(';').next().unwrap_or("");
        let essence = essence.trim();
        essence.eq_ignore_ascii_case("text/plain")
            || essence.eq_ignore_ascii_case("application/json")
    });
    identity && typed
}

#[cfg(test)]
#[path = "segment_tests.rs"]
mod tests;
