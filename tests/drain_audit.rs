//! `eventpipe spool drain` closes a dead host's books: a real gateway process publishes audit
//! windows with events pending in its spool and is killed -9; the checker (`eventpipe audit`)
//! then fails on them (pending for ever, no later boot); the drain delivers the records and
//! publishes the audit under the dead host's name, and the checker ends complete.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::fault::GatewayProc;
use common::{Broker, Topics};
use serde_json::{json, Value};

use common::eventpipe_cli as eventpipe;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `eventpipe audit --json --grace 0s`: its exit code and rows.
fn check(brokers: &str, audit: &str, topics: &Topics) -> (Option<i32>, Vec<Value>, String) {
    let out = eventpipe()
        .args(["audit", "--json", "--grace", "0s", "--brokers", brokers])
        .args(["--audit-topic", audit])
        .args(["--dead-letter-topic", &topics.dead_letter])
        .output()
        .unwrap();
    let rows = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code(), rows, text(&out.stderr))
}

fn drain(dir: &Path, brokers: &str, env: &[(&str, &str)], extra: &[&str]) -> Output {
    eventpipe()
        .envs(env.iter().copied())
        .args(["spool", "drain", "--json", "--brokers", brokers, "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn pending_records(dir: &Path) -> i64 {
    let out = eventpipe()
        .args(["spool", "inspect", "--json", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "inspect: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pending_records"].as_i64().unwrap()
}

fn clicks(n: usize) -> Value {
    let events: Vec<Value> = (0..n)
        .map(|_| json!({"schema": "click/1", "event_id": uuid::Uuid::new_v4().to_string(), "data": {"element": "buy"}}))
        .collect();
    json!({ "events": events })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_publishes_the_dead_hosts_audit_and_the_checker_ends_complete() {
    // The broker behind a proxy: the outage is a network cut, and the audit reaches Kafka
    // again once it ends, while the spooled records stay in the gateway's spool (its segment
    // is sealed for replay only after ten minutes).
    let (broker, proxy) = Broker::sqlite_through_proxy().await;
    let brokers = broker.brokers();
    let topics = Topics::unique();
    let audit = format!("{}audit", topics.prefix);
    topics.create(&brokers).await;
    eventpipe::ops::topics::create(&brokers, std::slice::from_ref(&audit), 1, 1)
        .await
        .expect("creating the audit topic");
    let audit_env = [
        ("EVENTPIPE_AUDIT__TOPIC", audit.as_str()),
        ("EVENTPIPE_AUDIT__WINDOW_SECS", "1"),
        ("EVENTPIPE_AUDIT__PUBLISH_DELAY_MS", "300"),
        ("EVENTPIPE_AUDIT__RETRY_BACKOFF_MS", "200"),
    ];
    let mut gw_env = audit_env.to_vec();
    gw_env.push(("EVENTPIPE_SPOOL__SEAL_AFTER_MS", "600000"));
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let mut gw = GatewayProc::new(&brokers, &topics, spool.clone(), &gw_env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.ready().await != Some(true) {
        assert!(Instant::now() < deadline, "not ready: {}", gw.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = reqwest::Client::new();
    // (A loaded machine may make the first produce outlast the ack timeout: then some of it is
    // spooled too.)
    let r = client.post(gw.url()).json(&clicks(3)).send().await.unwrap();
    assert!(r.status().is_success(), "{}", gw.log_tail());

    proxy.cut();
    for _ in 0..3 {
        let r = client.post(gw.url()).json(&clicks(5)).send().await.unwrap();
        assert_eq!(r.status(), 202, "spooled during the cut: {}", gw.log_tail());
    }
    proxy.restore();

    // The gateway publishes its windows, the spooled ones with events pending: as many as its
    // spool holds (read-only `spool inspect` of the live spool).
    let deadline = Instant::now() + Duration::from_secs(90);
    let spooled = loop {
        let (_, rows, _) = check(&brokers, &audit, &topics);
        let pending: i64 = rows.iter().map(|r| r["pending"].as_i64().unwrap()).sum();
        let held = pending_records(&spool);
        if pending >= 15 && pending == held {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never published its pending windows: {rows:?}\n{}",
            gw.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    gw.kill9();
    // A host gone for good: nothing will ever bring its pending windows to 0.
    let (code, rows, err) = check(&brokers, &audit, &topics);
    assert_eq!(code, Some(1), "{rows:?} {err}");
    assert!(
        rows.iter().any(|r| r["status"] == "pending-past-grace"),
        "{rows:?}"
    );

    let out = drain(&spool, &brokers, &audit_env, &[]);
    assert!(
        out.status.success(),
        "drain failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["outcome"], "drained", "{summary}");
    assert_eq!(summary["replayed"], spooled, "{summary}");

    let (code, rows, err) = check(&brokers, &audit, &topics);
    assert_eq!(
        code,
        Some(0),
        "not complete after the drain: {rows:?} {err}"
    );
    assert_eq!(summary["audit"]["status"], "published", "{summary}");
    assert_eq!(summary["audit"]["inventoried"], spooled, "{summary}");
    let host = summary["audit"]["collector_host"].clone();
    let clicks_topic = topics.topic("click");
    let data: Vec<&Value> = rows
        .iter()
        .filter(|r| r["topic"] == clicks_topic.as_str())
        .collect();
    assert!(!data.is_empty(), "{rows:?}");
    for r in &rows {
        assert_eq!(r["status"], "complete", "{r}");
        assert_eq!(
            (&r["pending"], &r["missing"]),
            (&json!(0), &json!(0)),
            "{r}"
        );
        assert_eq!(r["host"], host, "{r}");
    }
    let reported: i64 = data.iter().map(|r| r["reported"].as_i64().unwrap()).sum();
    assert_eq!(
        reported, 18,
        "every acknowledged event, directly or drained: {rows:?}"
    );
}
