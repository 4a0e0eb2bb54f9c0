//! The public HTTP surface: `POST /v1/events` and `GET /v1/pixel.gif` (`pixel`) with CORS and a
//! whole-request timeout; other trackers' protocols (`crate::protocol`) with their own CORS.
//!
//! Layers, innermost first: the whole-request timeout (408 in the usual error shape), CORS (so
//! every answer, 408s included, carries its headers), lingering close (`linger`), and the
//! per-status request counter, and outermost `X-Request-Id` (`request_id`), so every answer of
//! the router carries the id and every log line of the request names it.

pub mod admission;
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod error;
pub mod ingest;
pub mod keys;
pub mod linger;
pub mod pixel;
pub mod rate_limit;
pub mod refused;
pub mod request_id;
pub mod segment;
pub mod tracker;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ipnet::IpNet;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsConfig;
use crate::pipeline::{Collector, PipelineConfig};
use crate::schema::Registry;
use crate::sink::Sink;

/// What every request needs, shared.
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub sink: Arc<dyn Sink>,
    pub pipeline: PipelineConfig,
    pub collector: Collector,
    pub trusted_proxies: Vec<IpNet>,
    /// The forwarding header read when the peer is a trusted proxy.
    pub client_ip_header: client_ip::ClientIpHeader,
    /// How long a request waits for Kafka's acknowledgements.
    pub ack_timeout: Duration,
    /// Set when shutdown began; `/readyz` reports it.
    pub draining: AtomicBool,
    /// Recently acknowledged client event ids (retries are answered without producing again).
    pub dedup: crate::dedup::DedupWindow,
    /// Benchmark mode: read bodies and discard them (see `BenchConfig`).
    pub http_only: bool,
    /// Write keys and the per-IP rate limit (`auth`).
    pub access: auth::Access,
    /// Limits on requests, bytes and connections in flight.
    pub admission: admission::Admission,
    /// Per-window counts for the audit topic (`crate::audit`).
    pub audit: Arc<crate::audit::Books>,
    /// Segment's HTTP Tracking API, when `segment.enabled` (`segment`).
    pub segment: Option<Arc<crate::protocol::segment::Segment>>,
    /// `GET /v1/pixel.gif` (`pixel`).
    pub pixel: crate::config::PixelConfig,
    /// Snowplow's tracker protocol (`crate::protocol::snowplow`).
    pub snowplow: crate::config::SnowplowConfig,
}

pub type AppState = Arc<Gateway>;

/// The public router.
pub fn app(state: AppState, cors: &CorsConfig, request_timeout: Duration) -> Router {
    let ingest = if state.http_only {
        post(ingest::read_and_discard)
    } else {
        post(ingest::ingest)
    };
    let lingering = linger::Linger {
        max_bytes: state.pipeline.limits.max_body_bytes.saturating_mul(2),
        max_time: linger::LINGER_MAX_TIME,
    };
    let mut native = Router::new().route("/v1/events", ingest);
    if state.pixel.enabled {
        native = native.route("/v1/pixel.gif", axum::routing::get(pixel::pixel));
    }
    native
        // Inside CORS and lingering close: its refusals carry CORS headers and reach clients
        // that write their whole body first; preflights never reach it.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        // Segment's routes bring their own key check (a key may come in the body).
        .merge(segment::router(&state))
        // After the auth layer: the script is public.
        .route(tracker::PATH, get(tracker::serve))
        .layer(middleware::from_fn_with_state(
            (request_timeout, state.audit.clone()),
            whole_request_timeout,
        ))
        .layer(cors_layer(cors))
        // Their own CORS (with credentials): outside the native one.
        .merge(crate::protocol::snowplow::routes(&state, request_timeout))
        .layer(middleware::from_fn_with_state(lingering, linger::linger))
        .layer(middleware::from_fn(count_status))
        .layer(middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// 408 when a request (body and Kafka wait included) takes longer than `limit`.
pub(crate) async fn whole_request_timeout(
    State((limit, audit)): State<(Duration, Arc<crate::audit::Books>)>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let err = error::ApiError::RequestTimeout {
                limit_ms: limit.as_millis() as u64,
            };
            metrics::counter!(crate::metrics::REQUESTS_REFUSED, "reason" => err.code())
                .increment(1);
            audit.refused(err.code());
            err.into_response()
        }
    }
}

/// Counts every answer by status, whichever layer gave it.
async fn count_status(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status().as_str().to_owned();
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "status" => status).increment(1);
    response
}

fn cors_layer(cors: &CorsConfig) -> CorsLayer {
    let origins = if cors.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cors.allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
            header::HeaderName::from_static(auth::WRITE_KEY_HEADER),
            request_id::HEADER,
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            request_id::HEADER,
        ])
        .max_age(Duration::from_secs(cors.max_age_secs))
}

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod request_id_tests;
#[cfg(test)]
mod size_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_inflight;
#[cfg(test)]
mod tracker_tests;
