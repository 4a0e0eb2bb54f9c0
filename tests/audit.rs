//! `eventpipe audit` end to end: a real Tansu broker, a real gateway, the checker binary.
//!
//! Until the gateway publishes audit records itself, the tests publish them: built from what
//! the independent consumer found the gateway wrote (its receive times and host), as the
//! gateway's books would say, with 1-second windows so a window closes quickly.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{consume, Broker, Gateway, Topics};
use eventpipe::thrift::generated::AuditRecord;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const WINDOW_MS: i64 = 1_000;
const HOST: &str = "e2e-host";

struct Bench {
    broker: Broker,
    topics: Topics,
    gw: Gateway,
    audit_topic: String,
}

async fn bench() -> Bench {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let audit_topic = format!("{}audit", topics.prefix);
    eventpipe::ops::topics::create(&broker.brokers(), std::slice::from_ref(&audit_topic), 2, 1)
        .await
        .unwrap();
    let gw = Gateway::start(common::config(&broker.brokers(), &topics, &[])).await;
    gw.wait_ready().await;
    Bench {
        broker,
        topics,
        gw,
        audit_topic,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Posts `n` fresh click events in bundles of 5; every answer must be 200.
async fn post_clicks(url: &str, n: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for chunk in ids.chunks(5) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"schema": "click/1", "event_id": id, "data": {"element": "b"}}))
            .collect();
        let resp = client
            .post(url)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    ids
}

/// The gateway's books as it would publish them: one record per (window, topic) of what landed.
fn books_of(landed: &[Value], boot: &str) -> Vec<AuditRecord> {
    let mut counts: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for r in landed {
        let at = r["value"]["enrichment"]["received_at_ms"].as_i64().unwrap();
        let topic = r["topic"].as_str().unwrap().to_string();
        *counts
            .entry((at.div_euclid(WINDOW_MS) * WINDOW_MS, topic))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(seq, ((window, topic), n))| {
            AuditRecord::new(
                HOST.into(),
                boot.into(),
                seq as i64 + 1,
                window,
                WINDOW_MS,
                topic,
                n,
                0,
                0,
                0,
                None,
                None,
                now_ms(),
                "test".into(),
            )
        })
        .collect()
}

