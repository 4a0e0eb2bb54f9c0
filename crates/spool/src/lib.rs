//! The spool: a local write-ahead log that makes "2xx means durable" true while Kafka is slow,
//! down, or refusing writes.
//!
//! This crate (`eventpipe-spool`) is shared by the gateway (which spools what Kafka could not
//! take in time, and replays it to Kafka) and the client library `eventpipe-client` (which
//! spills what its in-memory queue cannot hold, and replays it to the gateway). Below, "Kafka"
//! stands for whatever the user's [`ReplayTarget`] delivers to. The crate knows nothing of
//! either: records are opaque (topic, key, headers, payload), errors are [`SpoolError`], metric
//! names are given by the user ([`MetricNames`]).
//!
//! # Promise
//! A record handed to [`Spool::append`] is reported written only after its bytes and every byte
//! before them in the segment are on disk (`fdatasync` returned). The replayer deletes a segment
//! only after every record in it has been acknowledged by Kafka (acks=all) or moved, fsynced, to
//! the quarantine (Kafka refused it for good, or its bytes are damaged). Hence a record the
//! gateway reported durable is, at every instant, acknowledged by Kafka, in a spool segment on
//! disk, or in the quarantine on disk — and nothing can hold the records behind it back for
//! ever. Delivery is at-least-once: a record may reach Kafka twice (see Duplicates).
//!
//! # Files
//! `DIR/<seq>.seg`, `seq` a zero-padded 20-digit counter, oldest first. At most one segment is
//! *active* (being appended to, owned by the writer thread); the others are *sealed* (immutable,
//! owned by the replayer). Segments are sealed when they reach `segment_bytes`, when their first
//! record is `seal_after` old (so steady traffic can't keep the replayer waiting), and at
//! shutdown. `DIR/<seq>.ack` is the replayer's checkpoint for
//! `<seq>.seg`: the decimal byte offset up to which every record is done (acknowledged by Kafka
//! or quarantined). `DIR/LOCK` holds an exclusive `flock` so two processes never share a spool.
//! `DIR/quarantine/<seq>.seg` holds what replay of segment `seq` had to move out of its way
//! (see Quarantine).
//!
//! # File format (little-endian)
//! ```text
//! file    := "EPSPOOL2" nonce:u64 frame*
//! frame   := word:u32 head_crc:u32 body_crc:u32 body[len]
//!            word     = kind << 28 | len        kind: 0 record, 1 commit, 2 quarantined
//!            head_crc = CRC-32(nonce ‖ word)     body_crc = CRC-32(nonce ‖ word ‖ body)
//! record  := appended_ms:i64
//!            topic_len:u16 topic
//!            key_len:i32 key          (-1: no key)
//!            n_headers:u8 { k_len:u8 k  v_len:u32 v }*
//!            payload_len:u32 payload  (the Thrift bytes, exactly what Kafka would get)
//! commit  := offset:u64               (where this marker frame starts in the file)
//! quarantined := quarantined_ms:i64 source_seq:u64 source_offset:u64 source_len:u64
//!            reason_len:u8 reason  tag:u8 (0: record body, 1: raw damaged bytes)
//!            content_len:u32 content
//! ```
//! A frame is valid only if both checksums match, `len` is within the limit and its body
//! decodes completely (a commit marker must name its own offset). **One record-size limit**
//! ([`MAX_RECORD`], 16 MiB of body) is enforced by both sides: [`Spool::append`] refuses a batch
//! holding a record over it (or with a field too long for its length prefix) with
//! [`SpoolError::Refused`] and writes nothing, so the reader never meets a record it would call
//! corrupt. Quarantine frames may exceed it by a small fixed overhead.
//!
//! The nonce is random per spool instance (every segment it creates carries it). It makes frames
//! unforgeable from outside: an event field can contain bytes that look like a frame, but without
//! the nonce a client cannot give them valid checksums, so resynchronisation (below) never
//! mistakes client data for a record. Random bytes pass the 32-bit header check with probability
//! 2^-32 per position, and the body checksum and a complete decode on top of that, so a scan
//! costs one 12-byte CRC per damaged byte (linear) and a fake frame is practically impossible.
//!
//! Legacy segments (written before this format: no header, frames `len:u32 crc:u32 body` with
//! `crc = CRC-32(body)`) are still read, with the old rule: the first bad frame ends the file.
//!
//! # When fsync happens (group commit)
//! Appends go through a channel to one writer thread. It takes every append waiting in the
//! channel, writes them and then a commit marker, calls `fdatasync` once, and only then answers
//! all of them. Concurrent requests therefore share one fsync; a lone request pays one. A new
//! segment file is created (with its header) and its directory entry fsynced before the first
//! append to it is answered.
//!
//! # What a crash leaves behind, and what start-up may cut
//! - Crash before `fdatasync` returned: the batch's clients got no answer (or their connection
//!   dropped), so nothing was promised. The segment may end in a partial or complete copy of the
//!   batch without a valid commit marker after it: a torn tail.
//! - On start-up every segment is scanned. **Only bytes past the last valid commit marker may be
//!   cut**: there, the first damaged frame ends the file (it is truncated and fsynced; records
//!   before it, complete but unanswered, are kept and replayed: at-least-once allows that).
//! - Damage before the last valid commit marker is a **corrupt middle** (bit rot, a bad sector,
//!   an operator's editor): the reader resynchronises at the next valid frame, every record
//!   around the damage is kept, an error is logged naming the file and offset, and the replayer
//!   copies the damaged bytes to the quarantine (reason `corrupt`, metrics
//!   `eventpipe_spool_corrupt_bytes_total` and `eventpipe_spool_quarantined_records_total`) before
//!   moving its checkpoint past them. (Metric names are the gateway's; see [`MetricNames`].) The same holds for damage the replayer meets in a segment
//!   sealed during this run: everything up to a sealed segment's length was committed.
//!   A damaged final commit marker loses nothing: the records before it are a valid prefix.
//!   Damage to the last record *and* its marker together cuts that record (two independent
//!   faults in the same few bytes at the end of a segment).
//! - Crash after `fdatasync`: the records are before a valid marker and will be replayed.
//! - Crash during replay: the checkpoint lags the truth, so records acknowledged by Kafka after
//!   the last checkpoint are produced again (duplicates, same event id), and a record
//!   quarantined after the last checkpoint may be quarantined again (listed twice).
//! - A write or fsync error (ENOSPC, EIO): the batch is answered with an error (the clients get
//!   503), the segment is cut back to its length before the batch and sealed; if even that
//!   fails the segment is sealed as is, and the replayer quarantines whatever of it is damaged.
//!   The spool refuses appends for `io_error_backoff` before trying again.
//!
//! # Quarantine
//! Nothing may block replay. A record Kafka refuses for good (`ReplayResult::refused`: too
//! large, unknown topic, not authorised...) and damaged bytes are appended to
//! `DIR/quarantine/<seq>.seg` and fsynced (one write with a commit marker, like a group commit)
//! *before* the checkpoint moves past them; only then are they counted
//! (`eventpipe_spool_quarantined_records_total{reason}`, reason `corrupt` or the bounded refusal
//! reason, anything else `other`) and logged. If the quarantine cannot be written, the records
//! stay in the batch and are tried again: never dropped. A quarantine file has the segment file
//! format (its own header and nonce), with `quarantined` frames: the same reader reads it, a torn
//! tail in it is cut before the next append, and `eventpipe spool quarantine --dir DIR [--json]`
//! lists it. Quarantine files are never deleted automatically (an operator fixes the cause,
//! re-sends, then deletes them) and are **not** counted in `spool.max_bytes`: they are
//! bounded by what Kafka refused, and counting them would let a burst of refusals fill the
//! spool and make the host answer 503 for good with Kafka healthy.
//!
//! # When files are deleted
//! A sealed segment (and its `.ack`) is deleted when the replayer is done with every record in
//! it (acknowledged by Kafka or quarantined). The active segment is never deleted; a segment
//! with nothing to replay is removed on start-up. Nothing else deletes spool files: when the
//! spool is full or its oldest record is older than `max_age`, new appends are refused (503)
//! rather than old data dropped.
//!
//! # Ordering and duplicates
//! The replayer drains segments oldest first and, within a segment, in append order, one batch
//! at a time. Live traffic goes straight to Kafka whenever Kafka is healthy, so events of one key
//! can reach Kafka out of order across a spool episode. Duplicates arise (a) when Kafka
//! acknowledges a record after the request's deadline made us spool it, and (b) when a crash
//! loses the replay checkpoint. Each duplicate carries the same event id; consumers dedupe on it.

