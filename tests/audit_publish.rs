//! End-to-end: audit records on a real Tansu broker. The gateway's books, read back from the
//! audit topic with our generated Thrift code and with the independent Python decoder
//! (thriftpy2 from the IDL alone), equal what Kafka acknowledged; a spool episode is reported
//! again once replayed, with nothing pending.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Broker, Gateway, Topics};
use eventpipe::thrift::generated::AuditRecord;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

fn audit_topic(topics: &Topics) -> String {
    format!("{}audit", topics.prefix)
}

/// Creates the data topics and the audit topic (what `topics create` does with the config).
async fn create_topics(topics: &Topics, brokers: &str) {
    topics.create(brokers).await;
    eventpipe::ops::topics::create(brokers, &[audit_topic(topics)], 1, 1)
        .await
        .expect("creating the audit topic");
}

fn audit_config<'a>(topics: &'a Topics, audit: &'a str) -> Vec<(&'a str, &'a str)> {
    let _ = topics;
    vec![
        ("EVENTPIPE_AUDIT__TOPIC", audit),
        ("EVENTPIPE_AUDIT__WINDOW_SECS", "1"),
        ("EVENTPIPE_AUDIT__PUBLISH_DELAY_MS", "300"),
        ("EVENTPIPE_AUDIT__RETRY_BACKOFF_MS", "200"),
        ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "1000"),
    ]
}

/// Every audit record on `topic` so far (our generated decoder).
fn read_audit(brokers: &str, topic: &str) -> Vec<AuditRecord> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("audit-e2e-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_millis(1500) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let rec: AuditRecord =
                    eventpipe::thrift::from_compact_bytes(m.payload().unwrap_or_default())
                        .expect("an audit record decodes with the generated code");
                out.push(rec);
                idle_since = Instant::now();
            }
            Some(Err(e)) => panic!("consuming the audit topic: {e}"),
            None => {}
        }
    }
    out
}

/// The books as the checker reads them: per (host, boot, window, topic) the highest seq wins;
/// then summed per topic over windows and boots: (kafka, replayed, pending, bytes).
fn totals(records: &[AuditRecord]) -> BTreeMap<String, [i64; 4]> {
    let mut latest: BTreeMap<(String, String, i64, String), &AuditRecord> = BTreeMap::new();
    for r in records {
        let key = (
            r.collector_host.clone(),
            r.boot_id.clone(),
            r.window_start_ms,
            r.topic.clone(),
        );
        if latest.get(&key).is_none_or(|old| old.seq < r.seq) {
            latest.insert(key, r);
        }
    }
    let mut out: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for r in latest.values() {
        let t = out.entry(r.topic.clone()).or_default();
        t[0] += r.events_kafka;
        t[1] += r.events_replayed;
        t[2] += r.events_pending;
        t[3] += r.bytes;
    }
    out
}

/// Reads the audit topic until `done` holds for its records (60 s at most).
fn wait_for_audit(
    brokers: &str,
    topic: &str,
    what: &str,
    done: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let records = read_audit(brokers, topic);
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "audit records never showed {what}: {:?}",
            totals(&records)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The audit topic through the independent Python consumer (thriftpy2 + the IDL).
fn python_audit(brokers: &str, topic: &str, expect: usize) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(common::root().join("tests/py/consume.py"))
        .args([
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--audit-topic",
            topic,
        ])
        .args([
            "--expect",
            &expect.to_string(),
            "--idle",
            "1.5",
            "--timeout",
            "60",
        ])
        .stderr(Stdio::piped())
        .output()
        .expect("python3 is required for the independent consumer");
    assert!(
        out.status.success(),
        "python consumer failed: {}\n(dependencies: pip install confluent-kafka thriftpy2)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["value"].clone())
        .collect()
}

fn clicks(ids: &[String]) -> Value {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| json!({"schema": "click/1", "event_id": id, "data": {"element": "buy"}}))
        .collect();
    json!({ "events": events })
}

