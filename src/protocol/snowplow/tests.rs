//! Router tests of the Snowplow routes through `oneshot`, with the in-memory sink and the shipped
//! schemas plus an Iglu-layout one.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::config::{self, Config};
use crate::schema::Registry;
use crate::sink::memory::MemorySink;
use crate::thrift::{from_compact_bytes, json::from_thrift, DeadLetter, Event};

const EID: &str = "c6ef3124-b53a-4b13-a233-0088f79dcbcb";
const EID2: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const CHECKOUT: &str = "iglu:com.acme/checkout/jsonschema/1-0-2";

struct Harness {
    router: Router,
    sink: Arc<MemorySink>,
    _schemas: tempfile::TempDir,
}

/// The shipped schemas plus `com.acme/checkout/jsonschema/1-0-2` (Iglu layout) and an Iglu
/// context schema `com.acme/user/jsonschema/1-0-0`.
fn schemas() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        let to = dir.path().join(entry.file_name());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(entry.path()).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    let iglu = |vendor: &str, name: &str, version: &str, body: Value| {
        let path = dir.path().join(vendor).join(name).join("jsonschema");
        std::fs::create_dir_all(&path).unwrap();
        let mut doc = json!({"$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
            "self": {"vendor": vendor, "name": name, "format": "jsonschema", "version": version}});
        doc.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        std::fs::write(path.join(version), doc.to_string()).unwrap();
    };
    iglu(
        "com.acme",
        "checkout",
        "1-0-2",
        json!({"type": "object", "required": ["total"],
               "properties": {"total": {"type": "number"}, "currency": {"type": "string", "maxLength": 3}},
               "additionalProperties": false}),
    );
    iglu(
        "com.acme",
        "user",
        "1-0-0",
        json!({"type": "object", "required": ["tier"], "properties": {"tier": {"enum": ["free", "pro"]}}}),
    );
    dir
}

fn harness_with(extra: &[(&str, &str)]) -> Harness {
    let mut env = vec![(
        "EVENTPIPE_SNOWPLOW__ENABLED".to_string(),
        "true".to_string(),
    )];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config: Config = config::load(None, env, vec![]).unwrap();
    let dir = schemas();
    let sink = Arc::new(MemorySink::new());
    let registry = Registry::load(dir.path()).unwrap();
    let gw = crate::server::gateway(&config, registry, sink.clone());
    super::check_schemas(&gw).unwrap();
    Harness {
        router: crate::http::app(gw, &config.cors, config.limits.request_timeout()),
        sink,
        _schemas: dir,
    }
}

fn harness() -> Harness {
    harness_with(&[])
}

async fn send(h: &Harness, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = h.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes.to_vec())
}

fn tp2(events: Value) -> Request<Body> {
    let body = json!({"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": events});
    Request::post(super::POST_PATH)
        .header(header::CONTENT_TYPE, "application/json; charset=UTF-8")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn events(sink: &MemorySink) -> Vec<(String, Event)> {
    sink.records()
        .iter()
        .filter(|r| &*r.topic != "events.invalid")
        .map(|r| (r.topic.to_string(), from_compact_bytes(&r.payload).unwrap()))
        .collect()
}

fn letters(sink: &MemorySink) -> Vec<DeadLetter> {
    sink.records()
        .iter()
        .filter(|r| &*r.topic == "events.invalid")
        .map(|r| from_compact_bytes(&r.payload).unwrap())
        .collect()
}

fn reasons(sink: &MemorySink) -> Vec<(String, String)> {
    letters(sink)
        .into_iter()
        .map(|l| (l.reason, l.message))
        .collect()
}

fn ue(schema: &str, data: Value) -> Value {
    json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
           "data": {"schema": schema, "data": data}})
}

fn contexts(items: Value) -> Value {
    json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1", "data": items})
}

