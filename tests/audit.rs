//! `eventpipe audit` end to end: a real Tansu broker, a real gateway publishing its audit
//! records (1-second windows), and the checker binary reading both.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fault::GatewayProc;
use common::{Broker, Gateway, Topics};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};

const HOST: &str = "e2e-host";

/// The gateway's audit settings for tests: 1-second windows published 300 ms after their end.
fn audit_env(audit_topic: &str) -> Vec<(&'static str, String)> {
    vec![
        ("EVENTPIPE_AUDIT__TOPIC", audit_topic.to_string()),
        ("EVENTPIPE_AUDIT__WINDOW_SECS", "1".into()),
        ("EVENTPIPE_AUDIT__PUBLISH_DELAY_MS", "300".into()),
        ("EVENTPIPE_AUDIT__RETRY_BACKOFF_MS", "200".into()),
    ]
}

struct Bench {
    broker: Broker,
    topics: Topics,
    gw: Gateway,
    audit_topic: String,
}

impl Bench {
    fn brokers(&self) -> String {
        self.broker.brokers()
    }
    fn click(&self) -> String {
        self.topics.topic("click")
    }
}

async fn create_audit_topic(brokers: &str, topics: &Topics) -> String {
    let audit_topic = format!("{}audit", topics.prefix);
    eventpipe::ops::topics::create(brokers, std::slice::from_ref(&audit_topic), 2, 1)
        .await
        .unwrap();
    audit_topic
}

async fn bench(extra: &[(&str, &str)]) -> Bench {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let audit_topic = create_audit_topic(&broker.brokers(), &topics).await;
    let mut env = audit_env(&audit_topic);
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(common::config(&broker.brokers(), &topics, &env)).await;
    gw.wait_ready().await;
    Bench {
        broker,
        topics,
        gw,
        audit_topic,
    }
}

/// Posts `n` fresh click events in bundles of 5 (plus `invalid` events that fail their schema,
/// in the first bundle); returns the ids and the statuses answered.
async fn post_clicks(url: &str, n: usize, invalid: usize) -> (Vec<String>, Vec<u16>) {
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut statuses = Vec::new();
    for (i, chunk) in ids.chunks(5).enumerate() {
        let mut events: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"schema": "click/1", "event_id": id, "data": {"element": "b"}}))
            .collect();
        if i == 0 {
            events.extend((0..invalid).map(|_| json!({"schema": "click/1", "data": {"x": "no"}})));
        }
        let resp = client
            .post(url)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        statuses.push(resp.status().as_u16());
    }
    (ids, statuses)
}

/// `eventpipe audit` with the test gateway's settings: its broker, topics (prefix and schemas:
/// the topics to read even without audit records) and 1-second windows.
fn checker(brokers: &str, topics: &Topics, audit_topic: &str) -> Command {
    let mut cmd = common::eventpipe_cli();
    cmd.arg("audit")
        .args(["--brokers", brokers, "--audit-topic", audit_topic])
        .args(["--dead-letter-topic", &topics.dead_letter])
        .env("EVENTPIPE_KAFKA__TOPIC_PREFIX", &topics.prefix)
        .env("EVENTPIPE_SCHEMAS", common::root().join("schemas"))
        .env("EVENTPIPE_AUDIT__WINDOW_SECS", "1");
    cmd
}

