//! The spool's promise as a model-based property test: random appends, outages, permanent
//! refusals, crashes with torn tails, corrupted middles and restarts.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

use super::*;

/// Model-based: random appends, outages, permanent refusals, crashes (with torn tails),
/// corrupted middles and restarts. Whatever the interleaving, every record the spool reported
/// written is delivered or quarantined — exactly the refused and the corrupted ones are
/// quarantined, nothing else is lost — nothing that was never appended is delivered, and first
/// deliveries come in append order.
#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    KafkaDown,
    KafkaUp,
    Pause,
    Crash {
        torn_bytes: u8,
    },
    /// Kafka refuses the record appended `i` records from now, for good.
    RefusePermanently(u8),
    /// With the spool stopped, flip one byte of a committed record not yet replayed.
    CorruptMiddle(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..20).prop_map(Op::Append),
        1 => Just(Op::KafkaDown),
        1 => Just(Op::KafkaUp),
        2 => Just(Op::Pause),
        1 => (0u8..60).prop_map(|torn_bytes| Op::Crash { torn_bytes }),
        1 => (0u8..20).prop_map(Op::RefusePermanently),
        1 => any::<u16>().prop_map(Op::CorruptMiddle),
    ]
}

/// Segment files on disk, oldest first.
fn segment_seqs(dir: &Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .strip_suffix(".seg")?
                .parse::<u64>()
                .ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Flips one byte of a record that is committed (a commit marker follows it), at or after its
/// segment's checkpoint, and neither damaged before nor next to a damaged one (adjacent damage
/// is one range). Returns (segment, offset, end, event id).
fn corrupt_one(
    dir: &Path,
    seed: u16,
    done: &HashMap<(u64, u64), u64>,
) -> Option<(u64, u64, u64, String)> {
    let mut candidates = Vec::new();
    for seq in segment_seqs(dir) {
        let bytes = std::fs::read(segment_path(dir, seq)).unwrap();
        let (format, data) = Format::of(&bytes);
        let committed = format
            .items(&bytes, data, bytes.len())
            .filter_map(|i| match i {
                Item::Frame(f) if f.kind == FrameKind::Commit => Some(f.start),
                _ => None,
            })
            .last()
            .unwrap_or(0);
        let ack = read_ack(dir, seq) as usize;
        for (start, end, id) in record_frames(&bytes) {
            let touches = done
                .iter()
                .any(|((s, from), to)| *s == seq && *from < end as u64 + 1 && start as u64 <= *to);
            if end <= committed && start >= ack && !touches {
                candidates.push((seq, start, end, id));
            }
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (seq, start, end, id) = candidates[seed as usize % candidates.len()].clone();
    let path = segment_path(dir, seq);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[start + (seed as usize / 7) % (end - start)] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    Some((seq, start as u64, end as u64, id))
}

async fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let kafka = Arc::new(FakeKafka::default());
    let mut spool = Spool::open(opts(dir.path())).unwrap();
    let mut replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    let mut acked: Vec<String> = Vec::new();
    let mut damaged: HashMap<(u64, u64), u64> = HashMap::new();
    let mut corrupted_ids: HashSet<String> = HashSet::new();
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
            Op::RefusePermanently(i) => {
                let id = id_of(&record(next + i as u32));
                kafka.refuse.lock().unwrap().insert(id);
            }
            Op::CorruptMiddle(seed) => {
                spool.crash().await;
                let _ = replayer.await;
                if let Some((seq, offset, end, id)) = corrupt_one(dir.path(), seed, &damaged) {
                    damaged.insert((seq, offset), end);
                    corrupted_ids.insert(id);
                }
                spool = Spool::open(opts(dir.path())).unwrap();
                replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
            }
            Op::Crash { torn_bytes } => {
                spool.crash().await;
                let _ = replayer.await;
                // A write that was in progress leaves part of a record that no client was
                // promised: it must never come back.
                if torn_bytes > 0 {
                    let last = segment_seqs(dir.path()).last().copied();
                    let seq = last.unwrap_or(1_000_000);
                    let mut partial = Vec::new();
                    encode_record(
                        &format_of(dir.path(), seq),
                        &record(1_000_000 + next),
                        1,
                        &mut partial,
                    );
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(segment_path(dir.path(), seq))
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
    let corrupted: HashSet<(u64, u64)> = damaged.keys().copied().collect();
    let refused: HashSet<String> = kafka.refuse.lock().unwrap().clone();
    let acked_set: HashSet<&String> = acked.iter().collect();
    // Must be delivered: everything acknowledged except what was refused or damaged.
    let must_deliver: Vec<&String> = acked
        .iter()
        .filter(|id| !refused.contains(*id) && !corrupted_ids.contains(*id))
        .collect();
    // Must be quarantined as refused: refused and acknowledged, unless damaged first.
    let must_refuse: HashSet<String> = refused
        .iter()
        .filter(|id| acked_set.contains(id) && !corrupted_ids.contains(*id))
        .cloned()
        .collect();
    let settled = wait_until(|| {
        let got: HashSet<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
        let (q_refused, q_corrupt) = quarantined(dir.path());
        let q_refused: HashSet<String> = q_refused.into_iter().collect();
        let q_corrupt: HashSet<(u64, u64)> = q_corrupt.into_iter().collect();
        must_deliver.iter().all(|id| got.contains(*id))
            && must_refuse.is_subset(&q_refused)
            && corrupted.is_subset(&q_corrupt)
    })
    .await;
    spool.close().await;
    let _ = replayer.await;
    let delivered: Vec<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
    prop_assert!(settled, "acked but neither delivered nor quarantined");
    for id in &delivered {
        prop_assert!(
            acked_set.contains(id),
            "delivered something never appended: {id}"
        );
        prop_assert!(!refused.contains(id), "delivered a refused record: {id}");
    }
    let (q_refused, q_corrupt) = quarantined(dir.path());
    let q_refused: HashSet<String> = q_refused.into_iter().collect();
    let q_corrupt: HashSet<(u64, u64)> = q_corrupt.into_iter().collect();
    // Exactly the refused and the damaged ones are quarantined (a record refused and later
    // damaged may be in either place).
    for id in &q_refused {
        prop_assert!(
            refused.contains(id) && acked_set.contains(id),
            "quarantined a record that was not refused: {id}"
        );
    }
    prop_assert_eq!(&q_corrupt, &corrupted, "quarantined damage != damage done");
    let mut seen = HashSet::new();
    let firsts: Vec<&String> = delivered
        .iter()
        .filter(|id| !corrupted_ids.contains(*id) && seen.insert(*id))
        .collect();
    prop_assert_eq!(firsts, must_deliver, "first deliveries out of append order");
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
