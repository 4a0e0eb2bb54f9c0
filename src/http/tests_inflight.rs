//! Router tests for bounded work in flight (503 `overloaded`), the 408 shape, and lingering close.

use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;
use crate::config::{self, Config};
use crate::sink::memory::MemorySink;

fn router(config: &Config) -> Router {
    let sink = Arc::new(MemorySink::new());
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(config, registry, sink);
    app(gw, &config.cors, config.limits.request_timeout())
}

fn config(pairs: &[(&str, &str)]) -> Config {
    let env = pairs
        .iter()
        .map(|(k, v)| (format!("EVENTPIPE_{k}"), v.to_string()))
        .collect::<Vec<_>>();
    config::load(None, env, vec![]).unwrap()
}

/// A request body fed through a channel: it stalls while the sender is alive and silent.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A POST whose body sends `first` and then stalls until the returned sender is dropped.
pub(super) fn stalled_post(first: &[u8], declared: usize) -> (Request<Body>, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(Bytes::copy_from_slice(first)).unwrap();
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, declared)
        .header(header::ORIGIN, "https://shop.example")
        .body(Body::new(ChannelBody(rx)))
        .unwrap();
    (req, tx)
}

async fn answer(router: &Router, req: Request<Body>) -> (StatusCode, header::HeaderMap, Value) {
    let resp = router.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

fn counter(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_slow_body_gets_408_in_the_error_shape_with_cors_and_counted() {
    let prometheus = crate::metrics::recorder();
    let before = counter(
        &prometheus.render(),
        crate::metrics::HTTP_REQUESTS,
        "status=\"408\"",
    );
    let router = router(&config(&[
        ("LIMITS__REQUEST_TIMEOUT_MS", "200"),
        ("KAFKA__ACK_TIMEOUT_MS", "100"),
    ]));
    let (req, _keep_stalled) = stalled_post(b"{\"events\":[", 100);
    let (status, headers, body) = answer(&router, req).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("200 ms"),
        "{body}"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(headers[header::CONNECTION], "close", "body left unread");
    let after = counter(
        &prometheus.render(),
        crate::metrics::HTTP_REQUESTS,
        "status=\"408\"",
    );
    assert!(
        after >= before + 1.0,
        "408 not counted: {before} -> {after}"
    );
}

#[tokio::test]
async fn beyond_the_request_limit_is_503_overloaded_with_retry_after() {
    let router = router(&config(&[("LIMITS__MAX_CONCURRENT_REQUESTS", "1")]));
    let (held, _keep_stalled) = stalled_post(b"{", 100);
    let first = tokio::spawn(router.clone().oneshot(held));
    // The first request takes the only permit at its first poll and holds it while its body
    // stalls.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!first.is_finished(), "the stalled request was answered");
    let (status, headers, body) = answer(&router, json_req()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "overloaded", "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    first.abort();
}

fn json_req() -> Request<Body> {
    let body = r#"{"events":[]}"#;
    Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::ORIGIN, "https://shop.example")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn beyond_the_byte_budget_is_503_and_within_it_is_served() {
    // Built directly: start-up validation would refuse a budget below one maximal request.
    let mut cfg = config(&[]);
    cfg.limits.max_body_bytes = 100_000;
    cfg.limits.max_inflight_bytes = 50_000;
    let router = router(&cfg);
    // Declared larger than the budget: refused before the body is read, and the connection is
    // marked for a lingering close.
    let big = format!(r#"{{"events":[],"pad":"{}"}}"#, " ".repeat(60_000));
    let req = Request::post("/v1/events")
        .header(header::CONTENT_LENGTH, big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    let (status, headers, body) = answer(&router, req).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded"))
    );
    assert_eq!(headers[header::CONNECTION], "close");
    // A small gzip body that inflates past the budget: refused while decompressing.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(big.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let req = Request::post("/v1/events")
        .header(header::CONTENT_ENCODING, "gzip")
        .header(header::CONTENT_LENGTH, gz.len())
        .body(Body::from(gz))
        .unwrap();
    let (status, headers, body) = answer(&router, req).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("overloaded"))
    );
    assert!(
        headers.get(header::CONNECTION).is_none(),
        "body was read whole"
    );
    // Every charge was returned: a request within the budget is served.
    let (status, headers, body) = answer(&router, json_req()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers.get(header::CONNECTION).is_none());
}
