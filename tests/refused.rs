//! End-to-end, on a real Tansu broker: records Kafka refuses for good (a topic never created, a
//! record over the producer's `message.max.bytes`) are answered `rejected` with
//! `kafka_rejected:<code>`, land in the dead-letter topic with their event's JSON, and are never
//! spooled (a spooled request is answered 202; these are 200).

mod common;

use std::path::Path;

use common::{consume, copy_dir, Broker, Gateway, Topics};
use serde_json::{json, Value};

const CLICK_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const EXTRA_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

/// Bytes of records in the spool directory (segments hold nothing but records).
fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A schema deployed to the gateway whose topic `topics create` never made: its events are
/// rejected (not spooled, not left to time out), dead-lettered with their JSON; the other
/// events of the bundle are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_schema_without_a_topic_are_rejected_and_dead_lettered() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await; // the shipped schemas' topics only
    let schemas = tempfile::tempdir().unwrap();
    copy_dir(&common::root().join("schemas"), schemas.path());
    std::fs::create_dir_all(schemas.path().join("signup")).unwrap();
    std::fs::write(
        schemas.path().join("signup/1.json"),
        r#"{"type": "object", "required": ["plan"], "properties": {"plan": {"type": "string"}}}"#,
    )
    .unwrap();
    let config = common::config(
        &broker.brokers(),
        &topics,
        &[("EVENTPIPE_SCHEMAS", &schemas.path().display().to_string())],
    );
    let spool_dir = config.spool.dir.clone();
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;

    let extra = json!({"schema": "signup/1", "event_id": EXTRA_ID, "data": {"plan": "pro"}});
    let bundle = json!({"events": [
        {"schema": "click/1", "event_id": CLICK_ID, "data": {"element": "b"}},
        extra,
    ]});
    let resp = reqwest::Client::new()
        .post(gw.url())
        .json(&bundle)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    let reason = body["rejected"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("kafka_rejected:unknown_topic"), "{body}");
    assert_eq!(
        (
            &body["rejected"][0]["index"],
            &body["rejected"][0]["event_id"]
        ),
        (&json!(1), &json!(EXTRA_ID))
    );
    assert_eq!(spool_bytes(&spool_dir), 0, "a refused record was spooled");

    let click = topics.topic("click");
    let got = consume(
        &broker.brokers(),
        &[&click, &topics.dead_letter],
        &topics.dead_letter,
        2,
    );
    assert_eq!(got.len(), 2, "{got:#?}");
    let letter = got
        .iter()
        .find(|r| r["topic"] == topics.dead_letter.as_str())
        .expect("a dead letter");
    let v = &letter["value"];
    assert_eq!(v["reason"], reason);
    assert_eq!(v["event_id"], EXTRA_ID);
    let original: Value = serde_json::from_str(v["original"].as_str().unwrap()).unwrap();
    assert_eq!(original, extra);
    assert!(got
        .iter()
        .any(|r| r["topic"] == click.as_str() && r["value"]["event_id"] == CLICK_ID));
    let metrics = gw.metrics().await;
    let counted = format!("eventpipe_events_total{{outcome=\"rejected\",reason=\"{reason}\"}} 1");
    assert!(metrics.contains(&counted), "missing {counted}");
}

/// An event under `limits.max_event_bytes` whose record would exceed the producer's
/// `message.max.bytes`: the pipeline sizes every record before producing it, so the event is
/// rejected `too_large` and dead-lettered (its JSON cut to `limits.dead_letter_max_bytes`), and
/// nothing is spooled. (Kafka's own `msg_size_too_large`, for a broker whose limit is below the
/// producer's, is the safety net tested on the mock cluster in `sink::kafka`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_record_is_rejected_and_dead_lettered_not_spooled() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let mut config = common::config(
        &broker.brokers(),
        &topics,
        &[("EVENTPIPE_LIMITS__DEAD_LETTER_MAX_BYTES", "4000")],
    );
    config
        .kafka
        .librdkafka
        .insert("message.max.bytes".into(), "20000".into());
    let spool_dir = config.spool.dir.clone();
    let max_event = config.limits.max_event_bytes;
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;

    let filler = "m".repeat(max_event - 1000);
    let big = json!({"schema": "server_log/1", "event_id": CLICK_ID,
        "data": {"service": "api", "level": "info", "message": "big", "fields": {"filler": filler}}});
    let text = serde_json::to_string(&big).unwrap();
    assert!(text.len() < max_event && text.len() > 20_000);
    let resp = reqwest::Client::new()
        .post(gw.url())
        .json(&json!({"events": [big]}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 0, "{body}");
    assert_eq!(body["rejected"][0]["reason"], "too_large", "{body}");
    assert_eq!(spool_bytes(&spool_dir), 0, "an oversize record was spooled");

    let got = consume(
        &broker.brokers(),
        &[&topics.dead_letter],
        &topics.dead_letter,
        1,
    );
    assert_eq!(got.len(), 1, "{got:#?}");
    let v = &got[0]["value"];
    assert_eq!(v["reason"], "too_large");
    assert_eq!(v["truncated"], true);
    let original = v["original"].as_str().unwrap();
    assert_eq!(original.len(), 4000);
    assert!(text.starts_with(original));
}
