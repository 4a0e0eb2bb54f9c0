//! Router tests: the whole HTTP contract through `oneshot`, with the in-memory sink.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::{self, Config};
use crate::sink::memory::MemorySink;
use crate::sink::{RecordKind, SinkError};
use crate::thrift::{from_compact_bytes, json::from_thrift, DeadLetter, Event};

struct Harness {
    router: Router,
    sink: Arc<MemorySink>,
}

fn harness_with(config: Config) -> Harness {
    let sink = Arc::new(MemorySink::new());
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(&config, registry, sink.clone());
    Harness {
        router: app(gw, &config.cors, config.limits.request_timeout()),
        sink,
    }
}

fn harness() -> Harness {
    harness_with(Config::default())
}

fn post() -> axum::http::request::Builder {
    Request::post("/v1/events").header(header::CONTENT_TYPE, "application/json")
}

async fn send(h: &Harness, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = h.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, headers, body)
}

fn json_req(body: &Value) -> Request<Body> {
    post()
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn valid_event() -> Value {
    json!({"schema": "page_view/1", "event_id": ID, "data": {"url": "https://example.com/a"}})
}

async fn wait_for_records(sink: &MemorySink, n: usize) -> Vec<crate::sink::Record> {
    for _ in 0..100 {
        let r = sink.records();
        if r.len() >= n {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    sink.records()
}

/// The golden files document the contract: a mixed bundle and its exact response.
#[tokio::test]
async fn golden_mixed_bundle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let request: Value =
        serde_json::from_slice(&std::fs::read(dir.join("mixed_bundle.request.json")).unwrap())
            .unwrap();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("mixed_bundle.response.json")).unwrap())
            .unwrap();
    let h = harness();
    let (status, _, body) = send(&h, json_req(&request)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        expected,
        "actual response:\n{}",
        serde_json::to_string_pretty(&body).unwrap()
    );
    let records = h.sink.records();
    let events = records
        .iter()
        .filter(|r| r.topic.starts_with("events.") && &*r.topic != "events.invalid")
        .count();
    let letters = records
        .iter()
        .filter(|r| &*r.topic == "events.invalid")
        .count();
    assert_eq!(events as u64, expected["accepted"].as_u64().unwrap());
    assert_eq!(letters, expected["rejected"].as_array().unwrap().len());
}

#[tokio::test]
async fn accepted_events_are_enriched() {
    let h = harness_with(
        config::load(
            None,
            vec![(
                "EVENTPIPE_TRUSTED_PROXIES".into(),
                "[\"10.0.0.0/8\"]".into(),
            )],
            vec![],
        )
        .unwrap(),
    );
    let mut req = post()
        .header(header::USER_AGENT, "test-agent/1")
        .header("x-forwarded-for", "198.51.100.4")
        .header(header::ORIGIN, "https://shop.example")
        .body(Body::from(
            serde_json::to_vec(
                &json!({"sent_at": "2026-11-21T12:00:00.000Z", "events": [valid_event()]}),
            )
            .unwrap(),
        ))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("10.1.2.3:5555".parse::<SocketAddr>().unwrap()));
    let (status, _, body) = send(&h, req).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"accepted": 1, "rejected": []}))
    );
    let e: Event = from_compact_bytes(&h.sink.records()[0].payload).unwrap();
    assert_eq!(e.enrichment.client_ip.as_deref(), Some("198.51.100.4"));
    assert_eq!(e.enrichment.user_agent.as_deref(), Some("test-agent/1"));
    assert_eq!(e.enrichment.origin.as_deref(), Some("https://shop.example"));
    assert_eq!(
        e.enrichment.sent_at.as_deref(),
        Some("2026-11-21T12:00:00.000Z")
    );
    assert_eq!(e.enrichment.collector_version, env!("CARGO_PKG_VERSION"));
    assert!(e.enrichment.received_at_ms > 1_700_000_000_000);
}

#[tokio::test]
async fn send_beacon_text_plain_and_every_encoding_are_accepted() {
    let h = harness();
    let raw = serde_json::to_vec(&json!({"events": [valid_event()]})).unwrap();
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(Body::from(raw.clone()))
        .unwrap();
    assert_eq!(send(&h, req).await.0, 200);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let mut br = Vec::new();
    brotli::BrotliCompress(&mut &raw[..], &mut br, &Default::default()).unwrap();
    let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    zl.write_all(&raw).unwrap();
    for (enc, body) in [
        ("gzip", gz.finish().unwrap()),
        ("zstd", zstd::encode_all(&raw[..], 1).unwrap()),
        ("br", br),
        ("deflate", zl.finish().unwrap()),
    ] {
        let req = post()
            .header(header::CONTENT_ENCODING, enc)
            .body(Body::from(body))
            .unwrap();
        let (status, _, body) = send(&h, req).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{enc}"
        );
    }
}

