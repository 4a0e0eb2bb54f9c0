//! Router tests for `X-Request-Id`: echoed or generated on every answer, early refusals included,
//! and stored in the request's dead letters.

use std::net::SocketAddr;
use std::path::Path;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;

use super::request_id::HEADER;
use super::*;
use crate::config::{self, Config};
use crate::sink::memory::MemorySink;
use crate::sink::{RecordKind, SinkError};
use crate::thrift::{from_compact_bytes, DeadLetter};

fn config(pairs: &[(&str, &str)]) -> Config {
    let env = pairs
        .iter()
        .map(|(k, v)| (format!("EVENTPIPE_{k}"), v.to_string()))
        .collect::<Vec<_>>();
    config::load(None, env, vec![]).unwrap()
}

fn router(config: &Config) -> (Router, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(config, registry, sink.clone());
    (app(gw, &config.cors, config.limits.request_timeout()), sink)
}

fn post(body: impl Into<Body>, id: Option<&str>) -> Request<Body> {
    let mut req = Request::post("/v1/events").header(header::CONTENT_TYPE, "application/json");
    if let Some(id) = id {
        req = req.header(HEADER, id);
    }
    let mut req = req.body(body.into()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("192.0.2.7:5555".parse::<SocketAddr>().unwrap()));
    req
}

async fn answer(router: &Router, req: Request<Body>) -> (StatusCode, HeaderMap) {
    let resp = router.clone().oneshot(req).await.unwrap();
    (resp.status(), resp.headers().clone())
}

fn id_of(headers: &HeaderMap) -> &str {
    headers
        .get(HEADER)
        .expect("X-Request-Id in the answer")
        .to_str()
        .unwrap()
}

fn mixed_bundle() -> String {
    json!({"events": [
        {"schema": "page_view/1", "data": {"url": "https://example.com/a"}},
        {"schema": "page_view/1", "data": {"url": 5}},
    ]})
    .to_string()
}

fn letters(sink: &MemorySink) -> Vec<DeadLetter> {
    sink.records()
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::DeadLetter))
        .map(|r| from_compact_bytes(&r.payload).unwrap())
        .collect()
}