mod format;
mod inventory;
mod names;
pub mod quarantine;
mod record;
mod replay;
pub mod segment;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use format::{
    decode_quarantined, decode_record, encode_body, encode_record, record_body_len, Content,
    Format, Frame, FrameKind, Item, Quarantined, MAX_RECORD,
};
pub use inventory::Inventory;
pub use names::MetricNames;
pub use record::{AsRecord, Record};
pub use replay::{spawn_replayer, ReplayOptions, ReplayResult, ReplayTarget};
pub use segment::{scan, ScanResult};

/// A boxed future, so [`ReplayTarget`] stays object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why an append (or seal) was refused. Every variant means "nothing of the batch may be
/// reported durable".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// A record of the batch can never be spooled (over [`MAX_RECORD`], or a field too long for
    /// its length prefix); nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The spool is closed (shutting down).
    #[error("spool closed")]
    Closed,
    /// The spool is at its byte limit.
    #[error("spool full")]
    Full,
    /// The spool's oldest record is older than its age limit.
    #[error("spool too old")]
    TooOld,
    /// The disk failed (ENOSPC, EIO, ...), now or within `io_error_backoff`.
    #[error("spool disk error: {0}")]
    Io(String),
}

impl SpoolError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SpoolError::Refused(_) => "refused",
            SpoolError::Closed => "closed",
            SpoolError::Full => "spool_full",
            SpoolError::TooOld => "spool_too_old",
            SpoolError::Io(_) => "spool_io",
        }
    }
}

