//! Router tests of Segment's endpoints: routes, answers and status mapping, body write keys.

use std::io::Write;
use std::path::Path;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::config::{self, Config};
use crate::http::{app, AppState};
use crate::schema::Registry;
use crate::sink::memory::MemorySink;
use crate::sink::{RecordKind, SinkError};
use crate::thrift::{from_compact_bytes, json::from_thrift, DeadLetter, Event};

const KEY: &str = "wk_seg_0123456789abcdef";

struct Harness {
    router: axum::Router,
    sink: std::sync::Arc<MemorySink>,
    _gw: AppState,
    _dir: tempfile::TempDir,
}

/// A gateway with Segment on ("Order Completed" -> purchase/1) and extra env settings.
fn harness(env: &[(&str, &str)]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut vars = vec![
        ("EVENTPIPE_SEGMENT__ENABLED".to_string(), "true".to_string()),
        (
            "EVENTPIPE_SEGMENT__EVENTS".to_string(),
            r#"{"Order Completed" = "purchase/1"}"#.to_string(),
        ),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = config::load(None, vars, vec![]).unwrap();
    harness_with(config, dir)
}

fn harness_with(config: Config, dir: tempfile::TempDir) -> Harness {
    let sink = std::sync::Arc::new(MemorySink::new());
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(&config, registry, sink.clone());
    if let Some(keys) = gw.access.keys() {
        keys.reload().unwrap();
    }
    Harness {
        router: app(gw.clone(), &config.cors, config.limits.request_timeout()),
        sink,
        _gw: gw,
        _dir: dir,
    }
}

/// Auth on, one key.
fn harness_with_auth() -> Harness {
    harness_with_auth_and(&[])
}

/// Auth on, one key, and extra env settings.
fn harness_with_auth_and(env: &[(&str, &str)]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!("[[keys]]\nkey = \"{KEY}\"\nname = \"web\"\n"),
    )
    .unwrap();
    let mut vars = vec![("EVENTPIPE_AUTH__KEYS_FILE", keys.to_str().unwrap())];
    vars.extend_from_slice(env);
    let h = harness(&vars);
    Harness { _dir: dir, ..h }
}

async fn send(h: &Harness, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = h.router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn events(h: &Harness) -> Vec<Event> {
    h.sink
        .records()
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::Event { .. }))
        .map(|r| from_compact_bytes(&r.payload).unwrap())
        .collect()
}

fn dead_letters(h: &Harness) -> Vec<DeadLetter> {
    h.sink
        .records()
        .iter()
        .filter(|r| matches!(r.kind, RecordKind::DeadLetter))
        .map(|r| from_compact_bytes(&r.payload).unwrap())
        .collect()
}

#[tokio::test]
async fn every_route_and_short_form_lands_its_call() {
    let h = harness(&[]);
    let cases = [
        (
            "/v1/track",
            json!({"event": "Video Played", "userId": "u"}),
            "segment_track",
        ),
        (
            "/v1/t",
            json!({"event": "Video Played", "userId": "u"}),
            "segment_track",
        ),
        (
            "/v1/identify",
            json!({"traits": {}, "userId": "u"}),
            "segment_identify",
        ),
        ("/v1/i", json!({"userId": "u"}), "segment_identify"),
        ("/v1/page", json!({"anonymousId": "a"}), "segment_page"),
        ("/v1/p", json!({"anonymousId": "a"}), "segment_page"),
        ("/v1/screen", json!({"userId": "u"}), "segment_screen"),
        ("/v1/s", json!({"userId": "u"}), "segment_screen"),
        (
            "/v1/group",
            json!({"groupId": "g", "userId": "u"}),
            "segment_group",
        ),
        (
            "/v1/g",
            json!({"groupId": "g", "userId": "u"}),
            "segment_group",
        ),
        (
            "/v1/alias",
            json!({"previousId": "p", "userId": "u"}),
            "segment_alias",
        ),
        (
            "/v1/a",
            json!({"previousId": "p", "userId": "u"}),
            "segment_alias",
        ),
        (
            "/v1/batch",
            json!({"batch": [{"type": "track", "event": "Video Played"}]}),
            "segment_track",
        ),
        (
            "/v1/b",
            json!({"batch": [{"type": "alias", "previousId": "p"}]}),
            "segment_alias",
        ),
    ];
    for (i, (path, body, schema)) in cases.iter().enumerate() {
        let (status, _, answer) = send(&h, post(path, body)).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(answer, json!({"success": true}), "{path}");
        let all = events(&h);
        assert_eq!(all.len(), i + 1, "{path}");
        assert_eq!(all[i].schema_name, *schema, "{path}");
    }
}

