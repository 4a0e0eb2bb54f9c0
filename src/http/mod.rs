//! The public HTTP surface: `POST /v1/events` with CORS and a whole-request timeout.

pub mod auth;
pub mod body;
pub mod client_ip;
pub mod error;
mod ingest;
pub mod keys;
pub mod rate_limit;
mod refused;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::routing::post;
use axum::Router;
use ipnet::IpNet;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

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
}

pub type AppState = Arc<Gateway>;

/// The public router.
pub fn app(state: AppState, cors: &CorsConfig, request_timeout: Duration) -> Router {
    let ingest = if state.http_only {
        post(ingest::read_and_discard)
    } else {
        post(ingest::ingest)
    };
    Router::new()
        .route("/v1/events", ingest)
        // Inside CORS: its refusals carry CORS headers; preflights never reach it.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(cors_layer(cors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
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
        ])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(Duration::from_secs(cors.max_age_secs))
}

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod tests;
