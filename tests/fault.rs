//! The fault suite: load with unique event ids against a real gateway process and a durable
//! Tansu broker (SQLite engine), faults injected during the load, then an audit of the topic
//! with an independent consumer. Acknowledged-but-missing must be 0.
//!
//! Short form (CI): one round of each fault. Long form:
//! `EVENTPIPE_FAULT_ROUNDS=10 cargo test --release --test fault -- --nocapture`.
//! Every audit is appended as a JSON line to `target/fault-audit.jsonl`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fault::{
    audit, quarantine_entries, report_audit, signal, spawn_load, FaultCounter, GatewayProc, Ledger,
};
use common::proxy::Proxy;
use common::{Broker, Topics};

/// Scenarios run one at a time: they share two cores and measure behaviour under timing.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rounds() -> usize {
    std::env::var("EVENTPIPE_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillGateway,
    TermGateway,
    KillBroker,
    FreezeBroker,
    CutBroker,
    DiskFullWhileKafkaDown,
}

const SINGLE: [Fault; 5] = [
    Fault::KillGateway,
    Fault::TermGateway,
    Fault::KillBroker,
    Fault::FreezeBroker,
    Fault::CutBroker,
];

/// A small filesystem for the spool: tmpfs when we may mount (root), else a tiny spool limit.
struct SmallDisk {
    dir: PathBuf,
    mounted: bool,
}

