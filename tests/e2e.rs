//! End-to-end: a real Tansu broker, the gateway on port 0, real HTTP(S) requests, and an
//! independent consumer (Python confluent-kafka + thriftpy2) checking what landed where.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{consume, Broker, Gateway, Topics};
use serde_json::{json, Value};

const V1: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const V2: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const BAD: &str = "a1a2a3a4-b1b2-4c1c-8d1d-e1e2e3e4e5e6";

async fn setup(extra: &[(&str, &str)]) -> (Broker, Topics, Gateway) {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let gw = Gateway::start(common::config(&broker.brokers(), &topics, extra)).await;
    gw.wait_ready().await;
    (broker, topics, gw)
}

/// `n` fresh event ids.
fn new_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

/// One valid `click/1` event per id.
fn click_events(ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| json!({"schema": "click/1", "event_id": id, "data": {"element": "b"}}))
        .collect()
}

/// Posts a bundle of `click/1` events with these ids.
async fn post_clicks(client: &reqwest::Client, url: &str, ids: &[String]) -> reqwest::Response {
    client
        .post(url)
        .json(&json!({"events": click_events(ids)}))
        .send()
        .await
        .unwrap()
}

fn by_event_id(records: &[Value]) -> std::collections::HashMap<String, Value> {
    records
        .iter()
        .map(|r| {
            (
                r["value"]["event_id"].as_str().unwrap_or("").to_string(),
                r.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_and_dead_letters_land_where_they_belong() {
    let (broker, topics, gw) = setup(&[]).await;
    let data = json!({"service": "api", "level": "info", "message": "naïve café ✓ \u{1F680}",
        "fields": {"u64": 18446744073709551615u64, "i64": -9223372036854775808i64, "pi": 3.141592653589794,
                   "tiny": 5e-324, "big": 1.7976931348623157e308, "deep": [[[{"x": [null, true, false]}]]], "empty": {}}});
    let bundle = json!({
        "sent_at": "2026-11-21T12:00:00.000Z",
        "context": {"visitor_id": "v-123", "session_id": "s-9", "app": {"name": "web", "version": "4.2.0"}},
        "events": [
            {"schema": "page_view/1", "event_id": V1, "ts": "2026-11-21T11:59:58.120Z",
             "context": {"app": {"name": "ios"}}, "data": {"url": "https://example.com/a"}},
            {"schema": "server_log/1", "event_id": V2, "data": data},
            {"schema": "page_view/1", "event_id": BAD, "data": {"url": "ftp://nope"}},
        ]
    });
    let resp = reqwest::Client::new()
        .post(gw.url())
        .header("user-agent", "e2e/1.0")
        .json(&bundle)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"][0]["reason"], "schema_violation");
    assert_eq!(body["rejected"][0]["path"], "/data/url");

    let pv = topics.topic("page_view");
    let log = topics.topic("server_log");
    let got = consume(
        &broker.brokers(),
        &[&pv, &log, &topics.dead_letter],
        &topics.dead_letter,
        3,
    );
    assert_eq!(got.len(), 3, "{got:#?}");
    let by_id = by_event_id(&got);

    let r = &by_id[V1];
    assert_eq!(r["topic"], pv);
    assert_eq!(r["key"], "v-123");
    assert_eq!(r["headers"]["schema"], "page_view/1");
    assert_eq!(r["headers"]["event_id"], V1);
    let v = &r["value"];
    assert_eq!(v["schema"], "page_view/1");
    assert_eq!(v["ts"], "2026-11-21T11:59:58.120Z");
    assert_eq!(v["data"], json!({"url": "https://example.com/a"}));
    assert_eq!(
        v["context"],
        json!({"visitor_id": "v-123", "session_id": "s-9", "app": {"name": "ios"}})
    );
    assert_eq!(v["enrichment"]["client_ip"], "127.0.0.1");
    assert_eq!(v["enrichment"]["user_agent"], "e2e/1.0");
    assert_eq!(v["enrichment"]["collector_host"], "e2e-host");
    assert_eq!(v["enrichment"]["sent_at"], "2026-11-21T12:00:00.000Z");

    // An independent Thrift decoder gives back exactly the JSON that was validated.
    let r = &by_id[V2];
    assert_eq!(r["topic"], log);
    assert_eq!(r["value"]["data"], data);

    let dl = got
        .iter()
        .find(|r| r["topic"] == topics.dead_letter.as_str())
        .unwrap();
    let v = &dl["value"];
    assert_eq!(
        (v["reason"].as_str(), v["path"].as_str()),
        (Some("schema_violation"), Some("/data/url"))
    );
    assert_eq!(v["event_id"], BAD);
    assert_eq!(v["schema"], "page_view/1");
    assert_eq!(v["index"], 2);
    let original: Value = serde_json::from_str(v["original"].as_str().unwrap()).unwrap();
    assert_eq!(original["data"]["url"], "ftp://nope");
    assert_eq!(v["enrichment"]["user_agent"], "e2e/1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_send_beacon_bodies() {
    let (broker, topics, gw) = setup(&[]).await;
    let client = reqwest::Client::new();
    let ids = new_ids(20);
    let events = click_events(&ids);
    let raw = serde_json::to_vec(&json!({"events": events[..10]})).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let resp = client
        .post(gw.url())
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // navigator.sendBeacon(url, string) sends text/plain;charset=UTF-8.
    let resp = client
        .post(gw.url())
        .header("content-type", "text/plain;charset=UTF-8")
        .header("origin", "https://shop.example")
        .body(serde_json::to_vec(&json!({"events": events[10..]})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let got = consume(&broker.brokers(), &[&topics.topic("click")], "", 20);
    let mut landed: Vec<String> = got
        .iter()
        .map(|r| r["value"]["event_id"].as_str().unwrap().to_string())
        .collect();
    landed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(landed, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_body_is_400_and_kept_in_the_dead_letter_topic() {
    let (broker, topics, gw) = setup(&[]).await;
    let resp = reqwest::Client::new()
        .post(gw.url())
        .header("content-type", "application/json")
        .body("{\"events\": [ this is not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "undecodable_body");
    let got = consume(
        &broker.brokers(),
        &[&topics.dead_letter],
        &topics.dead_letter,
        1,
    );
    assert_eq!(got.len(), 1);
    let v = &got[0]["value"];
    assert_eq!(v["reason"], "undecodable_body");
    assert_eq!(v["http_status"], 400);
    assert_eq!(v["original"], "{\"events\": [ this is not json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let (broker, topics, gw) = setup(&[
        ("EVENTPIPE_TLS__CERT", cert_path.to_str().unwrap()),
        ("EVENTPIPE_TLS__KEY", key_path.to_str().unwrap()),
    ])
    .await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .resolve("localhost", gw.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/events", gw.addr.port());
    let resp = client
        .post(&url)
        .json(&json!({"events": [{"schema": "app_open/1", "event_id": V1, "data": {"platform": "android"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/v1/events", gw.addr))
        .body("{}")
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let got = consume(&broker.brokers(), &[&topics.topic("app_open")], "", 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["value"]["data"]["platform"], "android");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_metrics() {
    let (_broker, _topics, gw) = setup(&[]).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url())
        .json(&json!({"events": [{"schema": "page_view/1", "data": {"url": "https://x.example"}}, {"schema": "zzz/1"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let admin = |path: &str| format!("http://{}{path}", gw.admin);
    assert_eq!(
        client.get(admin("/healthz")).send().await.unwrap().status(),
        200
    );
    let ready: Value = client
        .get(admin("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    let metrics = gw.metrics().await;
    for needle in [
        "eventpipe_http_requests_total{status=\"200\"}",
        "eventpipe_events_total{outcome=\"kafka\"",
        "eventpipe_events_total{outcome=\"rejected\",reason=\"unknown_schema\"}",
        "eventpipe_produce_latency_seconds_bucket",
        "eventpipe_schemas_loaded",
    ] {
        // Series are registered at zero on start: the traffic must have counted.
        let counted = metrics
            .lines()
            .any(|l| l.starts_with(needle) && !l.ends_with(" 0"));
        assert!(counted, "missing or zero {needle} in\n{metrics}");
    }
    // Metrics are on the admin listener only.
    let public = client
        .get(format!("http://{}/metrics", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spool_broker_down_is_503_with_retry_after_and_readyz_false() {
    let (mut broker, _topics, gw) = setup(&[
        ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "1500"),
        ("EVENTPIPE_SPOOL__ENABLED", "false"),
    ])
    .await;
    broker.kill();
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url())
        .json(&json!({"events": [{"schema": "page_view/1", "event_id": V1, "data": {"url": "https://x.example"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = client
            .get(format!("http://{}/readyz", gw.admin))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz stayed ready with the broker gone"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_and_readyz_turns_false() {
    let (broker, topics, gw) = setup(&[("EVENTPIPE_SHUTDOWN_GRACE_SECS", "1")]).await;
    let url = gw.url();
    let admin = gw.admin;
    let ids = new_ids(5);
    let bundle = json!({"events": click_events(&ids)});
    let stopping = tokio::spawn(gw.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "readyz must turn false at once");
    // Still serving during the grace period.
    let resp = client.post(&url).json(&bundle).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    stopping.await.unwrap().unwrap();
    assert!(
        client.post(&url).json(&bundle).send().await.is_err(),
        "listener must be closed after shutdown"
    );
    let got = consume(&broker.brokers(), &[&topics.topic("click")], "", 5);
    assert_eq!(got.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_spooled_202_and_replayed_when_the_broker_returns() {
    // The broker sits behind a proxy; the outage is a network cut (its process and data stay).
    let (broker, proxy) = Broker::sqlite_through_proxy().await;
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let gw = Gateway::start(common::config(
        &broker.brokers(),
        &topics,
        &[("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "1000")],
    ))
    .await;
    gw.wait_ready().await;
    let client = reqwest::Client::new();
    let before = new_ids(3);
    let resp = post_clicks(&client, &gw.url(), &before).await;
    // 200, or 202 if the producer is still initialising against the fresh broker.
    assert!(resp.status().is_success(), "{}", resp.status());

    proxy.cut();
    let during = new_ids(4);
    let resp = post_clicks(&client, &gw.url(), &during).await;
    assert_eq!(resp.status(), 202, "a spooled request is answered 202");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["accepted"].as_u64(), body["spooled"].as_u64()),
        (Some(4), Some(4))
    );
    let ready = client
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "a gateway that can spool stays ready");
    let metrics = gw.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("eventpipe_events_total{outcome=\"spool\"") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    proxy.restore();
    let wanted: Vec<String> = before.iter().chain(&during).cloned().collect();
    let got = common::consume_until(&broker.brokers(), &[&topics.topic("click")], "", 7, &wanted);
    let landed: std::collections::HashSet<String> = got
        .iter()
        .map(|r| r["value"]["event_id"].as_str().unwrap().to_string())
        .collect();
    for id in &wanted {
        assert!(
            landed.contains(id),
            "{id} acknowledged but not in Kafka after the broker returned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_broker, _topics, gw) = setup(&[
        ("EVENTPIPE_LIMITS__HEADER_TIMEOUT_MS", "500"),
        ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "1500"),
        ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "1000"),
    ])
    .await;
    // A request head that never finishes is cut off.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "connection with an unfinished head still open after 5s"
    );

    // A body that trickles in forever is answered 408 at the request timeout.
    let mut trickle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    trickle
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), trickle.read(&mut buf))
        .await
        .expect("no answer to a stalled body within 5s")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    // Meanwhile the gateway serves everyone else.
    let ok = reqwest::Client::new()
        .post(gw.url())
        .json(&json!({"events": [{"schema": "click/1", "data": {"element": "a"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