#[tokio::test]
async fn a_payload_maps_every_event_type_and_answers_ok() {
    let h = harness();
    let cx = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        contexts(json!([{"schema": "iglu:com.acme/user/jsonschema/1-0-0", "data": {"tier": "pro"}},
                         {"schema": "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0", "data": {"id": "p1"}}]))
        .to_string(),
    );
    let ue_px = base64::engine::general_purpose::STANDARD
        .encode(ue(CHECKOUT, json!({"total": 59.9, "currency": "EUR"})).to_string());
    let (status, headers, body) = send(
        &h,
        tp2(json!([
            {"e": "pv", "eid": EID, "tv": "js-4.1.0", "p": "web", "aid": "shop", "uid": "u-1", "duid": "d-1",
             "sid": "s-1", "url": "https://shop.example/", "page": "Home", "refr": "https://ref.example/",
             "dtm": "1763900000123", "stm": "1763900000456", "res": "1920x1080", "lang": "fr-FR", "tz": "Europe/Paris", "cx": cx},
            {"e": "se", "eid": EID2, "duid": "d-1", "se_ca": "shop", "se_ac": "add", "se_va": "2.5"},
            {"e": "ue", "eid": "7b1c0b59-4d0f-4e8c-9b47-2b0c7c3a1f10", "ue_px": ue_px},
        ])),
    )
    .await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let got = events(&h.sink);
    assert_eq!(got.len(), 3, "{:?}", reasons(&h.sink));
    let (topic, pv) = &got[0];
    assert_eq!(topic, "events.snowplow_page_view");
    assert_eq!(pv.event_id, EID);
    assert_eq!(pv.ts.as_deref(), Some("2025-11-23T12:13:20.123Z"));
    assert_eq!(
        from_thrift(&pv.data).unwrap(),
        json!({"url": "https://shop.example/", "title": "Home", "referrer": "https://ref.example/"})
    );
    let ctx = from_thrift(&pv.context).unwrap();
    assert_eq!(ctx["visitor_id"], "u-1", "uid first");
    assert_eq!(ctx["session_id"], "s-1");
    for (k, v) in [
        ("tv", "js-4.1.0"),
        ("p", "web"),
        ("aid", "shop"),
        ("duid", "d-1"),
        ("res", "1920x1080"),
        ("tz", "Europe/Paris"),
        ("dtm", "1763900000123"),
    ] {
        assert_eq!(ctx["snowplow"][k], v, "{k}");
    }
    assert!(ctx["snowplow"].get("cx").is_none() && ctx["snowplow"].get("e").is_none());
    assert_eq!(
        ctx["contexts"][0],
        json!({"schema": "iglu:com.acme/user/jsonschema/1-0-0", "data": {"tier": "pro"}})
    );
    assert_eq!(
        pv.enrichment.sent_at.as_deref(),
        Some("2025-11-23T12:13:20.456Z")
    );
    let (topic, se) = &got[1];
    assert_eq!(topic, "events.snowplow_structured");
    assert_eq!(
        from_thrift(&se.data).unwrap(),
        json!({"category": "shop", "action": "add", "value": 2.5})
    );
    assert_eq!(
        from_thrift(&se.context).unwrap()["visitor_id"],
        "d-1",
        "duid when no uid"
    );
    let (topic, checkout) = &got[2];
    assert_eq!(topic, "events.com.acme.checkout");
    assert_eq!(
        (checkout.schema_name.as_str(), checkout.schema_major),
        ("com.acme.checkout", 1)
    );
    assert_eq!(
        from_thrift(&checkout.data).unwrap(),
        json!({"total": 59.9, "currency": "EUR"})
    );
    let record = h
        .sink
        .records()
        .into_iter()
        .find(|r| &*r.topic == "events.com.acme.checkout")
        .unwrap();
    assert_eq!(
        record.header("schema"),
        Some(CHECKOUT),
        "the exact revision travels in the header"
    );
    assert_eq!(
        record.key.as_deref(),
        Some(&b"7b1c0b59-4d0f-4e8c-9b47-2b0c7c3a1f10"[..]),
        "no uid/duid/sid: the event id"
    );
}

