//! The gateway's side of the spool. The spool itself — the local write-ahead log behind "2xx
//! means durable", with its design document (format, fsync, crash behaviour, quarantine) — is
//! the workspace crate `eventpipe-spool` (`crates/spool`), shared with the client library.
//!
//! This adapter keeps the gateway's view of it: spooled records are the gateway's [`Record`]s
//! (written as they are; read back with their `&'static` header names and [`RecordKind`]),
//! refusals are [`SinkError`]s, metrics keep their `eventpipe_spool_*` names (constants in
//! [`crate::metrics`]), and a replay target delivers gateway records. Reading back is stricter
//! than the crate: a record with a header name the gateway never writes is not one of ours
//! ([`decode_record`] says None; the replayer quarantines it as `spool_unknown_header`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use eventpipe_spool::{
    decode_quarantined, encode_body, encode_record, quarantine, record_body_len, scan, segment,
    Content, Format, Frame, FrameKind, Item, MetricNames, Quarantined, ReplayOptions, ReplayResult,
    ScanResult, SpoolError, SpoolStats, MAX_RECORD,
};

use crate::metrics as m;
pub use crate::now_ms;
use crate::sink::{static_header_key, BoxFuture, Record, RecordKind, SinkError};

/// The gateway's spool metric names.
pub const METRIC_NAMES: MetricNames = MetricNames {
    bytes: m::SPOOL_BYTES,
    records: m::SPOOL_RECORDS,
    oldest_age: m::SPOOL_OLDEST_AGE,
    drain_rate: m::SPOOL_DRAIN_RATE,
    replayed: m::SPOOL_REPLAYED,
    fsync_latency: m::SPOOL_FSYNC_LATENCY,
    group_size: m::SPOOL_GROUP_SIZE,
    io_errors: m::SPOOL_IO_ERRORS,
    corrupt_bytes: m::SPOOL_CORRUPT_BYTES,
    quarantined: m::SPOOL_QUARANTINED,
};

/// Spool limits and timings (the crate's options without the metric names: the gateway's are
/// fixed).
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

impl From<SpoolOptions> for eventpipe_spool::SpoolOptions {
    fn from(o: SpoolOptions) -> Self {
        eventpipe_spool::SpoolOptions {
            dir: o.dir,
            max_bytes: o.max_bytes,
            max_age: o.max_age,
            segment_bytes: o.segment_bytes,
            seal_after: o.seal_after,
            io_error_backoff: o.io_error_backoff,
            metrics: METRIC_NAMES,
        }
    }
}

impl From<SpoolError> for SinkError {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::Refused(why) => SinkError::Permanent(why),
            SpoolError::Closed => SinkError::Closed,
            SpoolError::Full => SinkError::SpoolFull,
            SpoolError::TooOld => SinkError::SpoolTooOld,
            SpoolError::Io(why) => SinkError::SpoolIo(why),
        }
    }
}

impl eventpipe_spool::AsRecord for Record {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn header_count(&self) -> usize {
        self.headers.len()
    }
    fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (*k, v.as_str()))
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// A spooled record as the gateway's record: a `reason` header makes it a dead letter. Err
/// (a bounded reason) if it has a header name the gateway never writes.
pub fn from_spool(r: eventpipe_spool::Record) -> Result<Record, &'static str> {
    let mut headers = Vec::with_capacity(r.headers.len());
    for (k, v) in r.headers {
        headers.push((static_header_key(&k).ok_or("spool_unknown_header")?, v));
    }
    let kind = if headers.iter().any(|(k, _)| *k == "reason") {
        RecordKind::DeadLetter
    } else {
        RecordKind::Event { client_id: None }
    };
    Ok(Record {
        topic: r.topic,
        key: r.key,
        payload: r.payload,
        headers,
        kind,
    })
}

/// Decodes one record body (checksum already verified) into a gateway record, with its append
/// time; None if it does not decode or is not a record the gateway wrote.
pub fn decode_record(body: &[u8]) -> Option<(Record, i64)> {
    let (r, ms) = eventpipe_spool::decode_record(body)?;
    Some((from_spool(r).ok()?, ms))
}

/// The spool handle: cheap to clone. See the crate's `Spool` for each method's promise.
#[derive(Clone)]
pub struct Spool {
    inner: eventpipe_spool::Spool,
}

