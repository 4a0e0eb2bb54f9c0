//! Spool tests: codec, torn tails, limits, group commit, and a model-based property test of the
//! promise (every record reported written is delivered at least once, never garbage).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use proptest::prelude::*;

use super::segment::segment_path;
use super::*;
use crate::sink::{BoxFuture, RecordKind};

fn opts(dir: &Path) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_owned(),
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(3600),
        segment_bytes: 4096,
        seal_after: Duration::from_millis(20),
        io_error_backoff: Duration::from_millis(100),
    }
}

fn record(i: u32) -> Record {
    Record {
        topic: "events.page_view".into(),
        key: if i.is_multiple_of(3) {
            None
        } else {
            Some(format!("k{i}").into_bytes())
        },
        payload: format!("payload-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes(),
        headers: vec![
            ("schema", "page_view/1".into()),
            ("event_id", format!("id-{i}")),
        ],
        kind: RecordKind::Event { client_id: None },
    }
}

fn id_of(r: &Record) -> String {
    r.headers
        .iter()
        .find(|(k, _)| *k == "event_id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A Kafka stand-in: acknowledges records unless told to fail.
#[derive(Default)]
struct FakeKafka {
    delivered: Mutex<Vec<Record>>,
    down: std::sync::atomic::AtomicBool,
}

impl ReplayTarget for FakeKafka {
    fn produce<'a>(
        &'a self,
        records: &'a [Record],
        _deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, ReplayResult> {
        Box::pin(async move {
            if self.down.load(Ordering::Relaxed) {
                return ReplayResult {
                    retry: (0..records.len()).collect(),
                    refused: Vec::new(),
                };
            }
            self.delivered
                .lock()
                .unwrap()
                .extend(records.iter().cloned());
            ReplayResult::default()
        })
    }
}

fn replay_opts() -> ReplayOptions {
    ReplayOptions {
        batch_records: 7,
        batch_bytes: 1 << 20,
        ack_timeout: Duration::from_millis(100),
        max_backoff: Duration::from_millis(20),
    }
}

async fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[test]
fn codec_round_trips_and_rejects_damage() {
    let mut buf = Vec::new();
    for i in 0..10 {
        encode_record(&record(i), 1000 + i as i64, &mut buf);
    }
    let result = scan(&buf, 0);
    assert_eq!(
        (result.records, result.valid_len, result.first_ms),
        (10, buf.len() as u64, Some(1000))
    );
    let (body, _) = segment::frame_at(&buf, 0).unwrap();
    let (r, ms) = decode_record(body).unwrap();
    assert_eq!(
        (r.topic.as_ref(), r.key.as_ref(), ms),
        ("events.page_view", None, 1000)
    );
    assert_eq!(r.headers, record(0).headers);
    // Every truncation point inside the last record cuts exactly that record.
    let last_start = {
        let mut b = Vec::new();
        for i in 0..9 {
            encode_record(&record(i), 1000 + i as i64, &mut b);
        }
        b.len()
    };
    for cut in last_start..buf.len() {
        assert_eq!(scan(&buf[..cut], 0).valid_len, last_start as u64);
    }
    // A flipped bit anywhere in the last record is caught by the checksum (or the length check).
    for pos in last_start..buf.len() {
        let mut damaged = buf.clone();
        damaged[pos] ^= 0x40;
        assert_eq!(
            scan(&damaged, 0).valid_len,
            last_start as u64,
            "flip at {pos}"
        );
    }
}

#[tokio::test]
async fn appended_records_replay_in_order_and_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    let kafka = Arc::new(FakeKafka::default());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    for chunk in (0..200).collect::<Vec<_>>().chunks(13) {
        let records: Vec<Record> = chunk.iter().map(|&i| record(i)).collect();
        spool.append(&records).await.unwrap();
    }
    assert!(wait_until(|| kafka.delivered.lock().unwrap().len() == 200).await);
    let ids: Vec<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
    let want: Vec<String> = (0..200).map(|i| format!("id-{i}")).collect();
    assert_eq!(ids, want);
    assert!(
        wait_until(|| spool.stats().bytes == 0).await,
        "bytes left: {:?}",
        spool.stats()
    );
    let segs = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".seg")
    });
    assert_eq!(segs.count(), 0, "replayed segments are deleted");
    spool.close().await;
    replayer.await.unwrap();
}

#[tokio::test]
async fn records_survive_a_crash_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    spool
        .append(&(0..5).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    spool.crash().await;
    // The crash interrupted a further append half way through its write.
    let mut partial = Vec::new();
    encode_record(&record(99), 1, &mut partial);
    let seg = segment_path(dir.path(), 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&partial[..partial.len() / 2]).unwrap();
    drop(f);

    let spool = Spool::open(opts(dir.path())).unwrap();
    assert_eq!(spool.stats().records, 5);
    let kafka = Arc::new(FakeKafka::default());
    let _replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    // New appends go to a new segment, after the recovered one.
    spool.append(&[record(5)]).await.unwrap();
    assert!(wait_until(|| kafka.delivered.lock().unwrap().len() == 6).await);
    let ids: Vec<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
    assert_eq!(ids, (0..6).map(|i| format!("id-{i}")).collect::<Vec<_>>());
    spool.close().await;
}