async fn publish(brokers: &str, topic: &str, records: &[AuditRecord]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for r in records {
        let payload = eventpipe::thrift::to_compact_bytes(r);
        let key = format!("{}/{}", r.collector_host, r.topic);
        producer
            .send(
                FutureRecord::to(topic).payload(&payload).key(&key),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// Waits until every window of `records` has ended (grace 0 then judges them).
async fn until_closed(records: &[AuditRecord]) {
    let end = records
        .iter()
        .map(|r| r.window_start_ms + r.window_ms)
        .max()
        .unwrap_or(0);
    while now_ms() <= end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `eventpipe audit --json` and returns (exit code, rows, stderr).
fn audit(b: &Bench, extra: &[&str]) -> (i32, Vec<Value>, String) {
    audit_of(b, &b.audit_topic, extra)
}

fn audit_of(b: &Bench, audit_topic: &str, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_eventpipe"))
        .args(["audit", "--json", "--brokers", &b.broker.brokers()])
        .args(["--audit-topic", audit_topic])
        .args(["--dead-letter-topic", &b.topics.dead_letter])
        .args(["--read-timeout", "60s"])
        .args(extra)
        .env_remove("EVENTPIPE_CONFIG")
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code().unwrap_or(-1),
        rows,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn total(rows: &[Value], field: &str) -> i64 {
    rows.iter().map(|r| r[field].as_i64().unwrap()).sum()
}

async fn delete_and_recreate(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&[topic], &opts).await.unwrap() {
        r.unwrap();
    }
    let new = NewTopic::new(topic, 2, TopicReplication::Fixed(1));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = admin.create_topics([&new], &opts).await.unwrap();
        if r[0].is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "recreating {topic}: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_is_complete_and_a_recreated_topic_is_missing() {
    let b = bench().await;
    let click = b.topics.topic("click");
    let ids = post_clicks(&b.gw.url(), 20).await;
    let landed = consume(
        &b.broker.brokers(),
        &[&click],
        &b.topics.dead_letter,
        ids.len(),
    );
    let records = books_of(&landed, "boot-1");
    publish(&b.broker.brokers(), &b.audit_topic, &records).await;
    until_closed(&records).await;

    let (code, rows, stderr) = audit(&b, &["--grace", "0"]);
    assert_eq!(code, 0, "{rows:?} {stderr}");
    assert!(rows.iter().all(|r| r["status"] == "complete"), "{rows:?}");
    assert_eq!(total(&rows, "reported"), 20);
    assert_eq!(total(&rows, "found"), 20);

    // The data is lost after the books were published: every row says so.
    delete_and_recreate(&b.broker.brokers(), &click).await;
    let (code, rows, stderr) = audit(&b, &["--grace", "0"]);
    assert_eq!(code, 1, "{rows:?} {stderr}");
    assert_eq!(rows.len(), records.len(), "{rows:?}");
    for (row, record) in rows.iter().zip(&records) {
        assert_eq!(row["status"], "incomplete", "{row}");
        assert_eq!(row["topic"], click.as_str());
        assert_eq!(row["host"], HOST);
        assert_eq!(row["window_start_ms"], record.window_start_ms);
        assert_eq!(row["missing"], record.events_kafka, "{row}");
    }
    assert_eq!(total(&rows, "missing"), 20);

    // Within the grace the same windows are still open: not a failure yet.
    let (code, rows, _) = audit(&b, &["--grace", "1h"]);
    assert_eq!(code, 0, "{rows:?}");
    assert!(rows.iter().all(|r| r["status"] == "open"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_duplicates_are_duplicates_not_completeness() {
    let b = bench().await;
    let click = b.topics.topic("click");
    let ids = post_clicks(&b.gw.url(), 10).await;
    let landed = consume(
        &b.broker.brokers(),
        &[&click],
        &b.topics.dead_letter,
        ids.len(),
    );
    // A replay writes three records again, byte for byte.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.broker.brokers())
        .create()
        .unwrap();
    for bytes in raw_records(&b, &click, 3) {
        producer
            .send(
                FutureRecord::<(), _>::to(&click).payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // The books claim two events more than landed: the duplicates must not cover them.
    let mut records = books_of(&landed, "boot-1");
    records[0].events_kafka += 2;
    publish(&b.broker.brokers(), &b.audit_topic, &records).await;
    until_closed(&records).await;

    let (code, rows, stderr) = audit(&b, &["--grace", "0"]);
    assert_eq!(code, 1, "{rows:?} {stderr}");
    assert_eq!(total(&rows, "duplicates"), 3, "{rows:?}");
    assert_eq!(total(&rows, "found"), 10, "{rows:?}");
    assert_eq!(total(&rows, "missing"), 2, "{rows:?}");
    assert_eq!(rows[0]["status"], "incomplete", "{rows:?}");

    // Honest books: complete, with the duplicates still shown.
    records[0].events_kafka -= 2;
    for r in &mut records {
        r.seq += 100;
    }
    publish(&b.broker.brokers(), &b.audit_topic, &records).await;
    let (code, rows, stderr) = audit(&b, &["--grace", "0"]);
    assert_eq!(code, 0, "{rows:?} {stderr}");
    assert_eq!(total(&rows, "duplicates"), 3, "{rows:?}");
}

/// The raw bytes of `n` records of `topic` (partitions 0 and 1, from the beginning).
fn raw_records(b: &Bench, topic: &str, n: usize) -> Vec<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.broker.brokers())
        .set("group.id", "audit-test")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.payload().unwrap().to_vec());
        }
        assert!(Instant::now() < deadline, "could not re-read {topic}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_no_record_covers_are_unreported_and_a_missing_audit_topic_is_an_error() {
    let b = bench().await;
    let click = b.topics.topic("click");
    let ids = post_clicks(&b.gw.url(), 10).await;
    let landed = consume(
        &b.broker.brokers(),
        &[&click],
        &b.topics.dead_letter,
        ids.len(),
    );
    // The books cover the click topic, but under another host name: every event is unreported
    // and every reported one missing.
    let mut records = books_of(&landed, "boot-1");
    for r in &mut records {
        r.collector_host = "other-host".into();
    }
    publish(&b.broker.brokers(), &b.audit_topic, &records).await;
    until_closed(&records).await;
    let (code, rows, stderr) = audit(&b, &["--grace", "0"]);
    assert_eq!(code, 1, "{rows:?} {stderr}");
    let of = |host: &str, field: &str| {
        rows.iter()
            .filter(|r| r["host"] == host)
            .map(|r| r[field].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(of(HOST, "unreported"), 10, "{rows:?}");
    assert_eq!(of("other-host", "missing"), 10, "{rows:?}");
    assert!(rows
        .iter()
        .filter(|r| r["host"] == HOST)
        .all(|r| r["audited"] == false && r["status"] == "complete"));

    let (code, _, stderr) = audit_of(&b, "no.such.topic", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no.such.topic"), "{stderr}");
}
