//! The Rust client library (`clients/rust`, `eventpipe-client`) against a real gateway and a real
//! Tansu broker, checked with the independent consumer: every event lands with a matching
//! receipt, a `kill -9` of the gateway mid-stream loses nothing, 503/429 retries wait at least
//! `Retry-After`, 413 splits, `flush` waits for in-flight batches, `shutdown` reports the unsent.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fault::GatewayProc;
use common::{consume_until, Broker, Gateway, Topics};
use eventpipe_client::{Attempt, Client, Event, QueueConfig, QueuePolicy, Receipt, RetryConfig};
use serde_json::{json, Value};

fn click(n: usize) -> Event {
    Event::new("click/1", json!({"element": format!("button#{n}")}))
}

fn ids_in(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["value"]["event_id"].as_str().unwrap_or("").to_string())
        .collect()
}

fn quick_retry() -> RetryConfig {
    let mut r = RetryConfig::default();
    r.base = Duration::from_millis(50);
    r.max_backoff = Duration::from_secs(1);
    r.request_timeout = Duration::from_secs(10);
    r
}

/// Records every attempt the client makes.
fn recorder() -> (
    Arc<Mutex<Vec<Attempt>>>,
    impl Fn(&Attempt) + Send + Sync + 'static,
) {
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let l = log.clone();
    (log, move |a: &Attempt| l.lock().unwrap().push(a.clone()))
}