#[tokio::test]
async fn a_directory_has_one_owner() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    let err = Spool::open(opts(dir.path()))
        .err()
        .expect("second open must fail");
    assert!(err.to_string().contains("locked"), "{err}");
    spool.close().await;
    Spool::open(opts(dir.path())).unwrap().close().await;
}

#[tokio::test]
async fn full_and_too_old_spools_refuse_appends() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        max_bytes: 2000,
        ..opts(dir.path())
    })
    .unwrap();
    let mut appended = 0;
    let err = loop {
        match spool.append(&[record(appended)]).await {
            Ok(()) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 1000);
    };
    assert!(matches!(err, SinkError::SpoolFull), "{err:?}");
    assert!(spool.stats().bytes <= 2000);
    assert!(spool.retry_after_secs() >= 1);
    spool.close().await;

    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        max_age: Duration::from_millis(50),
        ..opts(dir.path())
    })
    .unwrap();
    spool.append(&[record(1)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let err = spool.append(&[record(2)]).await.unwrap_err();
    assert!(matches!(err, SinkError::SpoolTooOld), "{err:?}");
    spool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        segment_bytes: 64 << 20,
        ..opts(dir.path())
    })
    .unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move { spool.append(&[record(i)]).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let commits = spool.commits();
    assert!(
        commits < 200,
        "200 concurrent appends took {commits} fsyncs: no group commit"
    );
    assert_eq!(spool.stats().records, 200);
    spool.close().await;
}

#[tokio::test]
async fn replay_waits_out_a_kafka_outage_without_losing_or_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    let kafka = Arc::new(FakeKafka::default());
    kafka.down.store(true, Ordering::Relaxed);
    let _replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    spool
        .append(&(0..30).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(kafka.delivered.lock().unwrap().is_empty());
    assert_eq!(spool.stats().records, 30);
    kafka.down.store(false, Ordering::Relaxed);
    assert!(wait_until(|| kafka.delivered.lock().unwrap().len() == 30).await);
    spool.close().await;
}

/// Model-based: random appends, outages, crashes (with torn tails) and restarts. Whatever the
/// interleaving, every record the spool reported written is delivered at least once, nothing
/// that was never appended is delivered, and first deliveries come in append order.
#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    KafkaDown,
    KafkaUp,
    Pause,
    Crash { torn_bytes: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Append),
        1 => Just(Op::KafkaDown),
        1 => Just(Op::KafkaUp),
        2 => Just(Op::Pause),
        1 => (0u8..60).prop_map(|torn_bytes| Op::Crash { torn_bytes }),
    ]
}

async fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Arc::new(FakeKafka::default());
    let mut spool = Spool::open(opts(dir.path())).unwrap();
    let mut replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    let mut acked: Vec<String> = Vec::new();
    let mut next = 0u32;
    for op in ops {
        match op {
            Op::Append(n) => {
                let records: Vec<Record> = (next..next + n as u32).map(record).collect();
                next += n as u32;
                spool
                    .append(&records)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                acked.extend(records.iter().map(id_of));
            }
            Op::KafkaDown => kafka.down.store(true, Ordering::Relaxed),
            Op::KafkaUp => kafka.down.store(false, Ordering::Relaxed),
            Op::Pause => tokio::time::sleep(Duration::from_millis(15)).await,
            Op::Crash { torn_bytes } => {
                spool.crash().await;
                let _ = replayer.await;
                // A write that was in progress leaves part of a record that no client was
                // promised: it must never come back.
                if torn_bytes > 0 {
                    let mut partial = Vec::new();
                    encode_record(&record(1_000_000 + next), 1, &mut partial);
                    let last = std::fs::read_dir(dir.path())
                        .unwrap()
                        .filter_map(|e| {
                            e.unwrap()
                                .file_name()
                                .to_string_lossy()
                                .strip_suffix(".seg")?
                                .parse::<u64>()
                                .ok()
                        })
                        .max();
                    let seg = segment_path(dir.path(), last.unwrap_or(1_000_000));
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&seg)
                        .unwrap();
                    f.write_all(&partial[..(torn_bytes as usize).min(partial.len() - 1)])
                        .unwrap();
                }
                spool = Spool::open(opts(dir.path())).unwrap();
                replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
            }
        }
    }
    kafka.down.store(false, Ordering::Relaxed);
    spool.seal().await.unwrap();
    let all_delivered = wait_until(|| {
        let got: HashSet<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
        acked.iter().all(|id| got.contains(id))
    })
    .await;
    spool.close().await;
    let _ = replayer.await;
    let delivered: Vec<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
    prop_assert!(all_delivered, "acked but never delivered");
    let acked_set: HashSet<&String> = acked.iter().collect();
    for id in &delivered {
        prop_assert!(
            acked_set.contains(id),
            "delivered something never appended: {id}"
        );
    }
    let mut seen = HashSet::new();
    let firsts: Vec<&String> = delivered.iter().filter(|id| seen.insert(*id)).collect();
    let expected: Vec<&String> = acked.iter().collect();
    prop_assert_eq!(firsts, expected, "first deliveries out of append order");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 50, ..ProptestConfig::default() })]
    #[test]
    fn spool_keeps_its_promise_under_crashes_and_outages(ops in prop::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_model(ops))?;
    }
}
