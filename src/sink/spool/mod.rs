//! The spool: a local write-ahead log that makes "2xx means durable" true while Kafka is slow,
//! down, or refusing writes.
//!
//! # Promise
//! A record handed to [`Spool::append`] is reported written only after its bytes and every byte
//! before them in the segment are on disk (`fdatasync` returned). The replayer deletes a segment
//! only after every record in it has been acknowledged by Kafka (acks=all). Hence a record the
//! gateway reported durable is, at every instant, either acknowledged by Kafka or in a spool
//! segment on disk. Delivery is at-least-once: a record may reach Kafka twice (see Duplicates).
//!
//! # Files
//! `DIR/<seq>.seg`, `seq` a zero-padded 20-digit counter, oldest first. At most one segment is
//! *active* (being appended to, owned by the writer thread); the others are *sealed* (immutable,
//! owned by the replayer). Segments are sealed when they reach `segment_bytes`, when their first
//! record is `seal_after` old (so steady traffic can't keep the replayer waiting), and at
//! shutdown. `DIR/<seq>.ack` is the replayer's checkpoint for
//! `<seq>.seg`: the decimal byte offset up to which every record is acknowledged by Kafka.
//! `DIR/LOCK` holds an exclusive `flock` so two processes never share a spool.
//!
//! # Record format (little-endian)
//! ```text
//! record  := len:u32  crc:u32  body[len]          crc = CRC-32 (IEEE) of body
//! body    := appended_ms:i64
//!            topic_len:u16 topic
//!            key_len:i32 key          (-1: no key)
//!            n_headers:u8 { k_len:u8 k  v_len:u32 v }*
//!            payload_len:u32 payload  (the Thrift bytes, exactly what Kafka would get)
//! ```
//! `len` is capped at 16 MiB; a larger value is treated like a bad checksum.
//!
//! # When fsync happens (group commit)
//! Appends go through a channel to one writer thread. It takes every append waiting in the
//! channel, writes them with one `write`, calls `fdatasync` once, and only then answers all of
//! them. Concurrent requests therefore share one fsync; a lone request pays one. A new segment
//! file is created and its directory entry fsynced before the first append to it is answered.
//!
//! # What a crash leaves behind
//! - Crash before `fdatasync` returned: the batch's clients got no answer (or their connection
//!   dropped), so nothing was promised. The segment may end in a partial or complete copy of the
//!   batch: a torn tail.
//! - On start-up every segment is scanned; the first record with a short header, an impossible
//!   length or a checksum mismatch ends the valid prefix and the file is truncated there (and
//!   fsynced). Torn bytes are never replayed. Complete records of an unanswered batch survive
//!   and are replayed: "unacknowledged but present", which at-least-once allows.
//! - Crash after `fdatasync`: the records are in the valid prefix and will be replayed.
//! - Crash during replay: the checkpoint lags the truth, so records acknowledged by Kafka after
//!   the last checkpoint are produced again (duplicates, same event id).
//! - A write or fsync error (ENOSPC, EIO): the batch is answered with an error (the clients get
//!   503), the segment is cut back to its length before the batch and sealed; if even that
//!   fails the segment is sealed as is, and a later scan keeps whatever valid prefix it has.
//!   The spool refuses appends for `io_error_backoff` before trying again.
//!
//! # When files are deleted
//! A sealed segment (and its `.ack`) is deleted when the replayer has had every record in it
//! acknowledged by Kafka. The active segment is never deleted; an empty segment is removed on
//! start-up. Nothing else deletes spool files: when the spool is full or its oldest record is
//! older than `max_age`, new appends are refused (503) rather than old data dropped.
//!
//! # Ordering and duplicates
//! The replayer drains segments oldest first and, within a segment, in append order, one batch
//! at a time. Live traffic goes straight to Kafka whenever Kafka is healthy, so events of one key
//! can reach Kafka out of order across a spool episode. Duplicates arise (a) when Kafka
//! acknowledges a record after the request's deadline made us spool it, and (b) when a crash
//! loses the replay checkpoint. Each duplicate carries the same event id; consumers dedupe on it.

mod replay;
pub(crate) mod segment;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use replay::{spawn_replayer, ReplayOptions, ReplayResult, ReplayTarget};
pub use segment::{decode_record, encode_record, scan, ScanResult};

use crate::sink::{Record, SinkError};

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
}

/// A sealed segment waiting for the replayer.
#[derive(Debug, Clone)]
pub(crate) struct Sealed {
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

pub use crate::now_ms;

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
        let recovered = segment::recover_dir(&opts.dir)?;
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
            opts,
        });
        let writer = writer::spawn(shared.clone(), recovered.lock, next_seq)?;
        Ok(Spool { shared, writer })
    }

    /// Appends records durably: resolves once they are fsynced, or with the reason they were
    /// refused (full, too old, disk error) — then nothing of the batch may be reported durable.
    pub async fn append(&self, records: &[Record]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        self.check_accepting()?;
        let now = now_ms();
        let mut bytes = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 64).sum());
        for r in records {
            encode_record(r, now, &mut bytes);
        }
        self.writer.append(bytes, records.len() as u64, now).await
    }

    /// Why appends are refused right now, if they are.
    pub fn check_accepting(&self) -> Result<(), SinkError> {
        let s = &self.shared;
        if s.closed.load(Ordering::Relaxed) {
            return Err(SinkError::Closed);
        }
        let last_err = s.last_io_error_ms.load(Ordering::Relaxed);
        if last_err != 0 && now_ms() - last_err < s.opts.io_error_backoff.as_millis() as i64 {
            return Err(SinkError::SpoolIo("recent disk error".into()));
        }
        // Full means: at the limit, or an append was refused for room within the last second
        // (the next one would likely be too, and `/readyz` should say so).
        let refused_recently = now_ms() - s.last_full_ms.load(Ordering::Relaxed) < 1000;
        if s.bytes.load(Ordering::Relaxed) >= s.opts.max_bytes || refused_recently {
            return Err(SinkError::SpoolFull);
        }
        if let Some(oldest) = s.oldest_ms() {
            if now_ms() - oldest > s.opts.max_age.as_millis() as i64 {
                return Err(SinkError::SpoolTooOld);
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

    /// Whether nothing is waiting for replay (active segment empty, no sealed segment).
    pub fn is_empty(&self) -> bool {
        self.shared.oldest_ms().is_none()
    }

    /// Seals the active segment now (shutdown, tests), making it replayable.
    pub async fn seal(&self) -> Result<(), SinkError> {
        self.writer.seal().await
    }

    /// Seals, stops the writer (releasing the directory lock) and the replayer; later appends
    /// fail with `Closed`.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        let _ = self.writer.stop(true).await;
        self.shared.sealed_notify.notify_waiters();
    }

    /// Stops like a crash would: no seal, nothing flushed beyond what was already fsynced.
    #[cfg(test)]
    pub(crate) async fn crash(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        let _ = self.writer.stop(false).await;
        self.shared.sealed_notify.notify_waiters();
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
