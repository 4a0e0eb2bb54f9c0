//! Snowplow's tracker protocol, so Snowplow's trackers (JavaScript, Node, Python, mobile, ...)
//! send to eventpipe by changing their collector URL:
//!
//! - `POST /com.snowplowanalytics.snowplow/tp2`: a self-describing `payload_data` JSON,
//!   `{"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": [{...}]}`,
//!   each event a map of parameter -> string. Answers 200 `ok`.
//! - `GET /i?e=pv&eid=...`: one event in the query. Answers the 1x1 GIF, never cached.
//!
//! Each event becomes a native event (`payload`: the mapping table) and the request runs through
//! `http::ingest::run`, so limits, dedup on `eid`, validation, dead letters, Kafka and the spool
//! are those of `POST /v1/events`. Self-describing events and contexts name Iglu URIs, resolved
//! against the registry, which reads Iglu static-repository layouts (`schema::iglu`).
//!
//! Answers as Snowplow's collector gives them, so the trackers' retry logic does the right thing:
//! 200 for events made durable (in Kafka or the spool: a 202 is still a success, but some
//! trackers only count 200) and for dead-lettered ones (retrying would not fix them); 400 for
//! anything wrong with the request itself, oversize included (the JS tracker does not retry a
//! 400, but would retry a 413 forever); 429/503 with `Retry-After` and 500 (`dead_letter_refused`)
//! as natively, so they are retried with the same `eid`s. Error bodies are `<code>: <message>`
//! text (POST) or the GIF with an `X-Eventpipe-Error` header (GET).
//!
//! CORS: the JS tracker sends cookies (`credentials: "include"`), so these routes have their own
//! CORS layer: the request's `Origin` echoed (never `*`) with `Access-Control-Allow-Credentials:
//! true`, for the origins in `snowplow.cors_origins` only. Empty (the default): no CORS layer at
//! all, so no browser on another origin may send; `["*"]` (any origin, as Snowplow's collector
//! does) only when the operator writes it.
//!
//! Write keys: Snowplow collectors are public and most trackers cannot send a key, so with
//! `auth.keys_file` set the operator must choose `snowplow.require_write_key` (start-up fails
//! without it): `true`, `X-Write-Key` or `key=` as natively; `false`, the routes stay open to
//! anyone (per-IP rate limit only, if set), logged as a warning at start.

pub mod payload;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{Map, Value};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{SnowplowConfig, UnknownContexts};
use crate::http::error::ApiError;
use crate::http::ingest::{self, Outcome, Translate};
use crate::http::{auth, pixel, request_id, AppState};
use crate::schema::Registry;

/// The POST path every Snowplow tracker uses by default.
pub const POST_PATH: &str = "/com.snowplowanalytics.snowplow/tp2";
/// The GET (pixel) path.
pub const GET_PATH: &str = "/i";

const PAYLOAD_DATA_PREFIX: &str = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-";

/// The Snowplow routes with their own CORS, auth and timeout layers (empty when disabled).
pub fn routes(state: &AppState, request_timeout: Duration) -> Router<AppState> {
    let cfg = &state.snowplow;
    if !cfg.enabled {
        return Router::new();
    }
    let router = Router::new()
        .route(POST_PATH, post(tp2))
        .route(GET_PATH, get(get_i));
    let require_key = cfg.require_write_key.unwrap_or(false);
    if !require_key && state.access.keys().is_some() {
        tracing::warn!(
            "auth is on but snowplow.require_write_key = false: the Snowplow routes take events of \
             any schema from anyone (per-IP rate limit only, if rate_limit.ip_requests_per_sec is set)"
        );
    }
    let router = if require_key {
        router.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
    } else {
        router.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::rate_limit_ip,
        ))
    };
    let router = router.layer(middleware::from_fn_with_state(
        (request_timeout, state.audit.clone()),
        crate::http::whole_request_timeout,
    ));
    if cfg.cors_origins.is_empty() {
        router
    } else {
        router.layer(cors_layer(cfg))
    }
}

/// Start-up check: the schemas the mapping names are in the registry.
pub fn check_schemas(gw: &AppState) -> Result<(), String> {
    if !gw.snowplow.enabled {
        return Ok(());
    }
    let missing: Vec<&str> = payload::SHIPPED
        .iter()
        .copied()
        .filter(|id| gw.registry.get(id).is_none())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "snowplow.enabled needs the shipped schemas {} in the schema directory (copy schemas/snowplow_* from eventpipe)",
            missing.join(", ")
        ))
    }
}

/// Credentialed CORS: the request's origin echoed, never `*`.
fn cors_layer(cfg: &SnowplowConfig) -> CorsLayer {
    let origins = if cfg.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(
            cfg.cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
            HeaderName::from_static(auth::WRITE_KEY_HEADER),
            // The JS tracker's anonymous tracking.
            HeaderName::from_static("sp-anonymous"),
            request_id::HEADER,
        ])
        .expose_headers([header::RETRY_AFTER, request_id::HEADER, pixel::ERROR_HEADER])
        .max_age(Duration::from_secs(cfg.cors_max_age_secs))
}

