//! Segment's own SDKs against a real gateway and broker: `segment-analytics-python` (PyPI) and
//! `@segment/analytics-node` (npm), each pointed at the gateway by its documented `host` option
//! (with auth on: both send the write key as the HTTP Basic user), sending a mix of calls —
//! `track` mapped by the table, by the naming rule and to the generic schema; identify, page,
//! screen, group, alias; two invalid events; one message sent twice with the same `messageId`.
//! The independent consumer (confluent-kafka + thriftpy2) checks what landed where.
//!
//! A missing SDK fails with its install command:
//! `pip install segment-analytics-python==2.4.0`, `(cd tests/sdk/segment && npm ci)`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use common::{consume_until, root, Broker, Gateway, Topics};
use serde_json::{json, Value};

const KEY: &str = "wk_segment_e2e_0123456789";
/// The key's name: derived event ids are UUIDv5 of (name, messageId).
const KEY_NAME: &str = "segment-e2e";

fn sdk_dir() -> PathBuf {
    root().join("tests/sdk/segment")
}

/// Runs one SDK script; returns its report (`statuses`, `errors`).
fn run_sdk(mut cmd: Command, what: &str, install: &str) -> Value {
    let out = cmd
        .current_dir(sdk_dir())
        .output()
        .unwrap_or_else(|e| panic!("{what} could not be started ({e}); install with: {install}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}): {stderr}\n(install with: {install})",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{what} printed no report ({e}): {stdout}\n{stderr}"))
}

/// What each SDK sends (see tests/sdk/segment/send.*): messageId suffix -> (schema, data checks).
fn expected(prefix: &str) -> Vec<(String, &'static str, Value)> {
    let id = |s: &str| format!("{prefix}-{s}");
    vec![
        (
            id("dup"),
            "segment_track/1",
            json!({"event": "Video Played", "properties": {"video_id": "v-dup"}}),
        ),
        (
            id("1"),
            "purchase/1",
            json!({"order_id": format!("{prefix}-o-1"), "currency": "EUR", "total_minor": 1999}),
        ),
        (
            id("2"),
            "page_view/1",
            json!({"url": format!("https://shop.example/{prefix}")}),
        ),
        (
            id("3"),
            "segment_track/1",
            json!({"event": "Video Played", "properties": {"video_id": "v-1", "position_s": 12.5}}),
        ),
        (
            id("4"),
            "segment_identify/1",
            json!({"traits": {"email": format!("{prefix}@example.com"), "plan": "pro"}}),
        ),
        (
            id("5"),
            "segment_page/1",
            json!({"name": "Pricing", "category": "Docs"}),
        ),
        (id("6"), "segment_screen/1", json!({"name": "Checkout"})),
        (
            id("7"),
            "segment_group/1",
            json!({"group_id": format!("{prefix}-group"), "traits": {"name": "Acme"}}),
        ),
        (
            id("8"),
            "segment_alias/1",
            json!({"previous_id": format!("{prefix}-anon")}),
        ),
    ]
}

/// Every member of `want` is in `got` with the same value (objects recursively).
fn contains(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| g.get(k).is_some_and(|gv| contains(gv, wv))),
        _ => got == want,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_sdks_deliver_through_the_gateway() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        format!("[[keys]]\nkey = \"{KEY}\"\nname = \"{KEY_NAME}\"\n"),
    )
    .unwrap();
    let config = common::config(
        &broker.brokers(),
        &topics,
        &[
            ("EVENTPIPE_SEGMENT__ENABLED", "true"),
            (
                "EVENTPIPE_SEGMENT__EVENTS",
                r#"{"Order Completed" = "purchase/1"}"#,
            ),
            ("EVENTPIPE_AUTH__KEYS_FILE", keys.to_str().unwrap()),
        ],
    );
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    let host = format!("http://{}", gw.addr);

    // Both SDKs at once (they are independent), off the async runtime.
    let py = {
        let mut c = Command::new("python3");
        c.arg("send.py").args([&host, KEY]);
        tokio::task::spawn_blocking(move || {
            run_sdk(
                c,
                "segment-analytics-python",
                "pip install segment-analytics-python==2.4.0",
            )
        })
    };
    let node = {
        let installed = sdk_dir().join("node_modules/@segment/analytics-node");
        assert!(
            installed.is_dir(),
            "@segment/analytics-node is not installed; install with: (cd tests/sdk/segment && npm ci)"
        );
        let mut c = Command::new("node");
        c.arg("send.mjs").args([&host, KEY]);
        tokio::task::spawn_blocking(move || {
            run_sdk(
                c,
                "@segment/analytics-node",
                "(cd tests/sdk/segment && npm ci) and node 18+",
            )
        })
    };
    let (py, node) = (py.await.unwrap(), node.await.unwrap());

    // The SDKs saw success for every request, and reported no error.
    for (name, report) in [("python", &py), ("node", &node)] {
        let statuses = report["statuses"].as_array().unwrap();
        assert!(!statuses.is_empty(), "{name}: no request seen: {report}");
        assert!(
            statuses.iter().all(|s| s == 200),
            "{name}: every answer is 200 (invalid events are dead-lettered, not refused): {report}"
        );
        assert_eq!(report["errors"], json!([]), "{name}: {report}");
    }

    // What landed, read by the independent consumer.
    let mut want = Vec::new();
    let mut schema_topics = Vec::new();
    for prefix in ["py", "node"] {
        for (mid, schema, _) in expected(prefix) {
            want.push(eventpipe::protocol::segment::event_id(KEY_NAME, &mid).to_string());
            let name = schema.split('/').next().unwrap().to_string();
            if !schema_topics.contains(&name) {
                schema_topics.push(name);
            }
        }
        for bad in ["bad-1", "bad-2"] {
            let mid = format!("{prefix}-{bad}");
            want.push(eventpipe::protocol::segment::event_id(KEY_NAME, &mid).to_string());
        }
    }
    let topic_names: Vec<String> = schema_topics.iter().map(|s| topics.topic(s)).collect();
    let mut read: Vec<&str> = topic_names.iter().map(String::as_str).collect();
    read.push(&topics.dead_letter);
    // 9 events + 2 dead letters per SDK; the duplicate must not add one.
    let got = consume_until(&broker.brokers(), &read, &topics.dead_letter, 22, &want);

    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for r in &got {
        let id = r["headers"]["event_id"].as_str().unwrap_or("").to_string();
        by_id.entry(id).or_default().push(r);
    }
    for prefix in ["py", "node"] {
        let user = format!("{prefix}-user");
        for (mid, schema, data) in expected(prefix) {
            let id = eventpipe::protocol::segment::event_id(KEY_NAME, &mid).to_string();
            let records = by_id.get(&id).cloned().unwrap_or_default();
            assert_eq!(
                records.len(),
                1,
                "{mid} (event {id}) landed once (a retried messageId is deduplicated): {records:?}"
            );
            let r = records[0];
            let name = schema.split('/').next().unwrap();
            assert_eq!(r["topic"], topics.topic(name), "{mid}");
            let v = &r["value"];
            assert_eq!(v["schema"], schema, "{mid}");
            assert!(
                contains(&v["data"], &data),
                "{mid}: data {} lacks {data}",
                v["data"]
            );
            assert_eq!(v["context"]["segment"]["message_id"], mid.as_str());
            assert_eq!(v["context"]["user_id"], user.as_str(), "{mid}");
            assert_eq!(r["key"], user.as_str(), "{mid}: partitioned by the user");
            assert!(
                v["ts"].is_string(),
                "{mid}: the SDK's timestamp is the event time"
            );
        }
        for (bad, path) in [("bad-1", "/data"), ("bad-2", "/data/url")] {
            let mid = format!("{prefix}-{bad}");
            let id = eventpipe::protocol::segment::event_id(KEY_NAME, &mid).to_string();
            let records = by_id.get(&id).cloned().unwrap_or_default();
            assert_eq!(records.len(), 1, "{mid} dead-lettered once: {records:?}");
            let r = records[0];
            assert_eq!(r["topic"], topics.dead_letter.as_str(), "{mid}");
            assert_eq!(r["value"]["reason"], "schema_violation", "{mid}");
            assert_eq!(r["value"]["path"], path, "{mid}: {}", r["value"]["message"]);
            assert!(
                r["value"]["original"].as_str().unwrap().contains(&mid),
                "{mid}: the dead letter holds the event"
            );
        }
    }
    assert_eq!(got.len(), 22, "nothing else landed: {got:#?}");

    // The duplicates reached the gateway and were answered without producing again.
    let metrics = gw.metrics().await;
    let dedup = metrics
        .lines()
        .find(|l| l.starts_with("eventpipe_dedup_hits_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<f64>().ok());
    assert_eq!(dedup, Some(2.0), "one retried message per SDK:\n{metrics}");
    // Every answer the SDKs saw, counted under the protocol.
    let answers =
        py["statuses"].as_array().unwrap().len() + node["statuses"].as_array().unwrap().len();
    let line = format!(
        r#"eventpipe_protocol_requests_total{{protocol="segment",status="200"}} {answers}"#
    );
    assert!(metrics.contains(&line), "no `{line}` in:\n{metrics}");
}