fn new_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_count_what_kafka_acknowledged() {
    let broker = Broker::memory();
    let brokers = broker.brokers();
    let topics = Topics::unique();
    let audit = audit_topic(&topics);
    create_topics(&topics, &brokers).await;
    let gw = Gateway::start(common::config(
        &brokers,
        &topics,
        &audit_config(&topics, &audit),
    ))
    .await;
    gw.wait_ready().await;
    let client = reqwest::Client::new();
    let ids = new_ids(5);
    let r = client
        .post(gw.url())
        .json(&clicks(&ids))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A retry of the same ids is answered from the dedup window: not produced, not counted.
    let r = client
        .post(gw.url())
        .json(&clicks(&ids))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // One invalid event: a dead letter (reason schema_violation) next to two valid ones.
    let more = new_ids(2);
    let mut body = clicks(&more);
    body["events"]
        .as_array_mut()
        .unwrap()
        .push(json!({"schema": "click/1", "data": {"element": 42}}));
    let r = client.post(gw.url()).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A request refused on its headers: counted in requests_refused only.
    let r = client
        .post(gw.url())
        .header("content-type", "application/xml")
        .body("<x/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let click = topics.topic("click");
    let dlt = topics.dead_letter.clone();
    let records = wait_for_audit(&brokers, &audit, "7 clicks and 1 dead letter", |rs| {
        let t = totals(rs);
        t.get(&click).map(|c| c[0]) == Some(7)
            && t.get(&dlt).map(|c| c[0]) == Some(1)
            && rs.iter().any(|r| {
                r.requests_refused
                    .as_ref()
                    .is_some_and(|m| m.get("unsupported_media_type") == Some(&1))
            })
    });
    let t = totals(&records);
    assert_eq!(t[&click][1..3], [0, 0], "nothing replayed or pending");
    assert!(t[&click][3] > 0, "bytes of the acknowledged records");
    for r in &records {
        assert_eq!(r.collector_host, "e2e-host");
        assert_eq!(r.window_ms, 1000);
        assert_eq!(r.window_start_ms % 1000, 0);
        if r.topic == dlt {
            if r.events_kafka > 0 {
                let reasons = r.dead_letters.clone().unwrap_or_default();
                assert_eq!(reasons.get("schema_violation"), Some(&1), "{reasons:?}");
            }
        } else {
            assert!(r.dead_letters.is_none() && r.requests_refused.is_none());
        }
    }
    // The data topic holds what the books say, in the windows they say (receive time).
    let data = common::consume(&brokers, &[&click], "", 7);
    let mut found: BTreeMap<i64, i64> = BTreeMap::new();
    for d in &data {
        let ms = d["value"]["enrichment"]["received_at_ms"].as_i64().unwrap();
        *found.entry(ms - ms.rem_euclid(1000)).or_default() += 1;
    }
    let mut reported: BTreeMap<i64, i64> = BTreeMap::new();
    for r in records.iter().filter(|r| r.topic == click) {
        let e = reported.entry(r.window_start_ms).or_default();
        *e = (*e).max(r.events_kafka);
    }
    assert_eq!(
        found, reported,
        "per-window counts: found in the topic vs reported"
    );

    // The same records, decoded by the independent Python consumer from the IDL.
    let py = python_audit(&brokers, &audit, records.len());
    assert_eq!(py.len(), records.len());
    let py_kafka: i64 = py
        .iter()
        .filter(|v| v["topic"] == click.as_str())
        .map(|v| v["events_kafka"].as_i64().unwrap())
        .sum();
    let rust_kafka: i64 = records
        .iter()
        .filter(|r| r.topic == click)
        .map(|r| r.events_kafka)
        .sum();
    assert_eq!(py_kafka, rust_kafka);
    let metrics = gw.metrics().await;
    assert!(
        metric(&metrics, "eventpipe_audit_records_published_total") > 0.0,
        "{metrics}"
    );
    assert!(
        // (Shared by the tests of this process: at least this test's 7.)
        metric(
            &metrics,
            "eventpipe_event_delivery_latency_seconds_count{path=\"kafka\"}"
        ) >= 7.0,
        "{metrics}"
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_episode_is_republished_replayed_with_nothing_pending() {
    // The broker sits behind a proxy; the outage is a network cut (its process and data stay).
    let (broker, proxy) = Broker::sqlite_through_proxy().await;
    let brokers = broker.brokers();
    let topics = Topics::unique();
    let audit = audit_topic(&topics);
    create_topics(&topics, &brokers).await;
    let gw = Gateway::start(common::config(
        &brokers,
        &topics,
        &audit_config(&topics, &audit),
    ))
    .await;
    gw.wait_ready().await;
    let client = reqwest::Client::new();
    let click = topics.topic("click");
    let before = new_ids(3);
    let r = client
        .post(gw.url())
        .json(&clicks(&before))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // A 202 may have spooled only part of the bundle (`spooled` <= `accepted`).
    let first: Value = r.json().await.unwrap();
    let first_spooled = first["spooled"].as_i64().unwrap_or(0);

    proxy.cut();
    let during = new_ids(4);
    let r = client
        .post(gw.url())
        .json(&clicks(&during))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "spooled during the cut");
    // The audit cannot reach Kafka either: the publish fails, is counted and stays pending.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = gw.metrics().await;
        let failures = metric(&m, "eventpipe_audit_publish_failures_total");
        let unpublished = metric(&m, "eventpipe_audit_unpublished_records");
        if failures >= 1.0 && unpublished >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed audit publish counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();

    let (spooled, acked) = (4 + first_spooled, 3 - first_spooled);
    let records = wait_for_audit(&brokers, &audit, "the replay, nothing pending", |rs| {
        let t = totals(rs);
        t.get(&click)
            .is_some_and(|c| c[0] + c[1] == 7 && c[1] >= spooled && c[2] == 0)
    });
    let t = totals(&records);
    assert!(t[&click][0] >= acked, "{t:?}");
    // The spooled request's window was published again (higher seq) once replayed.
    let m = gw.metrics().await;
    assert!(
        m.contains("eventpipe_event_delivery_latency_seconds_count{path=\"spool\"}"),
        "{m}"
    );
    let py = python_audit(&brokers, &audit, records.len());
    let latest_pending: i64 = {
        let mut latest: BTreeMap<(String, i64, String), (i64, i64)> = BTreeMap::new();
        for v in &py {
            let key = (
                v["boot_id"].as_str().unwrap().to_string(),
                v["window_start_ms"].as_i64().unwrap(),
                v["topic"].as_str().unwrap().to_string(),
            );
            let (seq, pending) = (
                v["seq"].as_i64().unwrap(),
                v["events_pending"].as_i64().unwrap(),
            );
            if latest.get(&key).is_none_or(|(s, _)| *s < seq) {
                latest.insert(key, (seq, pending));
            }
        }
        latest.values().map(|(_, p)| p).sum()
    };
    assert_eq!(latest_pending, 0, "the Python decoder sees nothing pending");
    gw.stop().await.unwrap();
}

/// The value of an unlabelled metric in Prometheus text (0 if absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
