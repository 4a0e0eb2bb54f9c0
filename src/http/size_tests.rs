//! Router tests for the size bounds: what a hostile body can make the gateway write.

use std::io::Write;
use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::{self, Config};
use crate::pipeline::bounds;
use crate::sink::memory::MemorySink;
use crate::sink::{Record, RecordKind};
use crate::thrift::{from_compact_bytes, DeadLetter, Event};

struct Harness {
    router: Router,
    sink: Arc<MemorySink>,
    max_record_bytes: usize,
}

impl Harness {
    fn new(env: &[(&str, &str)]) -> Harness {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let config: Config = config::load(None, env, vec![]).unwrap();
        let sink = Arc::new(MemorySink::new());
        let registry =
            Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        let gw = crate::server::gateway(&config, registry, sink.clone());
        Harness {
            router: app(gw, &config.cors, config.limits.request_timeout()),
            sink,
            max_record_bytes: config.kafka.message_max_bytes(),
        }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Every record that reached the sink, each checked against `message.max.bytes`.
    async fn records(&self, at_least: usize) -> Vec<Record> {
        // Refused requests' dead letters are written in the background.
        for _ in 0..200 {
            if self.sink.records().len() >= at_least {
                break;
            }
            tokio::task::yield_now().await;
        }
        let records = self.sink.records();
        for r in &records {
            let size = bounds::size_of(r);
            assert!(
                size <= self.max_record_bytes,
                "a {size}-byte record over {}",
                self.max_record_bytes
            );
        }
        records
    }
}

fn post(body: Vec<u8>) -> Request<Body> {
    Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(body).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn a_700_kb_event_id_makes_a_small_dead_letter_without_key_or_header() {
    let h = Harness::new(&[]);
    let body = json!({"events": [{"event_id": "i".repeat(700_000)}]});
    let (status, resp) = h.send(post(serde_json::to_vec(&body).unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    let rejected = &resp["rejected"][0];
    assert_eq!(rejected["reason"], "too_large");
    assert!(rejected["event_id"].as_str().unwrap().len() <= bounds::SHOWN_ID_MAX);
    let records = h.records(1).await;
    assert_eq!(records.len(), 1);
    let dl = &records[0];
    assert_eq!(dl.kind, RecordKind::DeadLetter);
    assert_eq!(dl.key, None);
    assert!(dl.headers.iter().all(|(k, _)| *k != "event_id"));
    assert!(bounds::size_of(dl) < 70_000, "{}", bounds::size_of(dl));
}

/// The reported case: 300 KB of context (a few hundred bytes gzipped) copied into every event.
#[tokio::test]
async fn a_300_kb_context_is_413_context_too_large() {
    let h = Harness::new(&[]);
    let events: Vec<Value> = (0..500)
        .map(|_| json!({"schema": "page_view/1", "data": {"url": "https://e.com"}}))
        .collect();
    let body = json!({"context": {"blob": "c".repeat(300_000)}, "events": events});
    let body = gzip(&serde_json::to_vec(&body).unwrap());
    assert!(body.len() < 2_000);
    let req = Request::post("/v1/events")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(body))
        .unwrap();
    let (status, resp) = h.send(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp["error"], "context_too_large");
    assert!(resp["message"].as_str().unwrap().contains("8192"), "{resp}");
    // Only the refused request's dead letter was written, cut to fit.
    let records = h.records(1).await;
    assert_eq!(records.len(), 1);
    let l: DeadLetter = from_compact_bytes(&records[0].payload).unwrap();
    assert_eq!(l.reason, "context_too_large");
}

/// A context just under its limit × 500 events: refused whole with 413, nothing but the
/// request's dead letter produced.
#[tokio::test]
async fn a_request_over_its_output_budget_is_413_output_too_large() {
    let h = Harness::new(&[]);
    let events: Vec<Value> = (0..500)
        .map(|_| json!({"schema": "page_view/1", "data": {"url": "https://e.com"}}))
        .collect();
    let body = json!({"context": {"blob": "c".repeat(8_000)}, "events": events});
    let (status, resp) = h.send(post(serde_json::to_vec(&body).unwrap())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp["error"], "output_too_large");
    assert!(
        resp["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_output_ratio"),
        "{resp}"
    );
    let records = h.records(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, RecordKind::DeadLetter);
}

/// `message.max.bytes` lowered in the librdkafka overrides: an event that passes
/// `max_event_bytes` but whose record would not fit is rejected alone, its dead letter fits.
#[tokio::test]
async fn the_effective_message_max_bytes_holds_every_record() {
    let h = Harness::new(&[("EVENTPIPE_KAFKA__LIBRDKAFKA__message.max.bytes", "20000")]);
    assert_eq!(h.max_record_bytes, 20_000);
    let doubles = vec![json!(1.5); 7_000];
    let body = json!({"events": [
        {"schema": "page_view/1", "data": {"url": "https://e.com", "n": doubles}},
        {"schema": "page_view/1", "data": {"url": "https://e.com"}},
    ]});
    let (status, resp) = h.send(post(serde_json::to_vec(&body).unwrap())).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(resp["accepted"], 1);
    assert_eq!(resp["rejected"][0]["reason"], "too_large");
    let records = h.records(2).await;
    let l: DeadLetter = from_compact_bytes(&records[0].payload).unwrap();
    assert!(l.truncated);
}

#[tokio::test]
async fn long_visitor_ids_and_headers_are_bounded() {
    let h = Harness::new(&[]);
    let body = json!({"context": {"visitor_id": "v".repeat(300)},
                      "events": [{"schema": "page_view/1", "data": {"url": "https://e.com"}}]});
    let (status, resp) = h.send(post(serde_json::to_vec(&body).unwrap())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["rejected"][0]["reason"], "invalid_envelope");
    assert_eq!(resp["rejected"][0]["path"], "/context/visitor_id");

    let body = json!({"events": [{"schema": "page_view/1", "data": {"url": "https://e.com"}}]});
    let req = Request::post("/v1/events")
        .header(header::USER_AGENT, "u".repeat(8_000))
        .header(header::ORIGIN, "o".repeat(8_000))
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    let (status, _) = h.send(req).await;
    assert_eq!(status, StatusCode::OK);
    let records = h.records(2).await;
    let e: Event = from_compact_bytes(&records[1].payload).unwrap();
    let ua = e.enrichment.user_agent.unwrap();
    assert!(ua.len() <= bounds::USER_AGENT_MAX && ua.ends_with(bounds::TRUNCATION_MARK));
    assert!(e.enrichment.origin.unwrap().len() <= bounds::ORIGIN_MAX);
}

#[test]
fn size_settings_are_validated_at_start_up() {
    let load = |k: &str, v: &str| config::load(None, vec![(k.into(), v.into())], vec![]);
    for bad in ["1000", "lots", "2000000000"] {
        let err = load("EVENTPIPE_KAFKA__LIBRDKAFKA__message.max.bytes", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("message.max.bytes"), "{err}");
    }
    let err = load("EVENTPIPE_LIMITS__MAX_CONTEXT_BYTES", "65536")
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_context_bytes"), "{err}");
    let err = load("EVENTPIPE_LIMITS__MAX_OUTPUT_RATIO", "2")
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_output_ratio"), "{err}");
    let c = Config::default();
    assert_eq!(
        (
            c.limits.max_context_bytes,
            c.limits.max_output_ratio,
            c.limits.output_bytes_per_event
        ),
        (8192, 4, 2048)
    );
    assert_eq!(c.kafka.message_max_bytes(), 1_000_000);
}