/// Runs `eventpipe audit --json` and returns (exit code, rows, stderr).
fn audit(
    brokers: &str,
    topics: &Topics,
    audit_topic: &str,
    extra: &[&str],
) -> (i32, Vec<Value>, String) {
    let out = checker(brokers, topics, audit_topic)
        .args(["--json", "--read-timeout", "60s"])
        .args(extra)
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

/// Runs the check until `done(code, rows)` (the gateway publishes its records after each
/// window's end + 300 ms); returns the last run.
async fn audit_until(
    brokers: &str,
    topics: &Topics,
    audit_topic: &str,
    what: &str,
    done: impl Fn(i32, &[Value]) -> bool,
) -> (i32, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, rows, stderr) = audit(brokers, topics, audit_topic, &["--grace", "0"]);
        if done(code, &rows) {
            return (code, rows);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within 90 s; last run exit {code}: {rows:#?}\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Sum of `field` over the rows of `topic`.
fn total(rows: &[Value], topic: &str, field: &str) -> i64 {
    rows.iter()
        .filter(|r| r["topic"] == topic)
        .map(|r| r[field].as_i64().unwrap())
        .sum()
}

async fn delete_and_recreate(brokers: &str, topic: &str, recreate: bool) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&[topic], &opts).await.unwrap() {
        r.unwrap();
    }
    if !recreate {
        return;
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

/// The raw bytes of `n` records of `topic` (partitions 0 and 1, from the beginning).
fn raw_records(brokers: &str, topic: &str, n: usize) -> Vec<Vec<u8>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
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

/// Writes `payloads` to `topic` again, byte for byte: what a replay of them does.
async fn produce_again(brokers: &str, topic: &str, payloads: &[Vec<u8>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for bytes in payloads {
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_is_complete_and_a_recreated_topic_is_missing() {
    let b = bench(&[]).await;
    let (click, dl) = (b.click(), b.topics.dead_letter.clone());
    post_clicks(&b.gw.url(), 20, 2).await;
    let (_, rows) = audit_until(
        &b.brokers(),
        &b.topics,
        &b.audit_topic,
        "a clean run",
        |code, rows| {
            code == 0 && total(rows, &click, "reported") == 20 && total(rows, &dl, "reported") == 2
        },
    )
    .await;
    assert!(rows.iter().all(|r| r["status"] == "complete"), "{rows:#?}");
    assert_eq!(total(&rows, &click, "found"), 20);
    assert_eq!(total(&rows, &dl, "found"), 2);
    // The table says the same.
    let table = checker(&b.brokers(), &b.topics, &b.audit_topic)
        .args(["--grace", "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{text}");
    assert!(text.starts_with("WINDOW"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&click) && l.contains(HOST) && l.ends_with("complete")),
        "{text}"
    );
    println!("{text}");
    let windows: Vec<i64> = rows
        .iter()
        .filter(|r| r["topic"] == click.as_str())
        .map(|r| r["window_start_ms"].as_i64().unwrap())
        .collect();

    // The data is lost after the books were published: each of its rows says where.
    delete_and_recreate(&b.brokers(), &click, true).await;
    let (code, rows, stderr) = audit(&b.brokers(), &b.topics, &b.audit_topic, &["--grace", "0"]);
    assert_eq!(code, 1, "{rows:#?} {stderr}");
    let lost: Vec<&Value> = rows
        .iter()
        .filter(|r| r["topic"] == click.as_str())
        .collect();
    assert_eq!(
        lost.iter()
            .map(|r| r["window_start_ms"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        windows
    );
    for row in &lost {
        assert_eq!(row["status"], "incomplete", "{row}");
        assert_eq!(row["host"], HOST);
        assert_eq!(row["missing"], row["reported"], "{row}");
    }
    assert_eq!(total(&rows, &click, "missing"), 20);
    assert!(rows
        .iter()
        .filter(|r| r["topic"] == dl.as_str())
        .all(|r| r["status"] == "complete"));

    // Within the grace the same windows are still open: not a failure yet.
    let (code, rows, _) = audit(&b.brokers(), &b.topics, &b.audit_topic, &["--grace", "1h"]);
    assert_eq!(code, 0, "{rows:#?}");
    assert!(rows.iter().all(|r| r["status"] == "open"), "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_duplicates_are_duplicates_not_completeness() {
    let b = bench(&[]).await;
    let click = b.click();
    post_clicks(&b.gw.url(), 10, 0).await;
    let saved = raw_records(&b.brokers(), &click, 10);
    // A replay writes three records again, byte for byte: still complete, 3 duplicates.
    produce_again(&b.brokers(), &click, &saved[..3]).await;
    let (_, rows) = audit_until(
        &b.brokers(),
        &b.topics,
        &b.audit_topic,
        "complete with duplicates",
        |code, rows| code == 0 && total(rows, &click, "reported") == 10,
    )
    .await;
    assert_eq!(total(&rows, &click, "duplicates"), 3, "{rows:#?}");
    assert_eq!(total(&rows, &click, "found"), 10, "{rows:#?}");

    // The topic is lost and two of its events come back twice each: 4 records, 2 events.
    delete_and_recreate(&b.brokers(), &click, true).await;
    produce_again(&b.brokers(), &click, &[&saved[..2], &saved[..2]].concat()).await;
    let (code, rows, stderr) = audit(&b.brokers(), &b.topics, &b.audit_topic, &["--grace", "0"]);
    assert_eq!(code, 1, "{rows:#?} {stderr}");
    assert_eq!(total(&rows, &click, "found"), 2, "{rows:#?}");
    assert_eq!(total(&rows, &click, "duplicates"), 2, "{rows:#?}");
    assert_eq!(total(&rows, &click, "missing"), 8, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_no_record_covers_are_unreported_and_a_missing_audit_topic_is_an_error() {
    // This gateway publishes nothing: its events are found, not reported, and nothing is lost.
    let b = bench(&[("EVENTPIPE_AUDIT__ENABLED", "false")]).await;
    let click = b.click();
    post_clicks(&b.gw.url(), 10, 0).await;
    let (_, rows) = audit_until(
        &b.brokers(),
        &b.topics,
        &b.audit_topic,
        "unreported events",
        // Every window closed too: the last one can still be open (1 s windows, no grace).
        |code, rows| {
            code == 0
                && total(rows, &click, "unreported") == 10
                && rows.iter().all(|r| r["status"] != "open")
        },
    )
    .await;
    assert!(
        rows.iter()
            .all(|r| r["audited"] == false && r["status"] == "complete" && r["host"] == HOST),
        "{rows:#?}"
    );

    let (code, _, stderr) = audit(&b.brokers(), &b.topics, "no.such.topic", &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no.such.topic"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_window_ends_complete_once_its_spool_replays() {
    // The broker sits behind a proxy; the outage is a network cut (its process and data stay).
    let (broker, proxy) = Broker::sqlite_through_proxy().await;
    let brokers = broker.brokers();
    let topics = Topics::unique();
    topics.create(&brokers).await;
    let audit_topic = create_audit_topic(&brokers, &topics).await;
    let mut env = audit_env(&audit_topic);
    env.push(("EVENTPIPE_COLLECTOR_ID", "killed-host".into()));
    // Short, so that the cut's requests are spooled quickly (the other tests keep the default:
    // on a loaded machine a 1 s deadline spools, and a late ack then duplicates, dead letters).
    env.push(("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "1000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let spool = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::new(&brokers, &topics, spool.path().to_path_buf(), &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.ready().await != Some(true) {
        assert!(Instant::now() < deadline, "not ready: {}", gw.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut ids, _) = post_clicks(&gw.url(), 5, 0).await;
    let click = topics.topic("click");
    // The five acknowledged by Kafka are in the books before the cut, so that after the replay
    // the books must hold exactly ten: five direct, five replayed by the next process.
    audit_until(
        &brokers,
        &topics,
        &audit_topic,
        "the first five reported",
        |_, rows| total(rows, &click, "reported") == 5,
    )
    .await;
    proxy.cut();
    let (spooled, statuses) = post_clicks(&gw.url(), 5, 0).await;
    assert_eq!(statuses, vec![202], "spooled during the cut");
    ids.extend(spooled);
    // kill -9 with the spool full and the window's books unpublished.
    gw.kill9();
    proxy.restore();
    gw.start();
    assert!(
        gw.wait_spool_empty(Duration::from_secs(120)).await,
        "spool not replayed: {}",
        gw.log_tail()
    );

    let (_, rows) = audit_until(
        &brokers,
        &topics,
        &audit_topic,
        "complete after the replay",
        |code, rows| {
            code == 0 && total(rows, &click, "found") == 10 && total(rows, &click, "reported") == 10
        },
    )
    .await;
    assert!(
        rows.iter()
            .all(|r| r["status"] == "complete" && r["host"] == "killed-host"),
        "{rows:#?}"
    );
    assert_eq!(total(&rows, &click, "missing"), 0);
    assert_eq!(total(&rows, &click, "unreported"), 0);
    drop(proxy);
}

/// `eventpipe audit --watch`, killed on drop.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the sample `series` (name and labels, exactly) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_serves_the_verdicts_as_metrics() {
    let b = bench(&[]).await;
    let click = b.click();
    post_clicks(&b.gw.url(), 10, 0).await;
    let port = common::free_port();
    let work = tempfile::tempdir().unwrap();
    let watch_log = work.path().join("watch.log");
    let _watch = Watch(
        checker(&b.brokers(), &b.topics, &b.audit_topic)
            .args(["--watch", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--interval", "1s", "--grace", "0", "--since", "1h"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&watch_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let missing = format!("eventpipe_audit_missing_events{{topic=\"{click}\",host=\"{HOST}\"}}");
    let scrape_until = |what: &'static str, done: Box<dyn Fn(&str) -> bool>| {
        let url = url.clone();
        let log = watch_log.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let text = match reqwest::get(&url).await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if done(&text) {
                    return text;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what} not seen in 90 s:\n{text}\nwatch log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let m = missing.clone();
    let text = scrape_until(
        "the complete windows",
        Box::new(move |t| {
            sample(t, &m) == Some(0.0)
                && sample(t, "eventpipe_audit_windows{status=\"complete\"}")
                    .is_some_and(|n| n >= 1.0)
                && sample(t, "eventpipe_audit_windows{status=\"incomplete\"}") == Some(0.0)
        }),
    )
    .await;
    assert!(sample(&text, "eventpipe_audit_last_check_timestamp_seconds").is_some_and(|t| t > 0.0));
    assert_eq!(
        sample(&text, "eventpipe_audit_check_errors_total"),
        Some(0.0)
    );
    assert!(text.contains("eventpipe_audit_duplicate_events{"), "{text}");
    assert!(
        text.contains("eventpipe_audit_unreported_events{"),
        "{text}"
    );

    // The topic is deleted and recreated while the watch runs: the next checks see the loss.
    delete_and_recreate(&b.brokers(), &click, true).await;
    let m = missing.clone();
    scrape_until(
        "the loss",
        Box::new(move |t| {
            sample(t, &m) == Some(10.0)
                && sample(t, "eventpipe_audit_windows{status=\"incomplete\"}")
                    .is_some_and(|n| n >= 1.0)
        }),
    )
    .await;
}
