//! Router tests for write keys and rate limits (`auth`, `keys`, `rate_limit`), through `oneshot`
//! with the in-memory sink.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::keys::Reload;
use super::*;
use crate::config::{self, Config};
use crate::sink::memory::MemorySink;
use crate::sink::RecordKind;
use crate::thrift::{from_compact_bytes, DeadLetter};

const WEB: &str = "wk_web_0123456789abcdef";
const SERVER: &str = "wk_srv_fedcba9876543210";

struct Harness {
    router: Router,
    sink: Arc<MemorySink>,
    gw: AppState,
    keys_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// A gateway with auth on, the keys file holding `keys` (TOML), and extra env settings.
fn harness(keys: &str, env: &[(&str, &str)]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.toml");
    std::fs::write(&keys_file, keys).unwrap();
    let mut vars = vec![(
        "EVENTPIPE_AUTH__KEYS_FILE".to_string(),
        keys_file.display().to_string(),
    )];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = config::load(None, vars, vec![]).unwrap();
    let h = harness_with(config, keys_file, dir);
    assert!(matches!(
        h.gw.access.keys().unwrap().reload(),
        Ok(Reload::Loaded { .. })
    ));
    h
}

fn harness_with(config: Config, keys_file: PathBuf, dir: tempfile::TempDir) -> Harness {
    let sink = Arc::new(MemorySink::new());
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(&config, registry, sink.clone());
    Harness {
        router: app(gw.clone(), &config.cors, config.limits.request_timeout()),
        sink,
        gw,
        keys_file,
        _dir: dir,
    }
}

fn two_keys() -> String {
    format!(
        r#"
[[keys]]
key = "{WEB}"
name = "web"
schemas = ["page_view"]
origins = ["https://shop.example", "https://*.shop.example"]

[[keys]]
key = "{SERVER}"
name = "server"
"#
    )
}

fn bundle(events: usize) -> Value {
    let ev = json!({"schema": "page_view/1", "data": {"url": "https://example.com/a"}});
    json!({ "events": vec![ev; events] })
}

fn req(uri: &str, body: &Value, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

async fn send(h: &Harness, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = h.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

#[tokio::test]
async fn each_key_carrier_is_accepted() {
    let h = harness(&two_keys(), &[]);
    let auth = basic(SERVER);
    let ok = [
        req("/v1/events", &bundle(1), &[("authorization", &auth)]),
        req("/v1/events", &bundle(1), &[("x-write-key", SERVER)]),
        req(&format!("/v1/events?key={SERVER}"), &bundle(1), &[]),
        // sendBeacon: text/plain, key in the query, other parameters ignored.
        Request::post(format!("/v1/events?v=2&key={SERVER}"))
            .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
            .body(Body::from(serde_json::to_vec(&bundle(1)).unwrap()))
            .unwrap(),
    ];
    for (i, r) in ok.into_iter().enumerate() {
        let (status, _, body) = send(&h, r).await;
        assert_eq!(
            (status, &body["accepted"]),
            (StatusCode::OK, &json!(1)),
            "carrier {i}: {body}"
        );
    }
    assert_eq!(h.sink.records().len(), 4);
}

#[tokio::test]
async fn missing_and_unknown_keys_are_401_with_a_challenge_and_cors() {
    let h = harness(&two_keys(), &[]);
    let wrong = basic("wk_not_a_key_at_all_00");
    let cases = [
        req("/v1/events", &bundle(1), &[]),
        req("/v1/events", &bundle(1), &[("authorization", &wrong)]),
        req(
            "/v1/events",
            &bundle(1),
            &[("authorization", &format!("Bearer {SERVER}"))],
        ),
        req("/v1/events", &bundle(1), &[("authorization", "Basic !!!")]),
        req(
            "/v1/events",
            &bundle(1),
            &[("x-write-key", "wk_not_a_key_at_all_00")],
        ),
        req("/v1/events", &bundle(1), &[("x-write-key", "")]),
        req("/v1/events?key=wk_not_a_key_at_all_00", &bundle(1), &[]),
        // A key that differs from a real one in its last character only.
        req(
            "/v1/events",
            &bundle(1),
            &[("x-write-key", &SERVER.replace('0', "1"))],
        ),
    ];
    for (i, mut r) in cases.into_iter().enumerate() {
        r.headers_mut()
            .insert(header::ORIGIN, "https://shop.example".parse().unwrap());
        let (status, headers, body) = send(&h, r).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "case {i}: {body}");
        assert_eq!(body["error"], "unauthorized", "case {i}");
        assert_eq!(
            headers[header::WWW_AUTHENTICATE],
            "Basic realm=\"eventpipe\""
        );
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "*",
            "case {i}"
        );
        assert!(!body.to_string().contains(SERVER), "key echoed: {body}");
    }
    // Refused before the body is read: nothing produced, not even a dead letter.
    tokio::task::yield_now().await;
    assert!(h.sink.records().is_empty());
}

#[tokio::test]
async fn a_key_used_from_another_origin_is_403() {
    let h = harness(&two_keys(), &[]);
    let from = |origin: &str| {
        req(
            "/v1/events",
            &bundle(1),
            &[("x-write-key", WEB), ("origin", origin)],
        )
    };
    for origin in [
        "https://evil.example",
        "http://shop.example",
        "https://shop.example.evil.example",
        "https://evil.example/.shop.example",
        "null",
    ] {
        let (status, headers, body) = send(&h, from(origin)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden_origin")),
            "{origin}"
        );
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
    for origin in ["https://shop.example", "https://eu.shop.example"] {
        assert_eq!(send(&h, from(origin)).await.0, StatusCode::OK, "{origin}");
    }
    // Not a browser (no Origin): allowed; a non-browser could forge any Origin anyway.
    let r = req("/v1/events", &bundle(1), &[("x-write-key", WEB)]);
    assert_eq!(send(&h, r).await.0, StatusCode::OK);
    // A key without an origin list works from anywhere.
    let r = req(
        "/v1/events",
        &bundle(1),
        &[("x-write-key", SERVER), ("origin", "https://evil.example")],
    );
    assert_eq!(send(&h, r).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_schema_the_key_may_not_send_is_rejected_alone() {
    let h = harness(&two_keys(), &[]);
    let mixed = json!({"events": [
        {"schema": "page_view/1", "data": {"url": "https://example.com/a"}},
        {"schema": "click/1", "data": {"element": "b"}},
        {"schema": "page_view/1", "data": {"url": "https://example.com/b"}},
    ]});
    let (status, _, body) = send(&h, req("/v1/events", &mixed, &[("x-write-key", WEB)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2);
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{body}");
    assert_eq!(
        (&rejected[0]["index"], &rejected[0]["reason"]),
        (&json!(1), &json!("schema_not_allowed"))
    );
    let records = h.sink.records();
    let letters: Vec<_> = records
        .iter()
        .filter(|r| r.kind == RecordKind::DeadLetter)
        .collect();
    assert_eq!(letters.len(), 1);
    let dl: DeadLetter = from_compact_bytes(&letters[0].payload).unwrap();
    assert_eq!(dl.reason, "schema_not_allowed");
    // The unrestricted key sends the same bundle whole.
    let (_, _, body) = send(&h, req("/v1/events", &mixed, &[("x-write-key", SERVER)])).await;
    assert_eq!(body["accepted"], 3, "{body}");
}

#[tokio::test]
async fn keys_reload_without_restart_and_a_bad_file_keeps_the_old_keys() {
    let prometheus = crate::metrics::recorder();
    let h = harness(&format!("[[keys]]\nkey = \"{WEB}\"\nname = \"old\"\n"), &[]);
    let status_with = |key: &'static str| {
        let r = req("/v1/events", &bundle(1), &[("x-write-key", key)]);
        let router = h.router.clone();
        async move { router.oneshot(r).await.unwrap().status() }
    };
    assert_eq!(status_with(WEB).await, StatusCode::OK);
    assert_eq!(status_with(SERVER).await, StatusCode::UNAUTHORIZED);

    let store = h.gw.access.keys().unwrap();
    std::fs::write(
        &h.keys_file,
        format!("[[keys]]\nkey = \"{SERVER}\"\nname = \"new\"\n"),
    )
    .unwrap();
    assert_eq!(store.reload(), Ok(Reload::Loaded { keys: 1 }));
    assert_eq!(store.reload(), Ok(Reload::Unchanged));
    assert_eq!(status_with(SERVER).await, StatusCode::OK);
    assert_eq!(status_with(WEB).await, StatusCode::UNAUTHORIZED);

    // Broken files: the keys in force stay, the error names the file, never a key.
    for broken in [
        format!("[[keys]]\nkey = \"{WEB}\"\nname = \"new\"\noops"),
        format!("[[keys]]\nkey = \"{WEB}\"\nname = \"bad name\"\n"),
    ] {
        std::fs::write(&h.keys_file, &broken).unwrap();
        let err = store.reload().unwrap_err();
        assert!(err.contains("keys.toml"), "{err}");
        assert!(!err.contains(WEB), "key leaked: {err}");
        assert_eq!(status_with(SERVER).await, StatusCode::OK);
        assert_eq!(status_with(WEB).await, StatusCode::UNAUTHORIZED);
    }
    std::fs::remove_file(&h.keys_file).unwrap();
    assert!(store.reload().is_err());
    assert_eq!(status_with(SERVER).await, StatusCode::OK);
    assert!(prometheus
        .render()
        .contains("eventpipe_auth_reloads_total{result=\"error\"}"));
}

/// The poller (what `serve` starts) picks a change up on its own.
#[tokio::test]
async fn the_reloader_picks_up_a_changed_file() {
    let h = harness(
        &format!("[[keys]]\nkey = \"{WEB}\"\nname = \"old\"\n"),
        &[("EVENTPIPE_AUTH__RELOAD_INTERVAL_MS", "20")],
    );
    h.gw.access.start().unwrap();
    std::fs::write(
        &h.keys_file,
        format!("[[keys]]\nkey = \"{SERVER}\"\nname = \"new\"\n"),
    )
    .unwrap();
    let mut status = StatusCode::UNAUTHORIZED;
    for _ in 0..500 {
        let r = req("/v1/events", &bundle(1), &[("x-write-key", SERVER)]);
        status = send(&h, r).await.0;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::OK, "the new key was never picked up");
    let r = req("/v1/events", &bundle(1), &[("x-write-key", WEB)]);
    assert_eq!(send(&h, r).await.0, StatusCode::UNAUTHORIZED);
}

/// SIGHUP re-reads the file at once (the poll interval here is an hour).
#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_keys() {
    let h = harness(
        &format!("[[keys]]\nkey = \"{WEB}\"\nname = \"old\"\n"),
        &[("EVENTPIPE_AUTH__RELOAD_INTERVAL_MS", "3600000")],
    );
    h.gw.access.start().unwrap();
    std::fs::write(
        &h.keys_file,
        format!("[[keys]]\nkey = \"{SERVER}\"\nname = \"new\"\n"),
    )
    .unwrap();
    let mut status = StatusCode::UNAUTHORIZED;
    for _ in 0..500 {
        // Sent again each round: a signal that arrives while the reloader is busy is merged.
        let kill = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let r = req("/v1/events", &bundle(1), &[("x-write-key", SERVER)]);
        status = send(&h, r).await.0;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::OK, "SIGHUP did not reload the keys");
}

fn via_proxy(client: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut all = vec![
        ("x-forwarded-for", client),
        ("origin", "https://shop.example"),
    ];
    all.extend_from_slice(headers);
    let mut r = req("/v1/events", &bundle(1), &all);
    r.extensions_mut()
        .insert(ConnectInfo("10.1.2.3:5555".parse::<SocketAddr>().unwrap()));
    r
}

/// Per client IP (behind a trusted proxy), before any key is looked at; one client's limit
/// does not touch another's. Open mode: no keys needed.
#[tokio::test]
async fn per_ip_limit_is_429_with_retry_after_and_independent_per_client() {
    let dir = tempfile::tempdir().unwrap();
    let config = config::load(
        None,
        vec![
            (
                "EVENTPIPE_TRUSTED_PROXIES".into(),
                "[\"10.0.0.0/8\"]".into(),
            ),
            // One request per ~17 minutes after a burst of 2: nothing refills during the test.
            (
                "EVENTPIPE_RATE_LIMIT__IP_REQUESTS_PER_SEC".into(),
                "0.001".into(),
            ),
            ("EVENTPIPE_RATE_LIMIT__IP_BURST".into(), "2".into()),
        ],
        vec![],
    )
    .unwrap();
    let h = harness_with(config, PathBuf::new(), dir);
    for _ in 0..2 {
        assert_eq!(
            send(&h, via_proxy("198.51.100.1", &[])).await.0,
            StatusCode::OK
        );
    }
    let (status, headers, body) = send(&h, via_proxy("198.51.100.1", &[])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&retry), "Retry-After {retry}");
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    // Another client behind the same proxy has its own bucket.
    assert_eq!(
        send(&h, via_proxy("198.51.100.2", &[])).await.0,
        StatusCode::OK
    );
    // The 429 wrote nothing: two accepted from .1, one from .2.
    tokio::task::yield_now().await;
    assert_eq!(h.sink.records().len(), 3);
}

/// Per key, in events: a bundle that does not fit the bucket is refused whole with 429; a
/// smaller one that fits still goes through.
#[tokio::test]
async fn per_key_limit_counts_events() {
    let keys = format!(
        "[[keys]]\nkey = \"{SERVER}\"\nname = \"server\"\nevents_per_sec = 0.001\n\n[[keys]]\nkey = \"{WEB}\"\nname = \"web\"\n"
    );
    let h = harness(
        &keys,
        &[
            ("EVENTPIPE_LIMITS__MAX_EVENTS", "5"),
            ("EVENTPIPE_RATE_LIMIT__KEY_BURST", "5"),
        ],
    );
    let send_n = |key: &'static str, n: usize| {
        send(&h, req("/v1/events", &bundle(n), &[("x-write-key", key)]))
    };
    assert_eq!(send_n(SERVER, 3).await.0, StatusCode::OK);
    let (status, headers, body) = send_n(SERVER, 3).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("write key"),
        "{body}"
    );
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(send_n(SERVER, 2).await.0, StatusCode::OK);
    // A reload that leaves the key's limit alone keeps its bucket (no reset by reloading).
    std::fs::write(
        &h.keys_file,
        format!("{keys}\n[[keys]]\nkey = \"wk_third_key_000000000\"\nname = \"third\"\n"),
    )
    .unwrap();
    assert_eq!(
        h.gw.access.keys().unwrap().reload(),
        Ok(Reload::Loaded { keys: 3 })
    );
    assert_eq!(send_n(SERVER, 1).await.0, StatusCode::TOO_MANY_REQUESTS);
    // A key with no limit of its own (and no default) is unlimited.
    for _ in 0..3 {
        assert_eq!(send_n(WEB, 5).await.0, StatusCode::OK);
    }
    tokio::task::yield_now().await;
    assert_eq!(
        h.sink.records().len(),
        3 + 2 + 15,
        "the refused bundle was produced"
    );
}

#[tokio::test]
async fn preflight_allows_the_key_headers() {
    let h = harness(&two_keys(), &[]);
    let r = Request::options("/v1/events")
        .header(header::ORIGIN, "https://shop.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type,x-write-key,authorization",
        )
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&h, r).await;
    assert!(status.is_success(), "preflight needs no key: {status}");
    let allowed = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("x-write-key") && allowed.contains("authorization"),
        "{allowed}"
    );
}

