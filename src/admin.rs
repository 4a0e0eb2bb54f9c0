//! The admin listener: `/metrics`, `/healthz`, `/readyz`, never on the public port.
//!
//! Liveness and readiness are separate on purpose: `/healthz` says the process answers (restart
//! it if not); `/readyz` says it should get traffic (schemas loaded, Kafka metadata reachable, not
//! draining). A Kafka outage must not make an orchestrator restart every gateway at once.
//!
//! The listener runs on its own OS thread with a current-thread runtime (`spawn`): a public
//! runtime starved by a burst of large bodies must not delay liveness, or an orchestrator would
//! restart a healthy host in the middle of its busiest minute.

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
    let gw_metrics = gw.clone();
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = prometheus.clone();
                let gw_metrics = gw_metrics.clone();
                async move {
                    gw_metrics.admission.publish_gauges();
                    // `/readyz`'s verdict, for alerting on hosts out of rotation.
                    let ready = Readiness::of(&gw_metrics).ready();
                    metrics::gauge!(crate::metrics::READY).set(if ready { 1.0 } else { 0.0 });
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

/// What `/readyz` checks; `READY=1` to systemd waits for the same (`crate::notify`).
pub struct Readiness {
    /// At least one schema is loaded.
    pub schemas: bool,
    /// Events can be made durable: Kafka acknowledging, or the spool accepting.
    pub kafka: bool,
    /// Shutdown has begun.
    pub draining: bool,
}

impl Readiness {
    pub fn of(gw: &crate::http::Gateway) -> Readiness {
        Readiness {
            schemas: !gw.registry.is_empty(),
            kafka: gw.sink.is_ready(),
            draining: gw.draining.load(Ordering::SeqCst),
        }
    }

    pub fn ready(&self) -> bool {
        self.schemas && self.kafka && !self.draining
    }
}

async fn readyz(State(gw): State<AppState>) -> impl IntoResponse {
    let r = Readiness::of(&gw);
    let (schemas, kafka, draining, ready) = (r.schemas, r.kafka, r.draining, r.ready());
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

/// Serves `router` on `listener` from a dedicated thread and current-thread runtime until `stop`
/// resolves (or its sender is dropped).
pub fn spawn(
    listener: std::net::TcpListener,
    router: Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("eventpipe-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                listener.set_nonblocking(true)?;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stop.await;
                    })
                    .await
            })
        })
}
