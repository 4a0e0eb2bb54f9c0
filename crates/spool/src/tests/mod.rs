//! Spool tests: codec, torn tails and corrupt middles, limits, group commit, the quarantine, and
//! (in `model`) a model-based property test of the promise.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use super::format::{encode_body, encode_quarantined, SEGMENT_HEADER};
use super::segment::{read_ack, segment_path};
use super::*;

fn opts(dir: &Path) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_owned(),
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(3600),
        segment_bytes: 4096,
        seal_after: Duration::from_millis(20),
        io_error_backoff: Duration::from_millis(100),
        metrics: MetricNames::GATEWAY,
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
            ("schema".into(), "page_view/1".into()),
            ("event_id".into(), format!("id-{i}")),
        ],
    }
}

fn id_of(r: &Record) -> String {
    r.headers
        .iter()
        .find(|(k, _)| *k == "event_id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A Kafka stand-in: acknowledges records unless told to fail (all, while down; for good, the
/// event ids in `refuse`).
#[derive(Default)]
struct FakeKafka {
    delivered: Mutex<Vec<Record>>,
    down: std::sync::atomic::AtomicBool,
    refuse: Mutex<HashSet<String>>,
}

const REFUSAL: &str = "kafka_rejected:msg_size_too_large";

impl ReplayTarget for FakeKafka {
    type Item = Record;
    fn decode(&self, record: Record) -> Result<Record, String> {
        Ok(record)
    }
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
            let refuse = self.refuse.lock().unwrap();
            let mut result = ReplayResult::default();
            let mut delivered = self.delivered.lock().unwrap();
            for (i, r) in records.iter().enumerate() {
                if refuse.contains(&id_of(r)) {
                    result.refused.push((i, REFUSAL.to_owned()));
                } else {
                    delivered.push(r.clone());
                }
            }
            result
        })
    }
}

/// The checked format of segment `seq` (its own nonce), as the writer made it.
fn format_of(dir: &Path, seq: u64) -> Format {
    Format::of(&std::fs::read(segment_path(dir, seq)).unwrap_or_default()).0
}

/// Frames of kind record in a file: (start, end, event id).
fn record_frames(bytes: &[u8]) -> Vec<(usize, usize, String)> {
    let (format, data) = Format::of(bytes);
    format
        .items(bytes, data, bytes.len())
        .filter_map(|i| match i {
            Item::Frame(f) if f.kind == FrameKind::Record => {
                Some((f.start, f.end, id_of(&decode_record(f.body)?.0)))
            }
            _ => None,
        })
        .collect()
}

/// Quarantined entries: (event id of refused records, (segment, offset) of corrupt ranges).
fn quarantined(dir: &Path) -> (Vec<String>, Vec<(u64, u64)>) {
    let mut refused = Vec::new();
    let mut corrupt = Vec::new();
    for l in quarantine::list(dir).unwrap() {
        match &l.entry.content {
            Content::Record(body) => {
                assert_eq!(l.entry.reason, REFUSAL);
                refused.push(id_of(&decode_record(body).unwrap().0));
            }
            Content::Raw(_) => {
                assert_eq!(l.entry.reason, "corrupt");
                corrupt.push((l.entry.source_seq, l.entry.source_offset));
            }
        }
    }
    (refused, corrupt)
}