impl Spool {
    /// Opens (or creates) the spool directory: takes its lock, cuts torn tails, queues every
    /// existing segment for replay, and starts the writer thread.
    pub fn open(opts: SpoolOptions) -> Result<Spool, std::io::Error> {
        eventpipe_spool::Spool::open(opts.into()).map(|inner| Spool { inner })
    }

    /// Appends records durably: resolves once they are fsynced, or with the reason they were
    /// refused (full, too old, disk error; `Permanent` for a record that can never be spooled).
    pub async fn append(&self, records: &[Record]) -> Result<(), SinkError> {
        Ok(self.inner.append(records).await?)
    }

    /// Why appends are refused right now, if they are.
    pub fn check_accepting(&self) -> Result<(), SinkError> {
        Ok(self.inner.check_accepting()?)
    }

    /// Seconds a refused client should wait, within [1, 300].
    pub fn retry_after_secs(&self) -> u64 {
        self.inner.retry_after_secs()
    }

    pub fn stats(&self) -> SpoolStats {
        self.inner.stats()
    }

    /// Bytes of sealed segments the replayer has not yet moved its checkpoint past.
    pub fn pending_bytes(&self) -> u64 {
        self.inner.pending_bytes()
    }

    /// Whether nothing is waiting for replay (active segment empty, no sealed segment).
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Seals the active segment now (shutdown, tests), making it replayable.
    pub async fn seal(&self) -> Result<(), SinkError> {
        Ok(self.inner.seal().await?)
    }

    /// Seals, stops the writer (releasing the directory lock) and the replayer; later appends
    /// fail with `Closed`.
    pub async fn close(&self) {
        self.inner.close().await
    }

    /// Group commits so far (each is one fsync shared by every append in it).
    pub fn commits(&self) -> u64 {
        self.inner.commits()
    }

    /// Sets the `eventpipe_spool_*` gauges from the current stats.
    pub fn publish_gauges(&self) {
        self.inner.publish_gauges()
    }

    /// The sealed segments now. Taken before the first request, they are exactly what an
    /// earlier process left.
    pub fn inventory(&self) -> Inventory {
        Inventory(self.inner.inventory())
    }

    /// The shared crate's handle.
    pub fn inner(&self) -> &eventpipe_spool::Spool {
        &self.inner
    }
}

/// What the spool held when this process opened it (see the crate's `Inventory`).
pub struct Inventory(eventpipe_spool::Inventory);

impl Inventory {
    /// Calls `f` with every gateway record not yet replayed (after each segment's checkpoint).
    /// Blocking file reads, one segment in memory at a time; an unreadable segment is skipped.
    pub fn for_each_record(&self, mut f: impl FnMut(&Record)) {
        self.0.for_each_record(|r| {
            if let Ok(r) = from_spool(r) {
                f(&r);
            }
        })
    }
}

/// Where replayed gateway records go (the Kafka sink, through the fallback's health tracking).
pub trait ReplayTarget: Send + Sync + 'static {
    /// Produces `records`; resolves to what was not acknowledged by `deadline`, and why.
    fn produce<'a>(
        &'a self,
        records: &'a [Record],
        deadline: Instant,
    ) -> BoxFuture<'a, ReplayResult>;
    /// Kafka acknowledged `record` (audit counts; nothing by default).
    fn acknowledged(&self, _record: &Record) {}
    /// `record` was moved to the quarantine (audit counts; nothing by default).
    fn quarantined(&self, _record: &Record) {}
}

/// The crate's replay target over gateway records.
struct Gateway(Arc<dyn ReplayTarget>);

impl eventpipe_spool::ReplayTarget for Gateway {
    type Item = Record;

    fn decode(&self, record: eventpipe_spool::Record) -> Result<Record, String> {
        from_spool(record).map_err(str::to_owned)
    }

    fn produce<'a>(
        &'a self,
        items: &'a [Record],
        deadline: Instant,
    ) -> BoxFuture<'a, ReplayResult> {
        self.0.produce(items, deadline)
    }

    fn acknowledged(&self, item: &Record) {
        self.0.acknowledged(item)
    }

    fn quarantined(&self, item: &Record) {
        self.0.quarantined(item)
    }
}

/// Starts the replayer task; it ends when the spool is closed.
pub fn spawn_replayer(
    spool: &Spool,
    target: Arc<dyn ReplayTarget>,
    opts: ReplayOptions,
) -> tokio::task::JoinHandle<()> {
    eventpipe_spool::spawn_replayer(&spool.inner, Arc::new(Gateway(target)), opts)
}

#[cfg(test)]
mod tests;
