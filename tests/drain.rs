//! `eventpipe spool drain` and `eventpipe spool inspect` on real spools: filled by a real gateway
//! process while Kafka was unreachable and then `kill -9`ed (a host gone for good), drained into
//! a real Tansu broker and checked with the independent consumer; refused while a live gateway
//! holds the directory; interrupted (SIGTERM, kill -9) and rerun; inspected without a byte
//! changing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fault::{audit, signal, spawn_load, GatewayProc, Ledger};
use common::{free_port, Broker, Topics};
use serde_json::Value;

use common::eventpipe_cli as eventpipe;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `spool drain` to completion (or failure); generous batch waits are the replayer's own.
fn drain(dir: &Path, brokers: &str, extra: &[&str]) -> Output {
    eventpipe()
        .args(["spool", "drain", "--json", "--brokers", brokers, "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

/// `spool drain` in the background: stderr to `stderr`, stdout next to it (`.out`).
fn spawn_drain(dir: &Path, brokers: &str, stderr: &Path) -> Child {
    eventpipe()
        // Small batches: many checkpoints, so an interruption lands between two of them.
        .env("EVENTPIPE_SPOOL__REPLAY_BATCH_RECORDS", "25")
        .args([
            "spool",
            "drain",
            "--progress-interval",
            "1s",
            "--brokers",
            brokers,
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(std::fs::File::create(stderr.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

fn inspect(dir: &Path) -> Value {
    let out = eventpipe()
        .args(["spool", "inspect", "--json", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inspect failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Segment and checkpoint files left in a spool directory.
fn spool_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg") || n.ends_with(".ack"))
        .collect();
    names.sort();
    names
}

/// Every file under `dir` (relative path) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits for a child with a generous limit; None if it is still running then.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A gateway process whose Kafka is unreachable (nothing listens on its broker port) takes
/// loops of unique click events until at least `min_acked` were acknowledged (all spooled).
/// Returns the gateway (still running) and what was acknowledged.
async fn spool_while_kafka_unreachable(
    spool_dir: &Path,
    topics: &Topics,
    min_acked: usize,
    extra: &[(&str, &str)],
) -> (GatewayProc, Arc<Ledger>) {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let gw = GatewayProc::new(&nowhere, topics, spool_dir.to_owned(), extra);
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_load(
        gw.url(),
        4,
        50,
        Duration::from_millis(1),
        ledger.clone(),
        stop.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while ledger.acked.lock().unwrap().len() < min_acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = ledger.acked.lock().unwrap().len();
    assert!(
        acked >= min_acked,
        "{acked} events acknowledged (spooled) with Kafka unreachable, wanted {min_acked}: {:?}\n{}",
        ledger.statuses.lock().unwrap(),
        gw.log_tail()
    );
    (gw, ledger)
}

/// A host gone for good: its gateway spooled acknowledged events while Kafka was unreachable
/// and was killed -9. `spool drain` delivers every one of them, exits 0 and leaves no segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_delivers_every_acknowledged_event_of_a_killed_gateways_spool() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let topics = Topics::unique();
    let (mut gw, ledger) = spool_while_kafka_unreachable(&spool, &topics, 2_000, &[]).await;
    gw.kill9();
    let before = inspect(&spool);
    let acked = ledger.acked.lock().unwrap().len() as u64;
    assert!(
        before["pending_records"].as_u64().unwrap() >= acked,
        "the spool holds fewer records than were acknowledged: {before}"
    );

    let broker = Broker::memory();
    topics.create(&broker.brokers()).await;
    let out = drain(&spool, &broker.brokers(), &[]);
    assert!(
        out.status.success(),
        "drain failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["outcome"], "drained", "{summary}");
    assert_eq!(summary["remaining"], 0, "{summary}");
    assert_eq!(summary["quarantined"], 0, "{summary}");
    assert_eq!(summary["replayed"], before["pending_records"], "{summary}");
    // The dead host's audit records are published (to `events.audit`, which the test topics
    // include), under the host its records name.
    assert_eq!(summary["audit"]["status"], "published", "{summary}");
    assert!(
        text(&out.stderr).contains("draining "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(spool_files(&spool), Vec::<String>::new());
    assert_eq!(inspect(&spool)["pending_records"], 0);

    let topic = topics.topic("click");
    let result = tokio::task::block_in_place(|| {
        audit(
            "drain of a killed gateway's spool",
            1,
            &broker.brokers(),
            &topic,
            &ledger,
        )
    });
    println!("{}", serde_json::to_string(&result).unwrap());
    assert_eq!(
        result.acked_but_missing,
        0,
        "acknowledged events missing after the drain: {}",
        serde_json::to_string(&result).unwrap()
    );

    // Drained is drained: a second run finds nothing to do.
    let again = drain(&spool, &broker.brokers(), &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let summary: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["outcome"], "empty", "{summary}");
}

/// A directory a live gateway holds is refused (the gateway keeps serving); inspect reads it
/// and says it is live. Once the gateway is gone, a drain with an unreachable Kafka gives up
/// after its timeout, non-zero, with the spool as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_refuses_a_live_gateways_spool_and_gives_up_on_an_unreachable_kafka() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let topics = Topics::unique();
    let (mut gw, ledger) = spool_while_kafka_unreachable(&spool, &topics, 100, &[]).await;
    let acked = ledger.acked.lock().unwrap().len() as u64;
    let nowhere = format!("127.0.0.1:{}", free_port());

    // (A timeout, so that a drain which wrongly took the spool fails fast, not in 10 minutes.)
    let out = drain(&spool, &nowhere, &["--timeout", "5s"]);
    assert!(!out.status.success(), "drain took a live gateway's spool");
    let err = text(&out.stderr);
    assert!(err.contains("locked by a live process"), "{err}");
    let live = inspect(&spool);
    assert_eq!(live["lock"], "live", "{live}");
    assert!(live["pending_records"].as_u64().unwrap() >= acked, "{live}");
    // The gateway still owns its spool and serves.
    let status = reqwest::Client::new()
        .post(gw.url())
        .json(&serde_json::json!({"events": [{"schema": "click/1", "data": {"element": "b", "x": 1}}]}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202, "{}", gw.log_tail());
    gw.kill9();

    let pending = inspect(&spool)["pending_records"].clone();
    let out = drain(&spool, &nowhere, &["--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("acknowledged nothing for 2s") && err.contains("unreachable"),
        "{err}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["outcome"], "timed_out", "{summary}");
    let after = inspect(&spool);
    assert_eq!(after["pending_records"], pending, "{after}");
    assert_eq!(after["lock"], "free", "{after}");

    let missing = drain(&work.path().join("nope"), &nowhere, &[]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("does not exist"),
        "{}",
        text(&missing.stderr)
    );
}

/// Interrupted twice — SIGTERM, then kill -9, each with the broker frozen in the middle of a
/// batch — and run again: the third run ends with the spool empty and every acknowledged event
/// delivered (duplicates allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_interrupted_by_sigterm_and_kill9_resumes_and_completes() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let topics = Topics::unique();
    let (mut gw, ledger) = spool_while_kafka_unreachable(
        &spool,
        &topics,
        20_000,
        &[("EVENTPIPE_SPOOL__SEGMENT_BYTES", "1048576")],
    )
    .await;
    gw.kill9();
    let total = inspect(&spool)["pending_records"].as_u64().unwrap();
    let broker = Broker::memory();
    topics.create(&broker.brokers()).await;
    let log = work.path().join("drain.log");

    // Runs a drain until inspect (read-only, on the live drain's spool) shows it made progress
    // below `above`, then freezes the broker so the drain is stuck in a batch.
    let progressed = |child: &mut Child, above: u64| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let state = inspect(&spool);
            let pending = state["pending_records"].as_u64().unwrap();
            if pending < above {
                signal(broker.pid(), "STOP");
                return pending;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "drain exited before it could be interrupted: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "drain made no progress: {state}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut first = spawn_drain(&spool, &broker.brokers(), &log);
    let seen = progressed(&mut first, total);
    // The progress line (every --progress-interval 1s): records done of the total, bytes, rate
    // and an ETA — here "unknown", with the broker frozen.
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = log_text.lines().find(|l| l.contains("drain: ")) {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no progress line: {log_text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        line.contains(" records (") && line.contains("records/s") && line.contains("ETA"),
        "{line}"
    );
    signal(first.id(), "TERM");
    let status = wait_exit(&mut first, Duration::from_secs(60)).expect("drain ignored SIGTERM");
    signal(broker.pid(), "CONT");
    assert_eq!(status.code(), Some(130), "{status}");
    let summary = std::fs::read_to_string(log.with_extension("out")).unwrap();
    assert!(
        summary.contains("interrupted") && summary.contains("run `eventpipe spool drain` again"),
        "{summary}"
    );
    let left = inspect(&spool);
    assert_eq!(left["lock"], "free", "{left}");
    let left = left["pending_records"].as_u64().unwrap();
    assert!(
        left > 0 && left <= seen,
        "{left} pending after SIGTERM, {seen} seen"
    );

    let mut second = spawn_drain(&spool, &broker.brokers(), &log);
    progressed(&mut second, left);
    second.kill().unwrap(); // SIGKILL
    second.wait().unwrap();
    signal(broker.pid(), "CONT");
    let left = inspect(&spool)["pending_records"].as_u64().unwrap();
    assert!(
        left > 0,
        "nothing left after kill -9: the interruption came too late"
    );

    let out = drain(&spool, &broker.brokers(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["outcome"], "drained", "{summary}");
    assert_eq!(summary["records_total"], left, "{summary}");
    assert_eq!(spool_files(&spool), Vec::<String>::new());

    let topic = topics.topic("click");
    let result = tokio::task::block_in_place(|| {
        audit(
            "drain interrupted twice",
            2,
            &broker.brokers(),
            &topic,
            &ledger,
        )
    });
    println!("{}", serde_json::to_string(&result).unwrap());
    assert_eq!(
        result.acked_but_missing,
        0,
        "{}",
        serde_json::to_string(&result).unwrap()
    );
}

/// A spool made record by record: inspect reports its segments, checkpoint, pending records
/// per topic, oldest age, torn tail, quarantine and unreadable files, and changes no byte (text
/// and JSON, also with a torn tail it must not cut). Then a drain treats it as the gateway
/// would: the torn tail is cut, the unreadable segment set aside, the record Kafka refuses for
/// good (too large) quarantined, everything else delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_reports_a_known_spool_without_changing_it_and_drain_quarantines_like_the_gateway()
{
    use eventpipe::sink::spool::{encode_body, quarantine, Content, Quarantined};
    use eventpipe::sink::spool::{Format, FrameKind, Item, Spool, SpoolOptions};
    use eventpipe::sink::{Record, RecordKind};
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("spool");
    let topics = Topics::unique();
    let (page_view, click) = (topics.topic("page_view"), topics.topic("click"));
    let record = |topic: &str, i: usize, payload: usize| Record {
        topic: topic.into(),
        key: Some(format!("v-{i}").into_bytes()),
        payload: vec![b'x'; payload],
        headers: vec![("schema", "x/1".into()), ("event_id", format!("id-{i}"))],
        kind: RecordKind::Event { client_id: None },
    };
    let spool = Spool::open(SpoolOptions {
        dir: dir.clone(),
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(3600),
        segment_bytes: 1 << 30,
        seal_after: Duration::from_secs(3600),
        io_error_backoff: Duration::from_secs(1),
    })
    .unwrap();
    // Segment 1: five page views, three clicks, one 2 MB click (over message.max.bytes).
    let mut batch: Vec<Record> = (0..5).map(|i| record(&page_view, i, 10)).collect();
    batch.extend((5..8).map(|i| record(&click, i, 10)));
    spool.append(&batch).await.unwrap();
    spool.append(&[record(&click, 8, 2_000_000)]).await.unwrap();
    spool.close().await;

    // Replay already sent the first two page views: checkpoint after them.
    let seg = dir.join(format!("{:020}.seg", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let (format, data) = Format::of(&bytes);
    let starts: Vec<usize> = format
        .items(&bytes, data, bytes.len())
        .filter_map(|i| match i {
            Item::Frame(f) if f.kind == FrameKind::Record => Some(f.start),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 9);
    std::fs::write(dir.join(format!("{:020}.ack", 1)), starts[2].to_string()).unwrap();
    // A crash's torn tail, a segment whose header is gone, an earlier quarantine, a file set
    // aside by an earlier start-up.
    bytes.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::write(dir.join(format!("{:020}.seg", 2)), [0x5Au8; 300]).unwrap();
    let mut body = Vec::new();
    encode_body(&record(&click, 99, 3), 1_700_000_000_000, &mut body);
    quarantine::append(
        &dir,
        1,
        &[Quarantined {
            quarantined_ms: 1_700_000_001_000,
            source_seq: 1,
            source_offset: 16,
            source_len: 60,
            reason: "corrupt".into(),
            content: Content::Raw(vec![1; 60]),
        }],
    )
    .unwrap();
    std::fs::write(
        dir.join("quarantine/00000000000000000000.seg.1.unreadable"),
        [0u8; 10],
    )
    .unwrap();

    let before = snapshot(&dir);
    let report = inspect(&dir);
    let table = eventpipe()
        .args(["spool", "inspect", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let after = snapshot(&dir);
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|f| before.get(*f) != after.get(*f))
        .collect();
    assert!(changed.is_empty(), "inspect changed {changed:?}");
    assert!(table.status.success(), "{}", text(&table.stderr));

    assert_eq!(report["lock"], "free", "{report}");
    assert_eq!(report["pending_records"], 7, "{report}");
    let want_topics = serde_json::json!({ page_view.clone(): 3, click.clone(): 4 });
    assert_eq!(report["topics"], want_topics, "{report}");
    let segments = report["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 1, "{report}");
    let s = &segments[0];
    assert_eq!(s["name"], "00000000000000000001.seg");
    assert_eq!(
        (&s["records"], &s["pending_records"]),
        (&9.into(), &7.into()),
        "{s}"
    );
    assert_eq!(s["checkpoint"], starts[2] as u64, "{s}");
    assert_eq!(s["torn_tail_bytes"], 37, "{s}");
    assert_eq!(s["bytes"], bytes.len() as u64, "{s}");
    assert!(
        report["oldest_age_secs"].as_f64().unwrap() >= 0.0,
        "{report}"
    );
    assert_eq!(report["quarantine"]["entries"], 1, "{report}");
    assert_eq!(
        report["quarantine"]["by_reason"],
        serde_json::json!({"corrupt": 1})
    );
    let unreadable: Vec<&str> = report["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        unreadable,
        [
            "00000000000000000002.seg",
            "quarantine/00000000000000000000.seg.1.unreadable"
        ],
        "{report}"
    );
    let table = text(&table.stdout);
    for want in [
        "not locked",
        "00000000000000000001.seg",
        "torn tail 37 B",
        "pending: 7 records",
        &format!("topic {click}: 4"),
        "quarantined: 1 entries",
        "unreadable: 00000000000000000002.seg",
    ] {
        assert!(table.contains(want), "{want:?} not in:\n{table}");
    }

    let broker = Broker::memory();
    topics.create(&broker.brokers()).await;
    let out = drain(&dir, &broker.brokers(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["outcome"], "drained", "{summary}");
    assert_eq!(
        (&summary["replayed"], &summary["quarantined"]),
        (&6.into(), &1.into()),
        "{summary}"
    );
    assert_eq!(
        summary["quarantined_by_reason"],
        serde_json::json!({"kafka_rejected:msg_size_too_large": 1}),
        "{summary}"
    );
    assert_eq!(
        summary["set_aside"].as_array().unwrap().len(),
        1,
        "{summary}"
    );
    // These payloads are not Thrift: no record names its host, so nothing is audited.
    assert_eq!(summary["audit"]["status"], "skipped", "{summary}");
    let after = inspect(&dir);
    assert_eq!(after["pending_records"], 0, "{after}");
    assert_eq!(after["segments"], serde_json::json!([]), "{after}");
    assert_eq!(after["quarantine"]["entries"], 2, "{after}");
    assert_eq!(after["unreadable"].as_array().unwrap().len(), 2, "{after}");
    assert_eq!(spool_files(&dir), Vec::<String>::new());
    // The payloads are not Thrift: read event ids only.
    let found = Command::new("python3")
        .arg(common::root().join("tests/py/consume.py"))
        .args([
            "--brokers",
            &broker.brokers(),
            "--topic",
            &page_view,
            "--topic",
            &click,
        ])
        .args([
            "--ids-only",
            "--expect",
            "6",
            "--idle",
            "1.5",
            "--timeout",
            "60",
        ])
        .output()
        .expect("python3 for the independent consumer");
    assert!(
        found.status.success(),
        "consumer: {} (pip install confluent-kafka thriftpy2)",
        text(&found.stderr)
    );
    let mut ids: Vec<String> = text(&found.stdout)
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, id)| id.to_owned()))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids,
        ["id-2", "id-3", "id-4", "id-5", "id-6", "id-7"],
        "{}",
        text(&found.stdout)
    );
}