#[tokio::test]
async fn a_batch_lands_mapped_data_and_dead_letters_the_invalid_with_200() {
    let h = harness(&[]);
    let body = json!({"writeKey": "k", "sentAt": "2026-11-23T10:00:00Z", "batch": [
        {"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": "m-1",
         "properties": {"order_id": "o-1", "currency": "EUR", "total_minor": 10,
                        "items": [{"sku": "s", "quantity": 1, "price_minor": 10}]}},
        {"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": "m-2",
         "properties": {"order_id": "o-2"}},
        {"type": "group", "userId": "u-1", "messageId": "m-3"},
    ]});
    let (status, _, answer) = send(&h, post("/v1/batch", &body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"success": true}));
    let ev = events(&h);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].schema_name, "purchase");
    assert_eq!(
        ev[0].event_id,
        crate::protocol::segment::event_id("k", "m-1").to_string()
    );
    let data = from_thrift(&ev[0].data).unwrap();
    assert_eq!(data["order_id"], "o-1");
    let context = from_thrift(&ev[0].context).unwrap();
    assert_eq!(context["visitor_id"], "u-1");
    assert_eq!(
        ev[0].enrichment.sent_at.as_deref(),
        Some("2026-11-23T10:00:00Z")
    );
    let key = h.sink.records()[0].key.clone().unwrap();
    assert_eq!(key, b"u-1", "partitioned by the user");
    let dl = dead_letters(&h);
    assert_eq!(dl.len(), 2);
    assert_eq!(dl[0].reason, "schema_violation");
    assert_eq!(dl[1].reason, "schema_violation");
    assert!(dl[1].message.contains("group_id"), "{}", dl[1].message);
}

#[tokio::test]
async fn a_retried_message_id_is_deduplicated() {
    let h = harness(&[]);
    let msg = json!({"event": "Video Played", "userId": "u", "messageId": "ajs-next-abc", "writeKey": "k"});
    for _ in 0..2 {
        let (status, _, _) = send(&h, post("/v1/t", &msg)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(events(&h).len(), 1, "the retry was not produced again");
}

/// What each refusal becomes, and that "durable in the spool" is a 200 too.
#[tokio::test]
async fn statuses_as_segment_sdks_expect_them() {
    let h = harness(&[("EVENTPIPE_SEGMENT__MAX_BATCH_BYTES", "40000")]);
    let msg = json!({"event": "E", "userId": "u"});

    h.sink.spool_all(true);
    let (status, _, answer) = send(&h, post("/v1/track", &msg)).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"success": true})));
    h.sink.spool_all(false);

    let bad = Request::post("/v1/track")
        .body(Body::from("{not json"))
        .unwrap();
    let (status, _, answer) = send(&h, bad).await;
    assert_eq!(status, 400);
    assert_eq!(answer["code"], "undecodable_body");
    assert_eq!(answer["success"], false);
    assert!(answer["message"].is_string());

    let big = json!({"batch": [], "pad": "x".repeat(50_000)});
    let (status, _, answer) = send(&h, post("/v1/batch", &big)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("decompressed_too_large"))
    );

    let form = Request::post("/v1/track")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("a=b"))
        .unwrap();
    assert_eq!(send(&h, form).await.0, 400);

    h.sink.fail_with(Some(SinkError::SpoolFull));
    let (status, headers, answer) = send(&h, post("/v1/track", &msg)).await;
    assert_eq!(
        status, 429,
        "unavailable is a 429 for Segment's SDKs: {answer}"
    );
    assert_eq!(answer["code"], "unavailable");
    assert!(headers.contains_key(header::RETRY_AFTER));
    h.sink.fail_with(None);

    // Gzip like native.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let typed = json!({"batch": [{"type": "track", "event": "Gzipped"}]});
    gz.write_all(&serde_json::to_vec(&typed).unwrap()).unwrap();
    let req = Request::post("/v1/batch")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(gz.finish().unwrap()))
        .unwrap();
    let (status, _, answer) = send(&h, req).await;
    assert_eq!(status, 200, "{answer}");
    let data = from_thrift(&events(&h).last().unwrap().data).unwrap();
    assert_eq!(data["event"], "Gzipped");
}

#[test]
fn the_status_table() {
    use super::status;
    use crate::http::error::ApiError;
    let cases = [
        (
            ApiError::Overloaded {
                retry_after_secs: 1,
            },
            429,
        ),
        (ApiError::RequestTimeout { limit_ms: 1 }, 429),
        (
            ApiError::Unavailable {
                cause: SinkError::Timeout,
                retry_after_secs: 3,
            },
            429,
        ),
        (
            ApiError::RateLimited {
                scope: "client",
                retry_after_secs: 1,
            },
            429,
        ),
        (ApiError::BodyTooLarge { limit: 1 }, 400),
        (ApiError::TooManyEvents { count: 2, limit: 1 }, 400),
        (ApiError::Undecodable("x".into()), 400),
        (ApiError::UnsupportedEncoding("x".into()), 400),
        (ApiError::Unauthorized("x"), 401),
        (ApiError::ForbiddenOrigin, 403),
    ];
    for (err, want) in cases {
        assert_eq!(status(&err), want, "{err:?}");
    }
}