#[tokio::test]
async fn bad_events_are_dead_lettered_alone_with_reasons() {
    let h = harness();
    let bad_cx = serde_json::to_string(&contexts(
        json!([{"schema": "iglu:com.acme/user/jsonschema/1-0-0", "data": {"tier": "gold"}}]),
    ))
    .unwrap();
    let (status, _, _) = send(
        &h,
        tp2(json!([
            {"e": "ue", "eid": EID, "ue_pr": ue(CHECKOUT, json!({"total": "lots"})).to_string()},
            {"e": "ue", "eid": EID2, "ue_pr": ue("iglu:com.acme/nope/jsonschema/1-0-0", json!({})).to_string()},
            {"e": "ue", "eid": "11111111-2222-4333-8444-555555555555", "ue_px": "!!not base64!!"},
            {"e": "pv", "eid": "21111111-2222-4333-8444-555555555555", "url": "https://a.example/", "co": bad_cx},
            {"e": "zz", "eid": "31111111-2222-4333-8444-555555555555"},
            {"e": "pv", "eid": "not-a-uuid", "url": "https://a.example/"},
            {"e": "se", "eid": "41111111-2222-4333-8444-555555555555", "se_ca": "c", "se_ac": "a", "se_va": "NaN-ish"},
            {"e": "pv", "eid": "51111111-2222-4333-8444-555555555555", "url": "https://ok.example/"},
        ])),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "dead letters are final: answered ok, not retried"
    );
    assert_eq!(events(&h.sink).len(), 1);
    let got: Vec<(String, String)> = letters(&h.sink)
        .into_iter()
        .map(|l| (l.reason, l.path.unwrap_or_default()))
        .collect();
    let want: Vec<(String, String)> = [
        ("schema_violation", "/data/total"),
        ("unknown_schema", "/ue_pr/data/schema"),
        ("invalid_envelope", "/ue_px"),
        ("schema_violation", "/context/contexts/0/data/tier"),
        ("invalid_envelope", "/e"),
        ("bad_event_id", "/event_id"),
        ("schema_violation", "/data/value"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    // A translator rejection keeps what the tracker sent.
    let l = &letters(&h.sink)[2];
    let original: Value = serde_json::from_slice(&l.original).unwrap();
    assert_eq!(original["original"]["ue_px"], "!!not base64!!");
    assert_eq!(
        l.event_id.as_deref(),
        Some("11111111-2222-4333-8444-555555555555")
    );
}

#[tokio::test]
async fn unknown_contexts_are_kept_or_rejected_as_configured() {
    let cx =
        contexts(json!([{"schema": "iglu:com.other/thing/jsonschema/1-0-0", "data": {"a": 1}}]))
            .to_string();
    let pv = json!([{"e": "pv", "eid": EID, "url": "https://a.example/", "co": cx}]);
    let h = harness();
    assert_eq!(send(&h, tp2(pv.clone())).await.0, StatusCode::OK);
    assert_eq!(events(&h.sink).len(), 1);
    let h = harness_with(&[("EVENTPIPE_SNOWPLOW__UNKNOWN_CONTEXTS", "reject")]);
    assert_eq!(send(&h, tp2(pv)).await.0, StatusCode::OK);
    assert_eq!(events(&h.sink).len(), 0);
    assert_eq!(letters(&h.sink)[0].reason, "unknown_schema");
}

#[tokio::test]
async fn a_retried_eid_is_stored_once() {
    let h = harness();
    let pv = json!([{"e": "pv", "eid": EID, "url": "https://a.example/"}]);
    for _ in 0..3 {
        assert_eq!(send(&h, tp2(pv.clone())).await.0, StatusCode::OK);
    }
    assert_eq!(events(&h.sink).len(), 1);
}

#[tokio::test]
async fn get_i_answers_the_gif_and_reads_base64_in_any_alphabet() {
    let h = harness();
    let data = ue(CHECKOUT, json!({"total": 1, "currency": "€?>"})).to_string();
    let mut ids = vec![];
    for (i, engine) in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ]
    .into_iter()
    .enumerate()
    {
        let eid = format!("{i}1111111-2222-4333-8444-555555555555");
        let px = engine.encode(&data);
        let enc = |s: &str| {
            s.replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        };
        let uri = format!(
            "/i?e=ue&eid={eid}&ue_px={}&duid=d-9&url=https%3A%2F%2Fa.example%2F&key=wk_secret_never_stored",
            enc(&px)
        );
        let (status, headers, body) =
            send(&h, Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{engine:?} {:?}",
            headers.get("x-eventpipe-error")
        );
        assert_eq!(body, crate::http::pixel::GIF);
        assert_eq!(headers[header::CONTENT_TYPE], "image/gif");
        assert_eq!(
            headers[header::CACHE_CONTROL],
            "no-cache, no-store, must-revalidate"
        );
        ids.push(eid);
    }
    let got = events(&h.sink);
    assert_eq!(got.len(), 4, "{:?}", reasons(&h.sink));
    for (_, e) in &got {
        assert_eq!(from_thrift(&e.data).unwrap()["currency"], "€?>");
        assert_eq!(
            from_thrift(&e.context).unwrap()["snowplow"]["url"],
            "https://a.example/"
        );
        assert!(
            from_thrift(&e.context).unwrap()["snowplow"]
                .get("key")
                .is_none(),
            "a write key is never stored"
        );
    }
}

#[tokio::test]
async fn oversize_is_400_for_post_and_get() {
    let h = harness_with(&[("EVENTPIPE_LIMITS__MAX_EVENTS", "2")]);
    let pv = json!({"e": "pv", "url": "https://a.example/"});
    let (status, _, body) = send(&h, tp2(json!([pv, pv, pv]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).starts_with("too_many_events: "));
    let long = "x".repeat(20_000);
    let (status, headers, body) = send(
        &h,
        Request::get(format!("/i?e=pv&url={long}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, crate::http::pixel::GIF);
    assert!(headers["x-eventpipe-error"]
        .to_str()
        .unwrap()
        .starts_with("query_too_large"));
    let (status, _, body) = send(
        &h,
        Request::post(super::POST_PATH)
            .body(Body::from(
                "{\"schema\": \"iglu:x/y/jsonschema/1-0-0\", \"data\": []}",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).starts_with("not_a_bundle: "));
}

#[tokio::test]
async fn cors_echoes_the_origin_with_credentials() {
    let preflight = || {
        Request::builder()
            .method("OPTIONS")
            .uri(super::POST_PATH)
            .header(header::ORIGIN, "https://shop.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .body(Body::empty())
            .unwrap()
    };
    // The default: no CORS grant (and no credentials) for any origin.
    let h = harness();
    let (_, headers, _) = send(&h, preflight()).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(headers
        .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
        .is_none());
    let mut req = tp2(json!([{"e": "pv", "eid": EID, "url": "https://a.example/"}]));
    req.headers_mut()
        .insert(header::ORIGIN, "https://shop.example".parse().unwrap());
    let (status, headers, _) = send(&h, req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "same-origin and server senders still send"
    );
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert!(headers
        .get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
        .is_none());
    // `["*"]`, written by the operator: any origin echoed.
    let h = harness_with(&[("EVENTPIPE_SNOWPLOW__CORS_ORIGINS", "[\"*\"]")]);
    let (status, headers, _) = send(&h, preflight()).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.example"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    let mut req = tp2(json!([{"e": "pv", "eid": EID2, "url": "https://a.example/"}]));
    req.headers_mut()
        .insert(header::ORIGIN, "https://shop.example".parse().unwrap());
    let (_, headers, _) = send(&h, req).await;
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.example"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    // A configured list: other origins get no CORS grant.
    let h = harness_with(&[(
        "EVENTPIPE_SNOWPLOW__CORS_ORIGINS",
        "[\"https://shop.example\"]",
    )]);
    let mut req = tp2(json!([{"e": "pv", "eid": EID, "url": "https://a.example/"}]));
    req.headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    let (_, headers, _) = send(&h, req).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn disabled_means_no_routes_and_write_keys_apply_when_required() {
    let config = Config::default();
    let dir = schemas();
    let gw = crate::server::gateway(
        &config,
        Registry::load(dir.path()).unwrap(),
        Arc::new(MemorySink::new()),
    );
    let router = crate::http::app(gw, &config.cors, config.limits.request_timeout());
    let resp = router.oneshot(tp2(json!([]))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        keys.path(),
        "[[keys]]\nkey = \"wk_test_0123456789abcdef\"\nname = \"t\"\n",
    )
    .unwrap();
    let path = keys.path().to_str().unwrap();
    // With auth on the choice must be written (config::snowplow's tests: start-up fails
    // without it); `false` keeps the routes public (the key store is read in `serve`).
    let open = harness_with(&[
        ("EVENTPIPE_AUTH__KEYS_FILE", path),
        ("EVENTPIPE_SNOWPLOW__REQUIRE_WRITE_KEY", "false"),
    ]);
    let pv = json!([{"e": "pv", "eid": EID, "url": "https://a.example/"}]);
    assert_eq!(send(&open, tp2(pv.clone())).await.0, StatusCode::OK);
    let closed = harness_with(&[
        ("EVENTPIPE_AUTH__KEYS_FILE", path),
        ("EVENTPIPE_SNOWPLOW__REQUIRE_WRITE_KEY", "true"),
    ]);
    assert_eq!(send(&closed, tp2(pv)).await.0, StatusCode::UNAUTHORIZED);
}

/// Only translators can pre-reject: a native client sending the marker shape gets the usual
/// unknown-field rejection, not a reason of its choosing.
#[tokio::test]
async fn native_bundles_cannot_use_the_translator_rejection() {
    let h = harness();
    let marked = json!({"events": [{"rejected": {"reason": "too_deep", "path": "/x", "message": "chosen"}, "event_id": EID}]});
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(marked.to_string()))
        .unwrap();
    let (status, _, body) = send(&h, req).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["rejected"][0]["reason"], "invalid_envelope", "{body}");
    assert!(body["rejected"][0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown field"));
}

/// The GET pixel passes the client's JSON through as the event: a forged translator rejection
/// is read as a native event (unknown member), never dead-lettered with the client's reason.
#[tokio::test]
async fn the_pixel_cannot_forge_a_translator_rejection() {
    let h = harness();
    let forged = json!({"rejected": {"reason": "schema_violation", "path": "/data/x", "message": "chosen"}, "event_id": EID});
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
    let req = Request::get(format!("/v1/pixel.gif?e={e}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&h, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, crate::http::pixel::GIF);
    let letters = letters(&h.sink);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason, "invalid_envelope", "{letters:?}");
    assert_ne!(letters[0].message, "chosen");
    assert!(letters[0].message.contains("unknown field"), "{letters:?}");
}

/// Spooled is durable: answered 200 like Kafka (trackers count only 2xx, some only 200); when
/// nothing can be stored, 503 with Retry-After so the tracker retries the same eids.
#[tokio::test]
async fn spooled_is_ok_and_unavailable_is_retryable() {
    let h = harness();
    let pv = json!([{"e": "pv", "eid": EID, "url": "https://a.example/"}]);
    h.sink.spool_all(true);
    let (status, _, body) = send(&h, tp2(pv.clone())).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    h.sink.spool_all(false);
    h.sink.fail_with(Some(crate::sink::SinkError::Closed));
    let pv2 = json!([{"e": "pv", "eid": EID2, "url": "https://a.example/"}]);
    let (status, headers, body) = send(&h, tp2(pv2)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert!(String::from_utf8_lossy(&body).starts_with("unavailable: "));
    let get = Request::get(format!("/i?e=pv&eid={EID2}&url=x"))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&h, get).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(body, crate::http::pixel::GIF);
}

#[tokio::test]
async fn start_up_names_missing_shipped_schemas() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("page_view")).unwrap();
    std::fs::write(dir.path().join("page_view/1.json"), "{}").unwrap();
    let config: Config = config::load(
        None,
        vec![("EVENTPIPE_SNOWPLOW__ENABLED".into(), "true".into())],
        vec![],
    )
    .unwrap();
    let gw = crate::server::gateway(
        &config,
        Registry::load(dir.path()).unwrap(),
        Arc::new(MemorySink::new()),
    );
    let err = super::check_schemas(&gw).unwrap_err();
    assert!(err.contains("snowplow_page_view/1"), "{err}");
}