async fn tp2(State(gw): State<AppState>, req: Request) -> Response {
    let translate = Arc::new(Tracker::new(&gw, Carrier::PayloadData));
    match ingest::run(&gw, req, Some(translate)).await {
        Ok(outcome) => text_for_outcome(&outcome),
        Err(err) => text_for_error(&err),
    }
}

async fn get_i(State(gw): State<AppState>, req: Request) -> Response {
    let limit = gw.snowplow.max_get_bytes;
    let len = req.uri().query().map_or(0, str::len);
    if len > limit {
        metrics::counter!(crate::metrics::REQUESTS_REFUSED, "reason" => "query_too_large")
            .increment(1);
        let message =
            format!("the query is {len} bytes; the limit is {limit} (snowplow.max_get_bytes)");
        return pixel::gif(StatusCode::BAD_REQUEST, Some(("query_too_large", &message)));
    }
    let translate = Arc::new(Tracker::new(&gw, Carrier::Query));
    match ingest::run(&gw, pixel::query_as_body(req), Some(translate)).await {
        Ok(outcome) => pixel::gif_for_outcome(&outcome),
        Err(err) => pixel::gif_for_error(&err),
    }
}

/// 200 `ok` (durable or dead-lettered), or 500 when an event could be stored nowhere.
fn text_for_outcome(outcome: &Outcome) -> Response {
    if outcome.failed.is_empty() {
        text(StatusCode::OK, "ok".into())
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "dead_letter_refused: some events could not be stored; retry later".into(),
        )
    }
}

/// A refused POST: client errors as 400 (see the module doc), the rest as natively.
fn text_for_error(err: &ApiError) -> Response {
    // The GIF answer's status and headers, with a text body.
    let gif = pixel::gif_for_error(err);
    let mut response = text(gif.status(), format!("{}: {}", err.code(), err));
    if let Some(v) = gif.headers().get(header::RETRY_AFTER) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, v.clone());
    }
    if matches!(err, ApiError::Unauthorized(_)) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"eventpipe\""),
        );
    }
    response
}

fn text(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// How the events arrive.
#[derive(Clone, Copy)]
enum Carrier {
    /// POST: a `payload_data` JSON.
    PayloadData,
    /// GET: one event's parameters in the query string.
    Query,
}

/// Snowplow events -> a native bundle (`{"sent_at"?, "events": [...]}`).
struct Tracker {
    registry: Arc<Registry>,
    unknown_contexts: UnknownContexts,
    carrier: Carrier,
}

impl Tracker {
    fn new(gw: &AppState, carrier: Carrier) -> Self {
        Tracker {
            registry: gw.registry.clone(),
            unknown_contexts: gw.snowplow.unknown_contexts,
            carrier,
        }
    }
}

impl Translate for Tracker {
    fn translate(&self, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        let events: Vec<Map<String, Value>> = match self.carrier {
            Carrier::PayloadData => payload_data(body)?,
            Carrier::Query => {
                let pairs = pixel::query_pairs(body).ok_or_else(|| {
                    ApiError::Undecodable("the query string is not readable".into())
                })?;
                vec![pairs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect()]
            }
        };
        let mapping = payload::Mapping {
            registry: &self.registry,
            unknown_contexts: self.unknown_contexts,
        };
        // The first event's send time stands for the request's (clock-skew metric).
        let sent_at = events
            .first()
            .and_then(|e| e.get("stm"))
            .and_then(Value::as_str)
            .and_then(payload::rfc3339_ms);
        let native: Vec<Value> = events.iter().map(|e| payload::event(e, &mapping)).collect();
        let mut bundle = Map::new();
        if let Some(sent_at) = sent_at {
            bundle.insert("sent_at".into(), Value::String(sent_at));
        }
        bundle.insert("events".into(), Value::Array(native));
        serde_json::to_vec(&bundle).map_err(|e| ApiError::Undecodable(e.to_string()))
    }
}

/// The events of a `payload_data` body. Each must be an object (its members are checked per
/// event, so one odd event is dead-lettered alone).
fn payload_data(body: &[u8]) -> Result<Vec<Map<String, Value>>, ApiError> {
    let not = |m: &str| {
        ApiError::NotABundle(format!(
            "{m}: expected {{\"schema\": \"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4\", \"data\": [{{...}}]}}"
        ))
    };
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::Undecodable(format!("body is not valid JSON: {e}")))?;
    let schema = v.get("schema").and_then(Value::as_str).unwrap_or("");
    if !schema.starts_with(PAYLOAD_DATA_PREFIX) {
        return Err(not("not a payload_data JSON"));
    }
    let Some(Value::Array(items)) = v.get("data") else {
        return Err(not("`data` is not an array"));
    };
    items
        .iter()
        .map(|item| match item {
            Value::Object(m) => Ok(m.clone()),
            _ => Err(not("an event in `data` is not an object")),
        })
        .collect()
}