#[tokio::test]
async fn with_auth_a_key_in_the_body_or_the_head_is_enough() {
    let h = harness_with_auth();
    let msg = |key: Option<&str>| {
        let mut m = json!({"event": "E", "userId": "u"});
        if let Some(k) = key {
            m["writeKey"] = json!(k);
        }
        m
    };
    // analytics.js: text/plain, the key only in the body.
    assert_eq!(send(&h, post("/v1/t", &msg(Some(KEY)))).await.0, 200);
    assert_eq!(send(&h, post("/v1/t", &msg(None))).await.0, 401);
    assert_eq!(
        send(&h, post("/v1/t", &msg(Some("wk_wrong_0123456789"))))
            .await
            .0,
        401
    );
    // A body read for its key is bounded by segment.max_batch_bytes.
    let big = json!({"writeKey": KEY, "batch": [], "pad": "x".repeat(600 << 10)});
    let (status, _, answer) = send(&h, post("/v1/batch", &big)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "body_too_large");
    // Server SDKs: HTTP Basic.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{KEY}:"),
    );
    let req = Request::post("/v1/batch")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::from(
            serde_json::to_vec(
                &json!({"batch": [{"type": "track", "event": "E", "messageId": "m"}]}),
            )
            .unwrap(),
        ))
        .unwrap();
    assert_eq!(send(&h, req).await.0, 200);
    // Ids derive from the key's name, not the key.
    let ev = events(&h);
    assert_eq!(
        ev.last().unwrap().event_id,
        crate::protocol::segment::event_id("web", "m").to_string()
    );
}

#[tokio::test]
async fn off_by_default_the_routes_do_not_exist() {
    let h = harness_with(Config::default(), tempfile::tempdir().unwrap());
    let (status, _, _) = send(&h, post("/v1/batch", &json!({"batch": []}))).await;
    assert_eq!(status, 404);
}

/// A body that never ends, raising `polled` once the server starts reading it.
struct Slow(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<tokio::sync::oneshot::Sender<()>>,
);

impl futures_core::Stream for Slow {
    type Item = Result<bytes::Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(tx) = self.1.take() {
            let _ = tx.send(());
        }
        std::task::Poll::Pending
    }
}

/// A keyless (body-key) request whose body never completes; `(polled flag, first-poll signal)`.
fn slow_keyless(
    ip: [u8; 4],
) -> (
    Request<Body>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let polled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut req = Request::post("/v1/batch")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(Slow(polled.clone(), Some(tx))))
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            ip, 4000,
        ))));
    (req, polled, rx)
}

/// Slow keyless bodies hold only their own small budget: one more is refused at once (429
/// overloaded, not after the request timeout) while a keyed native request goes through.
#[tokio::test]
async fn keyless_reads_have_a_small_budget_of_their_own() {
    let h = harness_with_auth_and(&[
        ("EVENTPIPE_SEGMENT__MAX_KEYLESS_READS", "2"),
        ("EVENTPIPE_LIMITS__MAX_CONCURRENT_REQUESTS", "3"),
        ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "20000"),
    ]);
    let mut holding = Vec::new();
    for i in 0..2 {
        let (req, _, started) = slow_keyless([10, 0, 0, i]);
        let router = h.router.clone();
        holding.push(tokio::spawn(router.oneshot(req)));
        started.await.expect("the body is being read");
    }
    let (req, _, _) = slow_keyless([10, 0, 0, 9]);
    let (status, headers, answer) = send(&h, req).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["code"], "overloaded", "{answer}");
    assert!(headers.contains_key(header::RETRY_AFTER));

    let native = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-write-key", KEY)
        .body(Body::from(
            serde_json::to_vec(&json!({"events": [
                {"schema": "page_view/1", "data": {"url": "https://example.com/a"}}
            ]}))
            .unwrap(),
        ))
        .unwrap();
    let (status, _, answer) = send(&h, native).await;
    assert_eq!(status, 200, "a keyed request still goes through: {answer}");
    for task in holding {
        task.abort();
    }
}

/// An IP over its rate limit is refused before a byte of its keyless body is read.
#[tokio::test]
async fn a_keyless_request_over_its_ip_limit_is_refused_before_its_body_is_read() {
    let h = harness_with_auth_and(&[
        ("EVENTPIPE_RATE_LIMIT__IP_REQUESTS_PER_SEC", "0.001"),
        ("EVENTPIPE_RATE_LIMIT__IP_BURST", "1"),
        ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "20000"),
    ]);
    let ip = axum::extract::ConnectInfo(std::net::SocketAddr::from(([10, 1, 2, 3], 4000)));
    let mut first = post(
        "/v1/t",
        &json!({"writeKey": KEY, "event": "E", "userId": "u"}),
    );
    first.extensions_mut().insert(ip);
    assert_eq!(send(&h, first).await.0, 200, "the burst allows one");

    let (req, polled, _) = slow_keyless([10, 1, 2, 3]);
    let (status, _, answer) = send(&h, req).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    assert!(
        !polled.load(std::sync::atomic::Ordering::SeqCst),
        "the body was not read"
    );
}