/// Depth over HTTP: a too-deep event is rejected alone (the batch is answered 200), a too-deep
/// batch context refuses the request with a message naming it, and is recorded as a dead letter.
#[tokio::test]
async fn depth_limits_over_http() {
    let h = harness();
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let bundle = json!({"events": [valid_event(),
        {"schema": "page_view/1", "data": {"url": "https://example.com/d", "d": deep}}]});
    let (status, _, body) = send(&h, json_req(&bundle)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"][0]["reason"], "too_deep");

    let before = wait_for_records(&h.sink, 2).await.len();
    let deep_context = (0..64).fold(json!(1), |v, _| json!([v]));
    let bundle = json!({"context": {"a": deep_context}, "events": [valid_event()]});
    let (status, _, body) = send(&h, json_req(&bundle)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "undecodable_body");
    assert!(
        body["message"].as_str().unwrap().contains("batch context"),
        "{body}"
    );
    let records = wait_for_records(&h.sink, before + 1).await;
    let dl: DeadLetter = from_compact_bytes(&records[before].payload).unwrap();
    assert_eq!(
        (dl.reason.as_str(), dl.http_status),
        ("undecodable_body", Some(400))
    );
}

#[tokio::test]
async fn undecodable_body_is_400_and_recorded_as_a_dead_letter() {
    let h = harness();
    let req = post().body(Body::from("{\"events\": [oops")).unwrap();
    let (status, _, body) = send(&h, req).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "undecodable_body");
    assert!(body["message"].as_str().unwrap().contains("JSON"));
    let records = wait_for_records(&h.sink, 1).await;
    assert_eq!(records.len(), 1);
    let dl: DeadLetter = from_compact_bytes(&records[0].payload).unwrap();
    assert_eq!(
        (dl.reason.as_str(), dl.http_status),
        ("undecodable_body", Some(400))
    );
    assert_eq!(dl.original, b"{\"events\": [oops");

    let (status, _, body) = send(&h, json_req(&json!([1, 2]))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("not_a_bundle"))
    );
}

#[tokio::test]
async fn limits_answer_413_with_a_reason() {
    let config = config::load(
        None,
        vec![
            ("EVENTPIPE_LIMITS__MAX_BODY_BYTES".into(), "1000".into()),
            (
                "EVENTPIPE_LIMITS__MAX_DECOMPRESSED_BYTES".into(),
                "5000".into(),
            ),
            ("EVENTPIPE_LIMITS__MAX_EVENTS".into(), "3".into()),
        ],
        vec![],
    )
    .unwrap();
    let h = harness_with(config);
    let big = vec![b' '; 2000];
    let (status, _, body) = send(&h, post().body(Body::from(big.clone())).unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    // Without Content-Length (chunked) the limit still holds while streaming.
    let stream = Body::from_stream(futures_stream(big));
    let (status, _, _) = send(&h, post().body(stream).unwrap()).await;
    assert_eq!(status, 413);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 6000]).unwrap();
    let req = post()
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(gz.finish().unwrap()))
        .unwrap();
    let (status, _, body) = send(&h, req).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("decompressed_too_large")
        )
    );

    let four = json!({"events": [valid_event(), valid_event(), valid_event(), valid_event()]});
    let (status, _, body) = send(&h, json_req(&four)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_many_events"))
    );
}

fn futures_stream(
    data: Vec<u8>,
) -> impl futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = data
        .chunks(100)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    tokio_stream_iter(chunks)
}

fn tokio_stream_iter<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn unsupported_type_and_encoding_are_415() {
    let h = harness();
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("a=b"))
        .unwrap();
    let (status, _, body) = send(&h, req).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let req = post()
        .header(header::CONTENT_ENCODING, "compress")
        .body(Body::from("x"))
        .unwrap();
    let (status, _, body) = send(&h, req).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_encoding")
        )
    );
}

#[tokio::test]
async fn kafka_unavailable_is_503_with_retry_after_and_nothing_accepted() {
    let h = harness();
    h.sink.fail_with(Some(SinkError::Timeout));
    let (status, headers, body) = send(&h, json_req(&json!({"events": [valid_event()]}))).await;
    assert_eq!(status, 503);
    assert!(headers.get(header::RETRY_AFTER).is_some());
    assert_eq!(body["error"], "unavailable");
    assert!(body.get("accepted").is_none());
    assert!(
        !body["message"].as_str().unwrap().contains("kafka did not"),
        "internal detail leaked"
    );
}