/// For every attempt answered with a `Retry-After`, the next attempt carrying any of the same
/// ids started at least that long after the answer. Returns how many such pairs were checked.
fn assert_retry_after_honoured(attempts: &[Attempt]) -> usize {
    let mut checked = 0;
    for (n, a) in attempts.iter().enumerate() {
        let (Some(status), Some(floor)) = (a.status, a.retry_after) else {
            continue;
        };
        if status < 400 {
            continue;
        }
        let ids: HashSet<_> = a.ids.iter().collect();
        if let Some(next) = attempts[n + 1..]
            .iter()
            .find(|b| b.ids.iter().any(|id| ids.contains(id)))
        {
            let waited = next.started - a.finished;
            assert!(
                waited >= floor,
                "retry after {status} came {waited:?} after the answer, Retry-After was {floor:?}"
            );
            assert!(next.attempt > a.attempt, "attempt counter goes up");
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sent_event_lands_with_its_receipt_and_413_splits() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    // Bundles of at most 20 events: the client's 100-event batches are answered 413 and split.
    let gw = Gateway::start(common::config(
        &broker.brokers(),
        &topics,
        &[
            ("EVENTPIPE_LIMITS__MAX_EVENTS", "20"),
            ("EVENTPIPE_LIMITS__MAX_BODY_BYTES", "65536"),
        ],
    ))
    .await;
    gw.wait_ready().await;
    let (attempts, observe) = recorder();
    let client = Client::builder(format!("http://{}", gw.addr))
        .batch_max_events(100)
        .linger(Duration::from_secs(30))
        .gzip(false)
        .retry(quick_retry())
        .on_attempt(observe)
        .build()
        .unwrap();
    let mut pending = Vec::new();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for n in 0..150 {
        let e = if n % 10 == 7 {
            // Invalid against click/1: rejected, dead-lettered.
            Event::new("click/1", json!({"element": ""}))
        } else {
            click(n)
        };
        let id = e.event_id().to_string();
        if n % 10 == 7 {
            bad.push(id)
        } else {
            good.push(id)
        }
        pending.push(client.submit(e).await.unwrap());
    }
    // One event over the gateway's body limit on its own: rejected with the 413's reason.
    let huge = Event::new(
        "click/1",
        json!({"element": "b", "url": "u".repeat(70_000)}),
    );
    let huge_id = huge.event_id();
    let huge_pending = client.submit(huge).await.unwrap();
    // flush waits for the batches in flight: everything is settled when it returns.
    client.flush().await;
    let stats = client.stats();
    assert_eq!(
        stats.accepted_kafka + stats.accepted_spool,
        good.len() as u64,
        "{stats:?}"
    );
    assert_eq!(stats.rejected, bad.len() as u64 + 1, "{stats:?}");

    let mut by_id: HashMap<String, Receipt> = HashMap::new();
    for p in pending {
        let id = p.id().to_string();
        by_id.insert(id, p.await.unwrap());
    }
    for id in &good {
        assert!(by_id[id].is_durable(), "{id}: {:?}", by_id[id]);
    }
    for id in &bad {
        assert!(
            matches!(&by_id[id], Receipt::Rejected { reason, path, .. }
                if reason == "schema_violation" && path.as_deref() == Some("/data/element")),
            "{id}: {:?}",
            by_id[id]
        );
    }
    let huge_receipt = huge_pending.await.unwrap();
    assert!(
        matches!(&huge_receipt, Receipt::Rejected { reason, .. } if reason == "body_too_large"),
        "{huge_receipt:?}"
    );

    let attempts = attempts.lock().unwrap().clone();
    assert!(attempts
        .iter()
        .any(|a| a.status == Some(413) && a.ids.len() > 20));
    assert!(attempts
        .iter()
        .any(|a| a.status == Some(413) && a.ids == vec![huge_id]));
    assert!(attempts
        .iter()
        .filter(|a| a.status == Some(200))
        .all(|a| a.ids.len() <= 20));

    let all: Vec<String> = good.iter().chain(&bad).cloned().collect();
    let got = consume_until(
        &broker.brokers(),
        &[&topics.topic("click"), &topics.dead_letter],
        &topics.dead_letter,
        all.len(),
        &all,
    );
    let landed: Vec<String> = ids_in(&got);
    let landed_set: HashSet<&String> = landed.iter().collect();
    for id in &all {
        assert!(
            landed_set.contains(id),
            "{id} not found in Kafka (receipt {:?}); found {}",
            by_id[id],
            landed.len()
        );
    }
    assert!(!landed_set.contains(&huge_id.to_string()));
    // Rejected ones are in the dead-letter topic, accepted ones in the schema's topic.
    // (The 413-refused bundles are dead-lettered whole, without an event id.)
    let dead: HashSet<String> = got
        .iter()
        .filter(|r| r["topic"] == topics.dead_letter.as_str())
        .filter_map(|r| r["value"]["event_id"].as_str().map(str::to_string))
        .filter(|id| !id.is_empty())
        .collect();
    assert_eq!(dead, bad.iter().cloned().collect::<HashSet<_>>());
    let report = client.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kill9_and_restart_mid_stream_loses_nothing_then_shutdown_reports_unsent() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let spool = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::new(&broker.brokers(), &topics, spool.path().to_path_buf(), &[]);
    let client = Client::builder(format!("http://127.0.0.1:{}", gw.port))
        .batch_max_events(50)
        .linger(Duration::from_millis(20))
        .retry(quick_retry())
        .build()
        .unwrap();
    // A steady stream from a background task, each event awaited for its receipt.
    let total = 3000;
    let c = client.clone();
    let producer = tokio::spawn(async move {
        let mut pending = Vec::new();
        for n in 0..total {
            pending.push(c.submit(click(n)).await.unwrap());
            if n % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        let mut receipts = Vec::new();
        for p in pending {
            let id = p.id().to_string();
            receipts.push((id, p.await));
        }
        receipts
    });
    for _ in 0..2 {
        let seen = client.stats().accepted_kafka + client.stats().accepted_spool;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while client.stats().accepted_kafka + client.stats().accepted_spool < seen + 300 {
            assert!(
                std::time::Instant::now() < deadline,
                "no progress: {:?}",
                client.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gw.kill9();
        tokio::time::sleep(Duration::from_millis(500)).await;
        gw.start();
    }
    let receipts = producer.await.unwrap();
    let mut ids = Vec::new();
    for (id, r) in &receipts {
        let r = r.as_ref().unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(r.is_durable(), "{id}: {r:?}");
        ids.push(id.clone());
    }
    assert_eq!(ids.len(), total);
    let stats = client.stats();
    assert!(stats.retries > 0, "the kills were noticed: {stats:?}");
    let got = consume_until(
        &broker.brokers(),
        &[&topics.topic("click")],
        "",
        total,
        &ids,
    );
    let landed = ids_in(&got);
    let unique: HashSet<&String> = landed.iter().collect();
    for id in &ids {
        assert!(unique.contains(id), "{id} acknowledged but not in Kafka");
    }
    eprintln!(
        "client kill -9 x2: {total} events, {} records found, {} duplicates, {} retries",
        landed.len(),
        landed.len() - unique.len(),
        stats.retries
    );

    // Gateway down for good: shutdown gives up at its deadline and says what it did not send.
    gw.kill9();
    let mut unsent = HashSet::new();
    for n in 0..40 {
        unsent.insert(client.track("click/1", json!({"element": format!("late{n}")})));
    }
    let report = client.shutdown(Duration::from_secs(2)).await;
    assert_eq!(report.unsent, 40, "{report:?}");
    assert_eq!(
        report.unsent_ids.into_iter().collect::<HashSet<_>>(),
        unsent
    );
    assert_eq!(report.delivered, total as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_retry_waits_for_retry_after_and_lands_when_kafka_returns() {
    // No spool and the broker cut: the gateway answers 503 unavailable with Retry-After.
    let (broker, proxy) = Broker::sqlite_through_proxy().await;
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let gw = Gateway::start(common::config(
        &broker.brokers(),
        &topics,
        &[
            ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "1000"),
            ("EVENTPIPE_SPOOL__ENABLED", "false"),
        ],
    ))
    .await;
    gw.wait_ready().await;
    let (attempts, observe) = recorder();
    let client = Client::builder(gw.url())
        .linger(Duration::from_millis(10))
        .retry(quick_retry())
        .on_attempt(observe)
        .build()
        .unwrap();
    proxy.cut();
    let mut pending = Vec::new();
    for n in 0..20 {
        pending.push(client.submit(click(n)).await.unwrap());
    }
    // Wait until the gateway has answered 503 twice, then bring Kafka back.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while attempts
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.status == Some(503))
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no 503: {:?}",
            attempts.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.restore();
    let mut ids = Vec::new();
    for p in pending {
        ids.push(p.id().to_string());
        assert!(p.await.unwrap().is_durable());
    }
    let attempts = attempts.lock().unwrap().clone();
    assert!(attempts
        .iter()
        .filter(|a| a.status == Some(503))
        .all(|a| a.retry_after.is_some()));
    assert!(assert_retry_after_honoured(&attempts) >= 2, "{attempts:?}");
    let got = consume_until(&broker.brokers(), &[&topics.topic("click")], "", 20, &ids);
    let landed: HashSet<String> = ids_in(&got).into_iter().collect();
    assert!(ids.iter().all(|id| landed.contains(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_waits_for_retry_after_and_every_event_lands() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    // One request per second per client IP.
    let gw = Gateway::start(common::config(
        &broker.brokers(),
        &topics,
        &[
            ("EVENTPIPE_RATE_LIMIT__IP_REQUESTS_PER_SEC", "1"),
            ("EVENTPIPE_RATE_LIMIT__IP_BURST", "1"),
        ],
    ))
    .await;
    gw.wait_ready().await;
    let (attempts, observe) = recorder();
    let client = Client::builder(gw.url())
        .batch_max_events(2)
        .linger(Duration::ZERO)
        .concurrency(3)
        .queue(QueueConfig::new(100, 1 << 20, QueuePolicy::Block))
        .retry(quick_retry())
        .on_attempt(observe)
        .build()
        .unwrap();
    let mut pending = Vec::new();
    for n in 0..8 {
        pending.push(client.submit(click(n)).await.unwrap());
    }
    let mut ids = Vec::new();
    for p in pending {
        ids.push(p.id().to_string());
        assert!(p.await.unwrap().is_durable());
    }
    let attempts = attempts.lock().unwrap().clone();
    assert!(
        attempts.iter().any(|a| a.status == Some(429)),
        "{attempts:?}"
    );
    assert!(assert_retry_after_honoured(&attempts) >= 1, "{attempts:?}");
    let got = consume_until(&broker.brokers(), &[&topics.topic("click")], "", 8, &ids);
    let landed: HashSet<String> = ids_in(&got).into_iter().collect();
    assert!(ids.iter().all(|id| landed.contains(id)));
}

/// Builds and locates `clients/rust/examples/spill_child.rs` (a service using `Spill`).
fn spill_child() -> std::path::PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "eventpipe-client",
            "--example",
            "spill_child",
        ])
        .current_dir(common::root())
        .status()
        .expect("cargo build --example spill_child");
    assert!(status.success(), "building the spill_child example failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::root().join("target"));
    target.join("debug/examples/spill_child")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilled_events_survive_a_kill9_of_the_service_and_land_on_the_next_start() {
    use std::io::BufRead;
    let child_bin = spill_child();
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let spill = tempfile::tempdir().unwrap();
    let dir = spill.path().display().to_string();
    // The gateway is down (nothing listens on its port) while the service runs.
    let gw_spool = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::configure(
        &broker.brokers(),
        &topics,
        gw_spool.path().to_path_buf(),
        &[],
    );
    let url = format!("http://127.0.0.1:{}", gw.port);
    let n = 200;
    let mut child = std::process::Command::new(&child_bin)
        .args([&url, &dir, "send", &n.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ids = Vec::new();
    let mut ready = false;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("id ") {
            ids.push(id.to_string());
        } else if line == "ready" {
            ready = true;
            break;
        }
    }
    assert!(ready, "the service did not report its events spilled");
    assert_eq!(ids.len(), n);
    common::fault::signal(child.id(), "KILL");
    let _ = child.wait();

    // The gateway comes up; the service starts again on the same directory and replays.
    gw.start();
    let out = std::process::Command::new(&child_bin)
        .args([&url, &dir, "drain", &(n - 2).to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drain run: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two events were only in memory (one in flight, one queued) when it was killed; which two
    // depends on where the retries were (a failed attempt goes back to the queue): every one of
    // the others was spilled and must land.
    let got = consume_until(&broker.brokers(), &[&topics.topic("click")], "", n - 2, &[]);
    let landed: HashSet<String> = ids_in(&got).into_iter().collect();
    let sent: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert!(
        landed.iter().all(|id| sent.contains(id.as_str())),
        "an id nobody tracked landed"
    );
    assert!(
        landed.len() >= n - 2,
        "{} of the {} spilled events landed ({stdout})",
        landed.len(),
        n - 2
    );
}
