//! Router tests of the audit counts: what a request adds to the gateway's books.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::{self, Config};
use crate::sink::memory::MemorySink;

struct Harness {
    router: Router,
    gw: AppState,
    sink: Arc<MemorySink>,
}

fn harness(env: &[(&str, &str)]) -> Harness {
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config: Config = config::load(None, vars, vec![]).unwrap();
    let sink = Arc::new(MemorySink::new());
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(&config, registry, sink.clone());
    Harness {
        router: app(gw.clone(), &config.cors, config.limits.request_timeout()),
        gw,
        sink,
    }
}

async fn post(h: &Harness, body: Value) -> StatusCode {
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    h.router.clone().oneshot(req).await.unwrap().status()
}

fn clicks(ids: &[&str]) -> Value {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"schema": "click/1", "event_id": id, "data": {"element": "a"}}))
        .collect();
    json!({ "events": events })
}

/// Sum of a count over every window of `topic` (the test may straddle a window boundary).
fn total(h: &Harness, topic: &str, f: impl Fn(&crate::audit::Counts) -> i64) -> i64 {
    h.gw.audit
        .due(i64::MAX / 2, 0, true)
        .iter()
        .filter(|s| &*s.topic == topic)
        .map(|s| f(&s.counts))
        .sum()
}

const A: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const B: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const C: &str = "a1a2a3a4-b1b2-4c1c-8d1d-e1e2e3e4e5e6";

#[tokio::test]
async fn acknowledged_spooled_and_dead_lettered_records_are_counted_once() {
    let h = harness(&[]);
    let mut body = clicks(&[A, B]);
    body["events"]
        .as_array_mut()
        .unwrap()
        .push(json!({"schema": "click/1", "data": {"element": 42}}));
    assert_eq!(post(&h, body).await, StatusCode::OK);
    // A retry of A and B is answered from the dedup window: not produced, not counted.
    assert_eq!(post(&h, clicks(&[A, B])).await, StatusCode::OK);
    h.sink.spool_all(true);
    assert_eq!(post(&h, clicks(&[C])).await, StatusCode::ACCEPTED);
    let kafka = total(&h, "events.click", |c| c.events_kafka);
    let pending = total(&h, "events.click", |c| c.events_pending);
    assert_eq!((kafka, pending), (2, 1));
    assert_eq!(total(&h, "events.invalid", |c| c.events_kafka), 1);
    let reasons = total(&h, "events.invalid", |c| {
        c.dead_letters.get("schema_violation").copied().unwrap_or(0)
    });
    assert_eq!(reasons, 1);
    let produced = h.sink.records().len();
    assert_eq!(produced, 4, "what the books count is what was produced");
}

#[tokio::test]
async fn refused_requests_are_counted_by_reason_including_timeouts() {
    let h = harness(&[
        ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "50"),
        ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "200"),
    ]);
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/xml")
        .body(Body::from("<x/>"))
        .unwrap();
    let status = h.router.clone().oneshot(req).await.unwrap().status();
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A body that never ends: 408 from the whole-request timeout layer.
    struct Never;
    impl futures_core::Stream for Never {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Pending
        }
    }
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(Never))
        .unwrap();
    let status = h.router.clone().oneshot(req).await.unwrap().status();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    let refused = |reason: &str| {
        total(&h, "events.invalid", |c| {
            c.requests_refused.get(reason).copied().unwrap_or(0)
        })
    };
    assert_eq!(refused("unsupported_media_type"), 1);
    assert_eq!(refused("request_timeout"), 1);
}