/// Through a real socket and `serve_with_sink`: the keys file is read at start-up (a missing
/// one stops start-up naming it), a Segment-style client (Basic user, empty password) gets in,
/// and the per-IP limit sees the real peer address.
#[tokio::test]
async fn serve_reads_the_keys_at_start_up_and_limits_the_real_peer() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.json");
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let config = |extra: &[(&str, &str)]| {
        let mut env = vec![
            (
                "EVENTPIPE_AUTH__KEYS_FILE".to_string(),
                keys_file.display().to_string(),
            ),
            ("EVENTPIPE_SHUTDOWN_GRACE_SECS".to_string(), "0".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        config::load(None, env, vec![]).unwrap()
    };
    let listeners = || async {
        (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
    };

    let (public, admin) = listeners().await;
    let registry = Registry::load(&schemas).unwrap();
    let serve = crate::server::serve_with_sink(
        config(&[]),
        registry,
        Arc::new(MemorySink::new()),
        public,
        admin,
        std::future::pending(),
    );
    // A bound on a failure that should be immediate, not a timing assertion.
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), serve)
        .await
        .expect("start-up went on without its keys file")
        .unwrap_err()
        .to_string();
    assert!(err.contains("keys.json"), "{err}");

    std::fs::write(
        &keys_file,
        format!(r#"{{"keys": [{{"key": "{SERVER}", "name": "server"}}]}}"#),
    )
    .unwrap();
    let (public, admin) = listeners().await;
    let url = format!("http://{}/v1/events", public.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let registry = Registry::load(&schemas).unwrap();
    let task = tokio::spawn(crate::server::serve_with_sink(
        config(&[
            ("EVENTPIPE_RATE_LIMIT__IP_REQUESTS_PER_SEC", "0.001"),
            ("EVENTPIPE_RATE_LIMIT__IP_BURST", "2"),
        ]),
        registry,
        Arc::new(MemorySink::new()),
        public,
        admin,
        async {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let post = || client.post(&url).json(&bundle(1));
    let resp = post()
        .basic_auth(SERVER, None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = post().send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Two requests used the burst (the 401 counted too: the limit comes before the key).
    let resp = post()
        .basic_auth(SERVER, None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