fn replay_opts() -> ReplayOptions {
    ReplayOptions {
        batch_records: 7,
        batch_bytes: 1 << 20,
        ack_timeout: Duration::from_millis(100),
        max_backoff: Duration::from_millis(20),
        doubtful_refusal_grace: Duration::ZERO,
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

/// `n` records framed in `format`, a commit marker after each group of `group` (0: none).
fn segment_bytes(format: &Format, n: u32, group: u32) -> (Vec<u8>, Vec<usize>) {
    let mut buf = if format.is_legacy() {
        Vec::new()
    } else {
        format.header().to_vec()
    };
    let mut starts = Vec::new();
    for i in 0..n {
        starts.push(buf.len());
        encode_record(format, &record(i), 1000 + i as i64, &mut buf);
        if group > 0 && (i + 1) % group == 0 {
            format.push_commit(buf.len() as u64, &mut buf);
        }
    }
    (buf, starts)
}

#[test]
fn codec_round_trips_and_cuts_an_uncommitted_tail() {
    for format in [Format::fresh(), Format::legacy()] {
        let (buf, starts) = segment_bytes(&format, 10, 0);
        let result = scan(&buf, 0);
        assert_eq!(
            (result.records, result.valid_len, result.first_ms),
            (10, buf.len() as u64, Some(1000))
        );
        let f = format.frame_at(&buf, starts[0]).unwrap();
        let (r, ms) = decode_record(f.body).unwrap();
        assert_eq!(
            (r.topic.as_ref(), r.key.as_ref(), ms),
            ("events.page_view", None, 1000)
        );
        assert_eq!(r.headers, record(0).headers);
        // No commit marker after the last record: every truncation point inside it cuts exactly
        // that record, and so does a flipped bit anywhere in it.
        let last = starts[9];
        for cut in last..buf.len() {
            assert_eq!(scan(&buf[..cut], 0).valid_len, last as u64);
        }
        for pos in last..buf.len() {
            let mut damaged = buf.clone();
            damaged[pos] ^= 0x40;
            let r = scan(&damaged, 0);
            assert_eq!((r.valid_len, r.records), (last as u64, 9), "flip at {pos}");
        }
    }
}

#[test]
fn damage_before_a_commit_marker_is_a_corrupt_middle_at_every_byte() {
    let format = Format::fresh();
    // Groups of 3: records 0-2, marker, 3-5, marker, 6-8, marker.
    let (buf, starts) = segment_bytes(&format, 9, 3);
    let whole = scan(&buf, 0);
    assert_eq!((whole.records, whole.valid_len), (9, buf.len() as u64));
    assert!(whole.corrupt.is_empty());
    // Record 4, in the middle of a committed group.
    let (from, to) = (starts[4], starts[5]);
    for pos in from..to {
        let mut damaged = buf.clone();
        damaged[pos] ^= 0x40;
        let r = scan(&damaged, 0);
        assert_eq!(
            (r.valid_len, r.records, r.corrupt.clone()),
            (buf.len() as u64, 8, vec![(from as u64, to as u64)]),
            "flip at {pos}"
        );
        let ids: Vec<String> = record_frames(&damaged).into_iter().map(|f| f.2).collect();
        assert!(
            !ids.contains(&"id-4".to_string()) && ids.len() == 8,
            "{ids:?}"
        );
    }
    // The last record of the last group is committed too (its marker follows it).
    let mut damaged = buf.clone();
    damaged[starts[8] + 20] ^= 1;
    let r = scan(&damaged, 0);
    assert_eq!((r.valid_len, r.records), (buf.len() as u64, 8));
    assert_eq!(r.corrupt.len(), 1);
    // A damaged last marker loses nothing: the records before it are a valid prefix.
    let mut damaged = buf.clone();
    let n = damaged.len();
    damaged[n - 3] ^= 1;
    let r = scan(&damaged, 0);
    assert_eq!((r.records, r.corrupt.len()), (9, 0));
    assert_eq!(r.valid_len, (n - format.commit_len()) as u64);
    // Client bytes that look like a frame cannot pass for one without the nonce.
    let mut forged = Vec::new();
    encode_record(&Format::fresh(), &record(77), 1, &mut forged);
    assert!(format.frame_at(&forged, 0).is_none());
}

#[test]
fn quarantine_entries_round_trip_through_the_segment_reader() {
    let format = Format::fresh();
    let mut body = Vec::new();
    encode_body(&record(5), 1234, &mut body);
    let entries = [
        Quarantined {
            quarantined_ms: 99,
            source_seq: 7,
            source_offset: 16,
            source_len: 80,
            reason: REFUSAL.into(),
            content: Content::Record(body),
        },
        Quarantined {
            quarantined_ms: 100,
            source_seq: 7,
            source_offset: 96,
            source_len: 5,
            reason: "corrupt".into(),
            content: Content::Raw(vec![1, 2, 3, 4, 5]),
        },
    ];
    let mut buf = format.header().to_vec();
    for q in &entries {
        format.push_frame(FrameKind::Quarantined, &mut buf, |o| {
            encode_quarantined(q, o)
        });
    }
    let got: Vec<Quarantined> = format
        .items(&buf, SEGMENT_HEADER, buf.len())
        .map(|i| match i {
            Item::Frame(f) => decode_quarantined(f.body).unwrap(),
            Item::Bad { .. } => panic!("bad frame"),
        })
        .collect();
    assert_eq!(got, entries);
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
    encode_record(&format_of(dir.path(), 1), &record(99), 1, &mut partial);
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
    assert!(matches!(err, SpoolError::Full), "{err:?}");
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
    assert!(matches!(err, SpoolError::TooOld), "{err:?}");
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

#[tokio::test]
async fn a_refused_record_is_quarantined_and_the_records_after_it_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    let kafka = Arc::new(FakeKafka::default());
    kafka.refuse.lock().unwrap().insert("id-3".into());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    spool
        .append(&(0..20).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(wait_until(|| spool.is_empty() && spool.stats().bytes == 0).await);
    let ids: Vec<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
    let want: Vec<String> = (0..20)
        .filter(|i| *i != 3)
        .map(|i| format!("id-{i}"))
        .collect();
    assert_eq!(
        ids, want,
        "records after the refused one are delivered, in order"
    );
    assert_eq!(quarantined(dir.path()), (vec!["id-3".to_string()], vec![]));
    spool.close().await;
    replayer.await.unwrap();
}

#[tokio::test]
async fn quarantine_survives_restart_is_listed_and_not_counted_as_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    let kafka = Arc::new(FakeKafka::default());
    kafka.refuse.lock().unwrap().insert("id-1".into());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    spool
        .append(&(0..3).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(wait_until(|| kafka.delivered.lock().unwrap().len() == 2 && spool.is_empty()).await);
    spool.crash().await;
    replayer.await.unwrap();

    let spool = Spool::open(opts(dir.path())).unwrap();
    assert_eq!((spool.stats().bytes, spool.stats().records), (0, 0));
    let listed = quarantine::list(dir.path()).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let e = &listed[0];
    let Content::Record(body) = &e.entry.content else {
        panic!("a refused record is quarantined whole: {e:?}")
    };
    let (r, appended_ms) = decode_record(body).unwrap();
    assert_eq!(r.header("event_id"), Some("id-1"));
    assert_eq!(r.header("schema"), Some("page_view/1"));
    assert_eq!(&*r.topic, "events.page_view");
    assert_eq!(e.entry.reason, REFUSAL);
    assert_eq!(e.entry.source_seq, 1);
    assert!(appended_ms > 0 && e.entry.source_offset > 0, "{e:?}");
    // Nothing replays it again on its own.
    let kafka = Arc::new(FakeKafka::default());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    spool.append(&[record(9)]).await.unwrap();
    assert!(wait_until(|| kafka.delivered.lock().unwrap().len() == 1).await);
    spool.close().await;
    replayer.await.unwrap();
    assert_eq!(id_of(&kafka.delivered.lock().unwrap()[0]), "id-9");
    assert_eq!(quarantine::list(dir.path()).unwrap().len(), 1);
}

#[tokio::test]
async fn an_oversize_append_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    let mut big = record(1);
    big.payload = vec![b'x'; MAX_RECORD as usize];
    let mut many_headers = record(2);
    many_headers.headers = vec![("schema".into(), String::new()); 256];
    let mut long_topic = record(3);
    long_topic.topic = "t".repeat(70_000).into();
    for bad in [big, many_headers, long_topic] {
        let err = spool.append(&[record(0), bad]).await.unwrap_err();
        assert!(matches!(err, SpoolError::Refused(_)), "{err:?}");
        assert_eq!((spool.stats().bytes, spool.stats().records), (0, 0));
    }
    // The largest record that fits is written and read back whole.
    let mut fits = record(4);
    let room = MAX_RECORD as usize - record_body_len(&fits).unwrap();
    fits.payload.resize(fits.payload.len() + room, b'y');
    spool.append(&[fits.clone()]).await.unwrap();
    spool.close().await;
    let kafka = Arc::new(FakeKafka::default());
    let spool = Spool::open(opts(dir.path())).unwrap();
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    assert!(wait_until(|| kafka.delivered.lock().unwrap().len() == 1).await);
    spool.close().await;
    replayer.await.unwrap();
    assert_eq!(kafka.delivered.lock().unwrap()[0].payload, fits.payload);
    assert!(quarantine::list(dir.path()).unwrap().is_empty());
}

#[tokio::test]
async fn a_corrupt_middle_keeps_its_neighbours_and_a_torn_tail_is_still_cut() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        segment_bytes: 1 << 20,
        seal_after: Duration::from_secs(60),
        ..opts(dir.path())
    })
    .unwrap();
    for chunk in (0..12).collect::<Vec<_>>().chunks(4) {
        spool
            .append(&chunk.iter().map(|&i| record(i)).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    spool.close().await;
    // While closed: flip a byte inside record 5 (second group), then add a torn tail.
    let seg = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&seg).unwrap();
    let frames = record_frames(&bytes);
    assert_eq!(frames.len(), 12);
    let (from, to, _) = frames[5].clone();
    bytes[(from + to) / 2] ^= 0xff;
    let committed = bytes.len();
    encode_record(&format_of(dir.path(), 1), &record(99), 1, &mut bytes);
    bytes.truncate(committed + 10);
    std::fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(opts(dir.path())).unwrap();
    assert_eq!(spool.stats().records, 11);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        committed as u64,
        "torn tail cut"
    );
    let kafka = Arc::new(FakeKafka::default());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    assert!(wait_until(|| spool.is_empty() && spool.stats().bytes == 0).await);
    spool.close().await;
    replayer.await.unwrap();
    let ids: Vec<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
    let want: Vec<String> = (0..12)
        .filter(|i| *i != 5)
        .map(|i| format!("id-{i}"))
        .collect();
    assert_eq!(ids, want);
    assert_eq!(quarantined(dir.path()), (vec![], vec![(1, from as u64)]));
    let listed = quarantine::list(dir.path()).unwrap();
    assert_eq!(listed[0].entry.source_len, (to - from) as u64);
    assert_eq!(
        listed[0].entry.content,
        Content::Raw(bytes[from..to].to_vec()),
        "the damaged bytes are kept as they were"
    );
}

