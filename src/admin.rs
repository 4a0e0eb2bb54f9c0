//! The admin listener: `/metrics`, `/healthz`, `/readyz`, never on the public port.
//!
//! Liveness and readiness are separate on purpose: `/healthz` says the process answers (restart
//! it if not); `/readyz` says it should get traffic (schemas loaded, Kafka metadata reachable, not
//! draining). A Kafka outage must not make an orchestrator restart every gateway at once.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::http::AppState;

pub fn router(gw: AppState, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = prometheus.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        handle.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(gw)
}

async fn readyz(State(gw): State<AppState>) -> impl IntoResponse {
    let schemas = !gw.registry.is_empty();
    let kafka = gw.sink.is_ready();
    let draining = gw.draining.load(Ordering::SeqCst);
    let ready = schemas && kafka && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"ready": ready, "schemas_loaded": schemas, "kafka_reachable": kafka, "draining": draining}),
        ),
    )
}