/// Spool limits and timings.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// Refuse appends once segments on disk total this many bytes.
    pub max_bytes: u64,
    /// Refuse appends once the oldest unacknowledged record is this old.
    pub max_age: Duration,
    /// Seal the active segment at this size.
    pub segment_bytes: u64,
    /// Seal the active segment this long after its first append, so the replayer can take it.
    pub seal_after: Duration,
    /// After a disk error, refuse appends this long before trying the disk again.
    pub io_error_backoff: Duration,
    /// The names the spool's metrics are reported under.
    pub metrics: MetricNames,
}

impl SpoolOptions {
    /// Options for `dir` with moderate defaults: 1 GiB, 24 h, 16 MiB segments sealed after 1 s,
    /// 1 s of refusal after a disk error; metric names from `metrics`.
    pub fn new(dir: impl Into<PathBuf>, metrics: MetricNames) -> SpoolOptions {
        SpoolOptions {
            dir: dir.into(),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(24 * 3600),
            segment_bytes: 16 << 20,
            seal_after: Duration::from_secs(1),
            io_error_backoff: Duration::from_secs(1),
            metrics,
        }
    }
}

/// A sealed segment waiting for the replayer (as [`segment::recover_dir`] lists them).
#[derive(Debug, Clone)]
pub struct Sealed {
    pub seq: u64,
    pub path: PathBuf,
    pub len: u64,
    /// Append time of the first record (ms since epoch), for the age bound.
    pub first_ms: i64,
}

/// State shared by the writer thread, the replayer and the request path.
pub(crate) struct Shared {
    pub opts: SpoolOptions,
    /// Bytes of all segment files on disk.
    pub bytes: AtomicU64,
    /// Records appended and not yet deleted (approximate: replay progress inside a segment is
    /// counted when the segment is deleted).
    pub records: AtomicU64,
    /// Sealed segments, oldest first.
    pub sealed: Mutex<std::collections::VecDeque<Sealed>>,
    pub sealed_notify: tokio::sync::Notify,
    /// Append time of the first record of the active segment, 0 if it is empty.
    pub active_first_ms: AtomicI64,
    /// Time (ms since epoch) of the last disk error, 0 if none.
    pub last_io_error_ms: AtomicI64,
    /// Bytes per second the replayer delivered recently (exponentially weighted), as f64 bits.
    pub drain_rate_bits: AtomicU64,
    /// When the writer last refused an append for lack of room (ms since epoch), 0 never.
    pub last_full_ms: AtomicI64,
    /// Group commits (fsyncs of appended data) so far.
    pub commits: AtomicU64,
    pub closed: AtomicBool,
    /// Woken when `closed` is set, so the replayer's waits end promptly.
    pub closed_notify: tokio::sync::Notify,
    /// How this instance frames what it writes (its nonce goes into every new segment).
    pub format: Format,
    /// Topics whose records replay has seen refused as unknown (a refusal that can be a broker's
    /// passing view), and since when: quarantine waits out `doubtful_refusal_grace` per topic,
    /// not per batch. Cleared when a record of the topic is acknowledged.
    pub doubts: Mutex<std::collections::HashMap<Arc<str>, tokio::time::Instant>>,
}