#[tokio::test]
async fn legacy_segments_are_still_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, _) = segment_bytes(&Format::legacy(), 5, 0);
    bytes.extend_from_slice(&[1, 2, 3]); // a torn tail, cut as before
    std::fs::write(segment_path(dir.path(), 3), &bytes).unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    assert_eq!(spool.stats().records, 5);
    let kafka = Arc::new(FakeKafka::default());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    assert!(wait_until(|| spool.is_empty() && spool.stats().bytes == 0).await);
    spool.close().await;
    replayer.await.unwrap();
    let ids: Vec<String> = kafka.delivered.lock().unwrap().iter().map(id_of).collect();
    assert_eq!(ids, (0..5).map(|i| format!("id-{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn closing_stops_a_replayer_that_cannot_read_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    spool.append(&[record(1)]).await.unwrap();
    spool.seal().await.unwrap();
    // The sealed segment becomes unreadable (a directory where the file was).
    let seg = segment_path(dir.path(), 1);
    std::fs::remove_file(&seg).unwrap();
    std::fs::create_dir(&seg).unwrap();
    let kafka = Arc::new(FakeKafka::default());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!replayer.is_finished(), "it keeps retrying the read");
    spool.close().await;
    tokio::time::timeout(Duration::from_secs(10), replayer)
        .await
        .expect("close stops the replayer")
        .unwrap();
    assert!(kafka.delivered.lock().unwrap().is_empty());
}

mod generic;
mod model;

/// A damaged segment header (magic or nonce) makes every frame look bad; recovery must not read
/// that as a torn tail and cut the file to nothing: the whole file is set aside in the
/// quarantine directory, byte for byte.
#[tokio::test]
async fn a_segment_with_a_damaged_header_is_set_aside_whole_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        segment_bytes: 1 << 20,
        seal_after: Duration::from_secs(60),
        ..opts(dir.path())
    })
    .unwrap();
    spool
        .append(&(0..6).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    spool.close().await;
    let seg = segment_path(dir.path(), 1);
    for damaged in [3usize, 12] {
        // 3: inside the magic; 12: inside the nonce.
        let mut bytes = std::fs::read(&seg).unwrap_or_else(|_| {
            // The previous round set the file aside: write it back for this one.
            let aside = set_aside_files(dir.path());
            std::fs::read(&aside[0]).unwrap()
        });
        for f in set_aside_files(dir.path()) {
            std::fs::remove_file(f).unwrap();
        }
        let original = bytes.clone();
        bytes[damaged] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(opts(dir.path())).unwrap();
        assert_eq!(spool.stats().records, 0);
        spool.close().await;
        assert!(
            !seg.exists(),
            "the unreadable segment is no longer replayed"
        );
        let aside = set_aside_files(dir.path());
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes, "kept whole");
        let mut repaired = bytes.clone();
        repaired[damaged] ^= 0xff;
        assert_eq!(repaired, original);
        std::fs::write(&aside[0], &repaired).unwrap();
    }
}