async fn wait_for_letter(sink: &MemorySink) -> DeadLetter {
    for _ in 0..500 {
        if let Some(l) = letters(sink).pop() {
            return l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no dead letter written");
}

#[tokio::test]
async fn the_clients_id_is_echoed_and_stored_in_the_dead_letter() {
    let (router, sink) = router(&Config::default());
    let mut req = post(mixed_bundle(), Some("req-abc.123"));
    req.headers_mut()
        .insert(header::ORIGIN, "https://shop.example".parse().unwrap());
    let (status, headers) = answer(&router, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(id_of(&headers), "req-abc.123");
    // Browsers may read it (and send it: see the preflight case below).
    let exposed = headers[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-request-id"), "{exposed}");
    let letters = letters(&sink);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].request_id.as_deref(), Some("req-abc.123"));
}

#[tokio::test]
async fn without_an_id_a_uuid_v4_is_generated_per_request() {
    let (router, sink) = router(&Config::default());
    let (_, first) = answer(&router, post(mixed_bundle(), None)).await;
    let (_, second) = answer(&router, post(mixed_bundle(), None)).await;
    let first = id_of(&first).to_string();
    let uuid = uuid::Uuid::try_parse(&first).expect("a UUID");
    assert_eq!(uuid.get_version_num(), 4);
    assert_ne!(first, id_of(&second));
    // The dead letter names the id the client was answered with.
    assert_eq!(
        letters(&sink)[0].request_id.as_deref(),
        Some(first.as_str())
    );
}

#[tokio::test]
async fn a_hostile_id_is_replaced_everywhere() {
    let (router, sink) = router(&Config::default());
    for hostile in [
        "<script>alert(1)</script>",
        "a b",
        &"x".repeat(request_id::MAX_LEN + 1),
    ] {
        let (_, headers) = answer(&router, post(mixed_bundle(), Some(hostile))).await;
        let id = id_of(&headers).to_string();
        assert_ne!(id, hostile);
        assert!(uuid::Uuid::try_parse(&id).is_ok(), "{id}");
        assert_eq!(
            letters(&sink).pop().unwrap().request_id.as_deref(),
            Some(id.as_str())
        );
    }
}

/// Every layer's answer carries the id: refusals on headers, on the body, for capacity, for
/// time, preflights and unknown paths; and a refused request's dead letter (written in the
/// background) names it.
#[tokio::test]
async fn early_and_error_answers_carry_the_id() {
    let (router, sink) = router(&config(&[("LIMITS__MAX_BODY_BYTES", "1000")]));
    let mut too_large = post(Body::from(vec![b' '; 10]), Some("id-413"));
    too_large
        .headers_mut()
        .insert(header::CONTENT_LENGTH, "5000".parse().unwrap());
    let mut unsupported = post("{}", Some("id-415"));
    unsupported
        .headers_mut()
        .insert(header::CONTENT_TYPE, "image/png".parse().unwrap());
    let preflight = Request::options("/v1/events")
        .header(header::ORIGIN, "https://shop.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "x-request-id")
        .header(HEADER, "id-preflight")
        .body(Body::empty())
        .unwrap();
    let unknown_path = Request::get("/nope")
        .header(HEADER, "id-404")
        .body(Body::empty())
        .unwrap();
    let cases = [
        (post("{not json", Some("id-400")), StatusCode::BAD_REQUEST),
        (too_large, StatusCode::PAYLOAD_TOO_LARGE),
        (unsupported, StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (preflight, StatusCode::OK),
        (unknown_path, StatusCode::NOT_FOUND),
    ];
    for (req, want) in cases {
        let sent = req.headers()[HEADER].to_str().unwrap().to_string();
        let (status, headers) = answer(&router, req).await;
        assert_eq!(status, want, "{sent}");
        assert_eq!(id_of(&headers), sent);
        if sent == "id-preflight" {
            let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap();
            assert!(allowed.contains("x-request-id"), "{allowed}");
        }
    }
    assert_eq!(
        wait_for_letter(&sink).await.request_id.as_deref(),
        Some("id-400")
    );

    sink.fail_with(Some(SinkError::Timeout));
    let (status, headers) = answer(&router, post(mixed_bundle(), Some("id-503"))).await;
    assert_eq!(
        (status, id_of(&headers)),
        (StatusCode::SERVICE_UNAVAILABLE, "id-503")
    );

    let (router, _) = router_with_limit();
    answer(&router, post(mixed_bundle(), None)).await;
    let (status, headers) = answer(&router, post(mixed_bundle(), Some("id-429"))).await;
    assert_eq!(
        (status, id_of(&headers)),
        (StatusCode::TOO_MANY_REQUESTS, "id-429")
    );
}

fn router_with_limit() -> (Router, Arc<MemorySink>) {
    // One request, then nothing refills during the test.
    router(&config(&[
        ("RATE_LIMIT__IP_REQUESTS_PER_SEC", "0.001"),
        ("RATE_LIMIT__IP_BURST", "1"),
    ]))
}

#[tokio::test]
async fn a_timed_out_request_is_answered_408_with_its_id() {
    let router = router(&config(&[
        ("LIMITS__REQUEST_TIMEOUT_MS", "200"),
        ("KAFKA__ACK_TIMEOUT_MS", "100"),
    ]))
    .0;
    let (mut req, _keep_stalled) = super::tests_inflight::stalled_post(b"{\"events\":[", 100);
    req.headers_mut().insert(HEADER, "id-408".parse().unwrap());
    let (status, headers) = answer(&router, req).await;
    assert_eq!(
        (status, id_of(&headers)),
        (StatusCode::REQUEST_TIMEOUT, "id-408")
    );
}

/// Log output captured for one test (the subscriber is this thread's default while it runs).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A log line written while the request is handled, even from the task that writes its dead
/// letter after the answer, names the request's id.
#[tokio::test]
async fn log_lines_of_a_request_name_its_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // Other tests run in parallel threads with no subscriber. While this thread's subscriber is
    // the only dispatcher registered, tracing-core registers a new callsite with the *calling
    // thread's* default, so a callsite another test reaches first is cached as "never" for
    // everyone. A second live dispatcher makes it consult every registered one instead (a
    // test-harness artifact: a real process has one global subscriber).
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let (router, sink) = router(&Config::default());
    sink.fail_with(Some(SinkError::SpoolFull));
    let (status, _) = answer(&router, post("not json", Some("id-logged"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = || String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    for _ in 0..500 {
        if text().contains("could not record a refused request") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let log = text();
    let line = log
        .lines()
        .find(|l| l.contains("could not record a refused request"))
        .unwrap_or_else(|| panic!("no warning logged: {log}"));
    assert!(line.contains("request_id=\"id-logged\""), "{line}");
}