#[tokio::test]
async fn cors_preflight_and_response_headers() {
    let h = harness();
    let req = Request::options("/v1/events")
        .header(header::ORIGIN, "https://shop.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
        .body(Body::empty())
        .unwrap();
    let resp = h.router.clone().oneshot(req).await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert!(resp
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
        .is_none());

    let cfg = config::load(
        None,
        vec![(
            "EVENTPIPE_CORS__ALLOWED_ORIGINS".into(),
            "[\"https://a.example\"]".into(),
        )],
        vec![],
    )
    .unwrap();
    let h = harness_with(cfg);
    let mut req = json_req(&json!({"events": []}));
    req.headers_mut()
        .insert(header::ORIGIN, "https://a.example".parse().unwrap());
    let resp = h.router.clone().oneshot(req).await.unwrap();
    assert_eq!(
        resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://a.example"
    );
    let mut req = json_req(&json!({"events": []}));
    req.headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    let resp = h.router.clone().oneshot(req).await.unwrap();
    assert!(resp
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

#[tokio::test]
async fn wrong_method_and_path() {
    let h = harness();
    let resp = h
        .router
        .clone()
        .oneshot(Request::get("/v1/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = h
        .router
        .clone()
        .oneshot(Request::post("/v2/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn data_round_trips_exactly() {
    let h = harness();
    let data = json!({"service": "s", "level": "info", "message": "héllo ✓ \u{1F600}",
                      "fields": {"big": 18446744073709551615u64, "neg": -9223372036854775808i64, "pi": 3.141592653589794, "tiny": 5e-324, "nested": [[{"a": null}]]}});
    let (status, _, _) = send(
        &h,
        json_req(&json!({"events": [{"schema": "server_log/1", "data": data}]})),
    )
    .await;
    assert_eq!(status, 200);
    let e: Event = from_compact_bytes(&h.sink.records()[0].payload).unwrap();
    assert_eq!(from_thrift(&e.data).unwrap(), data);
}

#[tokio::test]
async fn spooled_events_are_answered_202_with_the_count() {
    let h = harness();
    h.sink.spool_all(true);
    let bundle = json!({"events": [valid_event(), {"schema": "nope/1", "data": {}}]});
    let (status, _, body) = send(&h, json_req(&bundle)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["spooled"], 1);
    assert_eq!(body["rejected"][0]["reason"], "unknown_schema");
}

#[tokio::test]
async fn retried_event_ids_are_not_produced_twice() {
    let h = harness();
    let bundle =
        json!({"events": [valid_event(), {"schema": "click/1", "data": {"element": "b"}}]});
    let (status, _, body) = send(&h, json_req(&bundle)).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    assert_eq!(h.sink.records().len(), 2);
    // The client retries (same event id); the id-less event gets a fresh id and goes again.
    let (status, _, body) = send(&h, json_req(&bundle)).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::OK, Some(2))
    );
    let records = h.sink.records();
    assert_eq!(
        records.len(),
        3,
        "the retried event with a client id was produced again"
    );
    let ids: Vec<&str> = records
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| *k == "event_id")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert_eq!(ids.iter().filter(|id| **id == ID).count(), 1);
}

/// A retry mixing seen and unseen ids (and a dead letter): exactly the unseen ones are produced.
#[tokio::test]
async fn partial_retry_produces_only_the_unseen_ids() {
    let h = harness();
    let ev = |id: &str| json!({"schema": "page_view/1", "event_id": id, "data": {"url": "https://e.x/"}});
    let ids: Vec<String> = (0..40).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let first: Vec<Value> = ids.iter().step_by(2).map(|id| ev(id)).collect();
    let (status, _, _) = send(&h, json_req(&json!({ "events": first }))).await;
    assert_eq!(status, StatusCode::OK);
    let before = h.sink.records().len();
    let mut retry: Vec<Value> = ids.iter().map(|id| ev(id)).collect();
    retry.insert(7, json!({"schema": "page_view/1", "data": {"url": 7}}));
    let (status, _, body) = send(&h, json_req(&json!({ "events": retry }))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["accepted"].as_u64(), Some(40), "{body}");
    let produced: Vec<String> = h.sink.records()[before..]
        .iter()
        .filter_map(|r| {
            let id = r.headers.iter().find(|(k, _)| *k == "event_id")?;
            (r.kind != RecordKind::DeadLetter).then(|| id.1.clone())
        })
        .collect();
    let unseen: Vec<String> = ids.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(produced, unseen);
    assert_eq!(
        h.sink
            .records()
            .iter()
            .filter(|r| r.kind == RecordKind::DeadLetter)
            .count(),
        1
    );
}

#[tokio::test]
async fn refused_requests_are_not_remembered_as_acknowledged() {
    let h = harness();
    h.sink.fail_with(Some(SinkError::SpoolFull));
    let bundle = json!({"events": [valid_event()]});
    let (status, headers, _) = send(&h, json_req(&bundle)).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key(header::RETRY_AFTER));
    h.sink.fail_with(None);
    let (status, _, _) = send(&h, json_req(&bundle)).await;
    assert_eq!(status, 200);
    assert_eq!(
        h.sink.records().len(),
        1,
        "a refused event must be produced on retry"
    );
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_written_is_counted_not_silent() {
    crate::metrics::recorder(); // installed before the request records anything
    let h = harness();
    // Kafka down and the spool full: the refused request's dead letter has nowhere to go.
    h.sink.fail_with(Some(SinkError::SpoolFull));
    let req = post().body(Body::from("not json at all")).unwrap();
    let (status, _, body) = send(&h, req).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("undecodable_body"))
    );
    let needle = "eventpipe_dead_letter_failures_total{reason=\"spool_full\"}";
    assert!(
        crate::metrics::eventually_rendered(needle).await,
        "missing {needle}"
    );
    assert!(h.sink.records().is_empty());
}