impl SmallDisk {
    fn new(base: &std::path::Path) -> SmallDisk {
        let dir = base.join("small-spool");
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=384k", "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        SmallDisk { dir, mounted }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

async fn inject(
    fault: Fault,
    gw: &mut GatewayProc,
    broker: &mut Broker,
    proxy: &Proxy,
    faults: &FaultCounter,
) -> Option<bool> {
    faults.inc();
    match fault {
        Fault::KillGateway => {
            gw.kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            gw.start();
        }
        Fault::TermGateway => {
            tokio::task::block_in_place(|| gw.terminate());
            gw.start();
        }
        Fault::KillBroker => {
            broker.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            broker.start();
        }
        Fault::FreezeBroker => {
            signal(broker.pid(), "STOP");
            tokio::time::sleep(Duration::from_secs(3)).await;
            signal(broker.pid(), "CONT");
        }
        Fault::CutBroker => {
            // Tansu does not exit on SIGTERM while clients stay connected, so "unreachable" is a
            // network cut: every connection dropped, new ones refused.
            proxy.cut();
            tokio::time::sleep(Duration::from_secs(2)).await;
            proxy.restore();
        }
        Fault::DiskFullWhileKafkaDown => {
            broker.kill();
            // Long enough for the small spool to fill; watch readiness go false.
            let mut saw_unready = false;
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if gw.ready().await == Some(false) {
                    saw_unready = true;
                }
            }
            broker.start();
            return Some(saw_unready);
        }
    }
    None
}

async fn scenario(name: &str, rounds: usize, plan: impl Fn(usize) -> Fault) {
    let _one = ONE_AT_A_TIME.lock().await;
    // Clients reach the broker through a proxy, so the network between them can be cut.
    let (mut broker, proxy) = Broker::sqlite_through_proxy().await;
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let work = tempfile::tempdir().unwrap();
    let uses_disk = (0..rounds).any(|r| plan(r) == Fault::DiskFullWhileKafkaDown);
    let disk = uses_disk.then(|| SmallDisk::new(work.path()));
    let spool_dir = disk
        .as_ref()
        .map(|d| d.dir.join("spool"))
        .unwrap_or_else(|| work.path().join("spool"));
    let mut extra = vec![];
    if disk.as_ref().is_some_and(|d| !d.mounted) {
        extra.push(("EVENTPIPE_SPOOL__MAX_BYTES", "262144"));
    }
    let mut gw = GatewayProc::new(&broker.brokers(), &topics, spool_dir, &extra);

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Tansu's SQLite engine slows down as a topic grows (a fetch on a few tens of thousands of
    // records can take a minute), so longer runs send a little slower.
    let pause = if rounds > SINGLE.len() {
        60
    } else if rounds > 1 {
        40
    } else {
        20
    };
    let load = spawn_load(
        gw.url(),
        4,
        10,
        Duration::from_millis(pause),
        ledger.clone(),
        stop.clone(),
    );
    let faults = FaultCounter::default();
    let mut saw_unready = None;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for round in 0..rounds {
        if let Some(s) = inject(plan(round), &mut gw, &mut broker, &proxy, &faults).await {
            saw_unready = Some(saw_unready.unwrap_or(false) || s);
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let mut broker_repairs = 0;
    let mut gateway_restarts = 0;
    let started = std::time::Instant::now();
    let drained = loop {
        if gw.wait_spool_empty(Duration::from_secs(10)).await {
            break true;
        }
        if broker.storage_crashed() {
            broker_repairs += 1;
            broker.kill();
            broker.start();
            if broker_repairs % 2 == 0 {
                gateway_restarts += 1;
                gw.kill9();
                gw.start();
            }
        }
        if started.elapsed() > Duration::from_secs(150) {
            break false;
        }
    };
    assert!(
        drained,
        "{name}: spool did not drain: {} (broker log {})",
        gw.log_tail(),
        broker.log_path().display()
    );
    let topic = topics.topic("click");
    let mut result = tokio::task::block_in_place(|| {
        audit(name, faults.get(), &broker.brokers(), &topic, &ledger)
    });
    result.broker_repairs = broker_repairs;
    result.gateway_restarts = gateway_restarts;
    let line = report_audit(&result);
    assert!(result.acked > 0, "{name}: nothing was acknowledged: {line}");
    assert_eq!(
        result.acked_but_missing,
        0,
        "{name}: acknowledged events missing from Kafka: {line}\n{}",
        gw.log_tail()
    );
    if let Some(disk) = &disk {
        let refused = result.statuses.get("503").copied().unwrap_or(0);
        assert!(
            refused > 0,
            "{name}: the full spool never refused a request (mounted={}): {line}",
            disk.mounted
        );
        assert_eq!(
            saw_unready,
            Some(true),
            "{name}: /readyz never turned false with a full spool and no Kafka"
        );
    }
    gw.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_kill_9_loses_nothing_acknowledged() {
    scenario("gateway kill -9", rounds(), |_| Fault::KillGateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_sigterm_mid_load_loses_nothing_acknowledged() {
    scenario("gateway SIGTERM", rounds(), |_| Fault::TermGateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_kill_9_loses_nothing_acknowledged() {
    scenario("broker kill -9", rounds(), |_| Fault::KillBroker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_frozen_past_the_ack_deadline_loses_nothing_acknowledged() {
    scenario("broker SIGSTOP 3s", rounds(), |_| Fault::FreezeBroker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_unreachable_loses_nothing_acknowledged() {
    scenario("broker unreachable 2s", rounds(), |_| Fault::CutBroker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_spool_disk_with_kafka_down_refuses_and_loses_nothing_acknowledged() {
    scenario("spool disk full + broker down", rounds(), |_| {
        Fault::DiskFullWhileKafkaDown
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_faults_lose_nothing_acknowledged() {
    // Deterministic mix: each round a different fault, cycling through all of them.
    scenario("mixed", rounds() * SINGLE.len(), |round| {
        SINGLE[round % SINGLE.len()]
    })
    .await;
}

/// A corrupted middle of a spooled segment costs exactly the damaged record: the gateway is
/// killed while the broker is frozen (so the spool holds acknowledged events), one byte inside
/// a committed record of the newest segment is flipped, and after a restart everything else
/// arrives; the acknowledged events that are missing are exactly the ones the quarantine lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_middle_of_a_spooled_segment_costs_only_the_quarantined_record() {
    use eventpipe::sink::spool::{decode_record, Format, FrameKind, Item};
    let _one = ONE_AT_A_TIME.lock().await;
    let broker = Broker::sqlite();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let work = tempfile::tempdir().unwrap();
    let spool_dir = work.path().join("spool");
    let mut gw = GatewayProc::new(&broker.brokers(), &topics, spool_dir.clone(), &[]);
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        gw.url(),
        4,
        10,
        Duration::from_millis(20),
        ledger.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    signal(broker.pid(), "STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    gw.kill9();

    // The newest segment: its records were spooled while the breaker was open.
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let seg = segs.last().expect("the spool holds a segment").clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let (format, data) = Format::of(&bytes);
    let items: Vec<Item> = format.items(&bytes, data, bytes.len()).collect();
    let last_commit = items
        .iter()
        .rev()
        .find_map(|i| match i {
            Item::Frame(f) if f.kind == FrameKind::Commit => Some(f.start),
            _ => None,
        })
        .expect("a commit marker");
    let committed: Vec<(usize, usize, String)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Frame(f) if f.kind == FrameKind::Record && f.end <= last_commit => {
                let (r, _) = decode_record(f.body)?;
                let id = r.headers.iter().find(|(k, _)| *k == "event_id")?.1.clone();
                Some((f.start, f.end, id))
            }
            _ => None,
        })
        .collect();
    assert!(
        committed.len() >= 3,
        "too few spooled records: {}",
        committed.len()
    );
    let (start, end, damaged_id) = committed[committed.len() / 2].clone();
    // A payload byte: the frame fails its checksum, its header fields stay readable.
    bytes[end - 2] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    signal(broker.pid(), "CONT");
    gw.start();
    assert!(
        gw.wait_spool_empty(Duration::from_secs(60)).await,
        "spool did not drain: {}",
        gw.log_tail()
    );
    let entries = quarantine_entries(&spool_dir);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["reason"], "corrupt");
    assert_eq!(entries[0]["offset"], start as u64);
    let quarantined: std::collections::HashSet<String> = entries
        .iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(quarantined, [damaged_id.clone()].into_iter().collect());

    assert!(ledger.acked.lock().unwrap().contains(&damaged_id));
    // Missing must be exactly the quarantined record: everything else arrives (the consumer
    // waits for every id it is given, so it gets all acknowledged ids but the quarantined), and
    // the quarantined one is missing unless the killed gateway's producer delivered it anyway
    // (sent before the freeze, written by the broker after it).
    let rest = Ledger::default();
    *rest.sent.lock().unwrap() = ledger.sent.lock().unwrap().clone();
    *rest.statuses.lock().unwrap() = ledger.statuses.lock().unwrap().clone();
    *rest.acked.lock().unwrap() = ledger
        .acked
        .lock()
        .unwrap()
        .iter()
        .filter(|id| !quarantined.contains(*id))
        .cloned()
        .collect();
    let topic = topics.topic("click");
    let result = tokio::task::block_in_place(|| {
        audit("corrupt spool middle", 1, &broker.brokers(), &topic, &rest)
    });
    let line = report_audit(&result);
    assert!(result.acked > 0, "{line}");
    assert_eq!(
        result.acked_but_missing, 0,
        "acknowledged events other than the quarantined one are missing: {line}"
    );
    let also_delivered = quarantined
        .iter()
        .filter(|id| result.seen_ids.contains(*id))
        .count();
    println!(
        "quarantined {} record(s), {also_delivered} of them delivered before the damage",
        quarantined.len()
    );
    gw.terminate();
}

/// Records Kafka refuses for good, spooled while it could not say so, never block replay: while
/// the broker is frozen, clients post bundles mixing events of a schema whose topic was never
/// created with ordinary ones (all acknowledged 202, spooled), plus a request with a 700 KB
/// event id. Once the broker is back, the replayer delivers everything else and moves exactly the
/// refused events to the quarantine; the spool drains and the host stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_kafka_refuses_after_an_outage_are_quarantined_without_blocking_replay() {
    use serde_json::json;
    let _one = ONE_AT_A_TIME.lock().await;
    let broker = Broker::sqlite();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await; // no topic for `orphan`
    let work = tempfile::tempdir().unwrap();
    let schemas = work.path().join("schemas");
    common::copy_dir(&common::root().join("schemas"), &schemas);
    std::fs::create_dir_all(schemas.join("orphan")).unwrap();
    std::fs::write(schemas.join("orphan/1.json"), r#"{"type": "object"}"#).unwrap();
    let spool_dir = work.path().join("spool");
    let schemas_env = schemas.display().to_string();
    let mut gw = GatewayProc::new(
        &broker.brokers(),
        &topics,
        spool_dir.clone(),
        &[("EVENTPIPE_SCHEMAS", &schemas_env)],
    );
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(
        gw.url(),
        4,
        10,
        Duration::from_millis(20),
        ledger.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(broker.pid(), "STOP");
    let client = reqwest::Client::new();
    let mut orphans_acked = Vec::new();
    for round in 0..8 {
        let orphan = uuid::Uuid::new_v4().to_string();
        let click = uuid::Uuid::new_v4().to_string();
        let bundle = json!({"events": [
            {"schema": "orphan/1", "event_id": orphan, "data": {"round": round}},
            {"schema": "click/1", "event_id": click, "data": {"element": "poison-round"}},
        ]});
        let resp = client.post(gw.url()).json(&bundle).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        orphans_acked.push(orphan);
        ledger.acked.lock().unwrap().insert(click.clone());
        ledger.sent.lock().unwrap().push(click);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let poison = json!({"events": [{"schema": "click/1", "event_id": "p".repeat(700_000)}]});
    let resp = client.post(gw.url()).json(&poison).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    signal(broker.pid(), "CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        // Unknown-topic refusals wait out the replayer's 30 s grace first.
        gw.wait_spool_empty(Duration::from_secs(150)).await,
        "refused records blocked the replay: {}",
        gw.log_tail()
    );
    assert_eq!(gw.ready().await, Some(true), "the host must stay ready");

    let quarantined: std::collections::HashSet<String> = quarantine_entries(&spool_dir)
        .into_iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("kafka_rejected:"))
        })
        .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect();
    let expected: std::collections::HashSet<String> = orphans_acked.into_iter().collect();
    assert_eq!(
        quarantined, expected,
        "exactly the refused events are quarantined"
    );

    let topic = topics.topic("click");
    let result = tokio::task::block_in_place(|| {
        audit(
            "refused after outage",
            1,
            &broker.brokers(),
            &topic,
            &ledger,
        )
    });
    let line = report_audit(&result);
    assert_eq!(result.acked_but_missing, 0, "{line}\n{}", gw.log_tail());
    gw.terminate();
}
