//! `[routing]` end to end: a shared topic for the long tail of schemas and a dedicated topic for
//! a named one, created with their partition counts by `topics create`, filled by a real gateway,
//! and read back by schema with the independent Python consumer and with `eventpipe tail`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventpipe_cli, root, Broker, Gateway, Topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

/// Partition count of each topic, from the broker's metadata.
fn partitions(brokers: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len())
}

/// The independent consumer over `topic`, keeping only `schema`'s records.
fn consume_schema(brokers: &str, topic: &str, schema: &str, expect: usize) -> Vec<Value> {
    let out = Command::new("python3")
        .arg(root().join("tests/py/consume.py"))
        .args(["--brokers", brokers, "--topic", topic, "--schema", schema])
        .args(["--expect", &expect.to_string(), "--idle", "1.5"])
        .stderr(Stdio::piped())
        .output()
        .expect("python3 is required for the independent consumer");
    assert!(
        out.status.success(),
        "independent consumer failed: {}\n(dependencies: pip install confluent-kafka thriftpy2)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_topic_carries_the_long_tail_and_reads_back_by_schema() {
    let broker = Broker::memory();
    let brokers = broker.brokers();
    let topics = Topics::unique();
    let (shared, page_view) = (
        format!("{}shared", topics.prefix),
        topics.topic("page_view"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "schemas = {schemas:?}\n\
             [kafka]\nbrokers = {brokers:?}\ntopic_prefix = {prefix:?}\ndead_letter_topic = {dl:?}\n\
             [routing]\nshared_topic = \"shared\"\ndedicated = [\"page_view\"]\n\
             [routing.partitions]\n{shared:?} = 4\n{page_view:?} = 1\n",
            schemas = root().join("schemas").display().to_string(),
            prefix = topics.prefix,
            dl = topics.dead_letter,
        ),
    )
    .unwrap();

    // topics create: the routed topics only, each with its partition count.
    let out = eventpipe_cli()
        .args(["topics", "create", "--partitions", "2", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in [&shared, &page_view, &topics.dead_letter] {
        assert!(stdout.contains(&format!("created {t}")), "{t}: {stdout}");
    }
    assert!(
        !stdout.contains(&topics.topic("click")),
        "a routed schema got its own topic: {stdout}"
    );
    assert_eq!(partitions(&brokers, &shared), 4);
    assert_eq!(partitions(&brokers, &page_view), 1);
    assert_eq!(partitions(&brokers, &topics.dead_letter), 2);

    let gw = Gateway::start(
        eventpipe::config::load(
            Some(&config),
            vec![
                ("EVENTPIPE_SHUTDOWN_GRACE_SECS".to_string(), "0".to_string()),
                (
                    "EVENTPIPE_SPOOL__DIR".to_string(),
                    dir.path().join("spool").display().to_string(),
                ),
            ],
            vec![],
        )
        .unwrap(),
    )
    .await;
    gw.wait_ready().await;
    let (clicks, opens, views): (Vec<String>, Vec<String>, Vec<String>) = (
        (0..5).map(|_| id()).collect(),
        (0..3).map(|_| id()).collect(),
        (0..2).map(|_| id()).collect(),
    );
    let mut events: Vec<Value> = Vec::new();
    events.extend(
        clicks
            .iter()
            .map(|i| json!({"schema": "click/1", "event_id": i, "data": {"element": "b"}})),
    );
    events.extend(
        opens
            .iter()
            .map(|i| json!({"schema": "app_open/1", "event_id": i, "data": {"platform": "ios"}})),
    );
    events.extend(
        views.iter().map(
            |i| json!({"schema": "page_view/1", "event_id": i, "data": {"url": "https://e/"}}),
        ),
    );
    let resp = reqwest::Client::new()
        .post(gw.url())
        .json(&json!({"context": {"visitor_id": "v-1"}, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // The shared topic holds the long tail; each record names its schema in the header and in
    // the Thrift event, and a consumer picks one schema out of it.
    let got = tokio::task::spawn_blocking({
        let (b, s) = (brokers.clone(), shared.clone());
        move || consume_schema(&b, &s, "click", 5)
    })
    .await
    .unwrap();
    let mut got_ids: Vec<String> = got
        .iter()
        .map(|r| {
            assert_eq!(r["headers"]["schema"], "click/1", "{r}");
            assert_eq!(r["value"]["schema"], "click/1", "{r}");
            r["headers"]["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    got_ids.sort();
    let mut want = clicks.clone();
    want.sort();
    assert_eq!(got_ids, want);
    let all_shared = tokio::task::spawn_blocking({
        let (b, s) = (brokers.clone(), shared.clone());
        move || consume_schema(&b, &s, "", 8)
    })
    .await
    .unwrap();
    assert_eq!(all_shared.len(), 8, "clicks and app opens, nothing else");
    let dedicated = tokio::task::spawn_blocking({
        let (b, s) = (brokers.clone(), page_view.clone());
        move || consume_schema(&b, &s, "", 2)
    })
    .await
    .unwrap();
    assert_eq!(dedicated.len(), 2);
    assert!(dedicated
        .iter()
        .all(|r| r["headers"]["schema"] == "page_view/1"));

    // `eventpipe tail --schema` on the shared topic prints that schema's events only.
    let out = eventpipe_cli()
        .args(["tail", "--brokers", &brokers, "--topic", &shared])
        .args([
            "--from-beginning",
            "--schema",
            "app_open/1",
            "--idle-timeout-ms",
            "3000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["schema"] == "app_open/1"),
        "{lines:?}"
    );
    gw.stop().await.unwrap();
}