impl Shared {
    fn oldest_ms(&self) -> Option<i64> {
        let sealed = self.sealed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = sealed.front() {
            return Some(first.first_ms);
        }
        match self.active_first_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(ms),
        }
    }

    pub fn drain_rate(&self) -> f64 {
        f64::from_bits(self.drain_rate_bits.load(Ordering::Relaxed))
    }
}

/// Wall-clock milliseconds since the Unix epoch (record append times, ages).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A point-in-time view of the spool, for metrics and readiness.
#[derive(Debug, Clone, Copy)]
pub struct SpoolStats {
    pub bytes: u64,
    pub records: u64,
    pub oldest_age: Duration,
    pub drain_bytes_per_sec: f64,
    pub sealed_segments: usize,
}

/// The spool handle: cheap to clone.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    writer: writer::Handle,
}

impl Spool {
    /// Opens (or creates) the spool directory: takes its lock, cuts torn tails, queues every
    /// existing segment for replay, and starts the writer thread.
    pub fn open(opts: SpoolOptions) -> Result<Spool, std::io::Error> {
        std::fs::create_dir_all(&opts.dir)?;
        let recovered = segment::recover_dir(&opts.dir, &opts.metrics)?;
        let bytes: u64 = recovered.segments.iter().map(|s| s.len).sum();
        let records: u64 = recovered.records;
        let next_seq = recovered.segments.last().map(|s| s.seq + 1).unwrap_or(1);
        let shared = Arc::new(Shared {
            bytes: AtomicU64::new(bytes),
            records: AtomicU64::new(records),
            sealed: Mutex::new(recovered.segments.into_iter().collect()),
            sealed_notify: tokio::sync::Notify::new(),
            active_first_ms: AtomicI64::new(0),
            last_io_error_ms: AtomicI64::new(0),
            drain_rate_bits: AtomicU64::new(0f64.to_bits()),
            commits: AtomicU64::new(0),
            last_full_ms: AtomicI64::new(0),
            closed: AtomicBool::new(false),
            closed_notify: tokio::sync::Notify::new(),
            format: Format::fresh(),
            doubts: Mutex::new(std::collections::HashMap::new()),
            opts,
        });
        let writer = writer::spawn(shared.clone(), recovered.lock, next_seq)?;
        Ok(Spool { shared, writer })
    }

    /// Appends records durably: resolves once they are fsynced, or with the reason they were
    /// refused (full, too old, disk error) — then nothing of the batch may be reported durable.
    pub async fn append<R: AsRecord>(&self, records: &[R]) -> Result<(), SpoolError> {
        if records.is_empty() {
            return Ok(());
        }
        // A record the reader would refuse must never be written: it could never be replayed.
        let mut size = 0;
        for r in records {
            size += record_body_len(r).map_err(|why| {
                SpoolError::Refused(format!("cannot spool a record to {}: {why}", r.topic()))
            })? + 16;
        }
        self.check_accepting()?;
        let now = now_ms();
        let mut bytes = Vec::with_capacity(size);
        for r in records {
            encode_record(&self.shared.format, r, now, &mut bytes);
        }
        self.writer.append(bytes, records.len() as u64, now).await
    }