fn set_aside_files(spool_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(spool_dir.join("quarantine"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".unreadable"))
                .collect()
        })
        .unwrap_or_default()
}

/// "Unknown topic" can be a broker's passing view during a restart: such a refusal is retried
/// for `doubtful_refusal_grace` before anything is quarantined, so a topic that comes back in
/// time loses nothing to the quarantine. After the grace, it is quarantined like any refusal.
#[tokio::test]
async fn an_unknown_topic_refusal_is_retried_for_a_grace_before_quarantine() {
    struct Flaky {
        inner: FakeKafka,
        refusals_left: std::sync::atomic::AtomicUsize,
    }
    impl ReplayTarget for Flaky {
        type Item = Record;
        fn decode(&self, record: Record) -> Result<Record, String> {
            Ok(record)
        }
        fn produce<'a>(
            &'a self,
            records: &'a [Record],
            deadline: tokio::time::Instant,
        ) -> BoxFuture<'a, ReplayResult> {
            Box::pin(async move {
                let left = self.refusals_left.load(Ordering::Relaxed);
                if left > 0 {
                    self.refusals_left.store(left - 1, Ordering::Relaxed);
                    return ReplayResult {
                        retry: Vec::new(),
                        refused: (0..records.len())
                            .map(|i| (i, "kafka_rejected:unknown_topic_or_part".to_owned()))
                            .collect(),
                    };
                }
                self.inner.produce(records, deadline).await
            })
        }
    }
    for (grace, want_delivered) in [(Duration::from_secs(30), 5), (Duration::ZERO, 0)] {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(opts(dir.path())).unwrap();
        let kafka = Arc::new(Flaky {
            inner: FakeKafka::default(),
            refusals_left: 3.into(),
        });
        let opts = ReplayOptions {
            doubtful_refusal_grace: grace,
            ..replay_opts()
        };
        let replayer = spawn_replayer(&spool, kafka.clone(), opts);
        spool
            .append(&(0..5).map(record).collect::<Vec<_>>())
            .await
            .unwrap();
        assert!(wait_until(|| spool.is_empty() && spool.stats().bytes == 0).await);
        let delivered = kafka.inner.delivered.lock().unwrap().len();
        assert_eq!(delivered, want_delivered, "grace {grace:?}");
        let listed = quarantine::list(dir.path()).unwrap();
        assert_eq!(listed.len(), 5 - want_delivered);
        assert!(listed
            .iter()
            .all(|l| l.entry.reason == "kafka_rejected:unknown_topic_or_part"));
        spool.close().await;
        replayer.await.unwrap();
    }
}

/// When the quarantine cannot be written (here: a file stands where its directory should be, as
/// a full or broken disk would refuse it), a refused record is never dropped: it stays in the
/// spool and is tried again, and it is quarantined once the disk takes it.
#[tokio::test]
async fn a_refused_record_stays_spooled_while_the_quarantine_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("quarantine");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let spool = Spool::open(opts(dir.path())).unwrap();
    let kafka = Arc::new(FakeKafka::default());
    kafka.refuse.lock().unwrap().insert("id-2".into());
    let replayer = spawn_replayer(&spool, kafka.clone(), replay_opts());
    spool
        .append(&(0..5).map(record).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(wait_until(|| kafka.delivered.lock().unwrap().len() == 4).await);
    // Several refusal rounds later, the record is still waiting, not lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!spool.is_empty(), "a refused record was dropped");
    assert_eq!(spool.stats().records, 1);
    std::fs::remove_file(&blocker).unwrap();
    assert!(wait_until(|| spool.is_empty() && spool.stats().bytes == 0).await);
    assert_eq!(quarantined(dir.path()), (vec!["id-2".to_string()], vec![]));
    spool.close().await;
    replayer.await.unwrap();
}