    /// Why appends are refused right now, if they are.
    pub fn check_accepting(&self) -> Result<(), SpoolError> {
        let s = &self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return Err(SpoolError::Closed);
        }
        let last_err = s.last_io_error_ms.load(Ordering::Relaxed);
        if last_err != 0 && now_ms() - last_err < s.opts.io_error_backoff.as_millis() as i64 {
            return Err(SpoolError::Io("recent disk error".into()));
        }
        // Full means: at the limit, or an append was refused for room within the last second
        // (the next one would likely be too, and `/readyz` should say so).
        let refused_recently = now_ms() - s.last_full_ms.load(Ordering::Relaxed) < 1000;
        if s.bytes.load(Ordering::Relaxed) >= s.opts.max_bytes || refused_recently {
            return Err(SpoolError::Full);
        }
        if let Some(oldest) = s.oldest_ms() {
            if now_ms() - oldest > s.opts.max_age.as_millis() as i64 {
                return Err(SpoolError::TooOld);
            }
        }
        Ok(())
    }

    /// Seconds a refused client should wait: the time the recent drain rate needs to free a
    /// tenth of the spool, within [1, 300]; 30 when nothing is draining.
    pub fn retry_after_secs(&self) -> u64 {
        let rate = self.shared.drain_rate();
        if rate <= 1.0 {
            return 30;
        }
        let to_free = (self.shared.opts.max_bytes / 10).max(1) as f64;
        (to_free / rate).ceil().clamp(1.0, 300.0) as u64
    }

    pub fn stats(&self) -> SpoolStats {
        let s = &self.shared;
        let oldest_age = s
            .oldest_ms()
            .map(|ms| Duration::from_millis((now_ms() - ms).max(0) as u64))
            .unwrap_or_default();
        SpoolStats {
            bytes: s.bytes.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            oldest_age,
            drain_bytes_per_sec: s.drain_rate(),
            sealed_segments: s.sealed.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }

    /// Bytes of sealed segments the replayer has not yet moved its checkpoint past (each
    /// segment's length minus its checkpoint): what is left to replay, for progress reports.
    pub fn pending_bytes(&self) -> u64 {
        let sealed: Vec<(u64, u64, PathBuf)> = self
            .shared
            .sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|s| (s.seq, s.len, s.path.clone()))
            .collect();
        let dir = &self.shared.opts.dir;
        sealed
            .into_iter()
            .map(|(seq, len, path)| match segment::read_ack(dir, seq) {
                // The replayer deletes the segment, then its checkpoint: no checkpoint and no
                // segment means done, not "from the start".
                0 if !path.exists() => 0,
                acked => len.saturating_sub(acked),
            })
            .sum()
    }

    /// Whether nothing is waiting for replay (active segment empty, no sealed segment).
    pub fn is_empty(&self) -> bool {
        self.shared.oldest_ms().is_none()
    }

    /// Seals the active segment now (shutdown, tests), making it replayable.
    pub async fn seal(&self) -> Result<(), SpoolError> {
        self.writer.seal().await
    }

    /// Seals, stops the writer (releasing the directory lock) and the replayer; later appends
    /// fail with `Closed`.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.closed_notify.notify_waiters();
        let _ = self.writer.stop(true).await;
        self.shared.sealed_notify.notify_waiters();
    }

    /// Stops like a crash would: no seal, nothing flushed beyond what was already fsynced (for
    /// tests of crash recovery, here and in the crates that use this one).
    #[doc(hidden)]
    pub async fn crash(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.closed_notify.notify_waiters();
        let _ = self.writer.stop(false).await;
        self.shared.sealed_notify.notify_waiters();
    }

    /// Sets the spool's gauges (bytes, records, oldest record age, drain rate) from
    /// [`Spool::stats`], under the names in [`SpoolOptions::metrics`]. Call it periodically
    /// (the gateway does once a second).
    pub fn publish_gauges(&self) {
        let s = self.stats();
        let m = &self.shared.opts.metrics;
        metrics::gauge!(m.bytes).set(s.bytes as f64);
        metrics::gauge!(m.records).set(s.records as f64);
        metrics::gauge!(m.oldest_age).set(s.oldest_age.as_secs_f64());
        metrics::gauge!(m.drain_rate).set(s.drain_bytes_per_sec);
    }

    /// The directory this spool owns.
    pub fn dir(&self) -> &std::path::Path {
        &self.shared.opts.dir
    }

    /// Group commits so far (each is one fsync shared by every append in it).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

#[cfg(test)]
mod tests;
