//! Where encoded records go: a small trait with the Kafka sink and an in-memory sink for tests.
//!
//! `send_batch` resolves only when every record of the batch is acknowledged (Kafka acks=all) or
//! when the batch as a whole has failed; the HTTP layer answers the client from that result.

pub mod fallback;
pub mod kafka;
pub mod memory;
pub mod spool;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message for Kafka: the output of the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Kafka headers, e.g. `("schema", "page_view/1")`, `("event_id", ...)`. Keys are one of
    /// `HEADER_KEYS` (the spool stores them by name and maps them back).
    pub headers: Vec<(&'static str, String)>,
    pub kind: RecordKind,
}

impl Record {
    /// The value of Kafka header `key`, if the record has it.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What a record carries, for responses, metrics and the dedup window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An accepted event. `client_id` is its event id as a number when the client chose it (only
    /// those can come back as retries, so only those enter the dedup window).
    Event {
        client_id: Option<u128>,
    },
    DeadLetter,
}

/// Every Kafka header key the gateway writes.
pub const HEADER_KEYS: [&str; 3] = ["schema", "event_id", "reason"];

/// Maps a header key read back from disk to its static name.
pub fn static_header_key(key: &str) -> Option<&'static str> {
    HEADER_KEYS.iter().copied().find(|k| *k == key)
}

/// Where a batch's records ended up. A record neither spooled nor refused was acknowledged by
/// Kafka.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Accepted events written to the local spool (durable, on their way to Kafka).
    pub spooled_events: usize,
    /// All records written to the spool, dead letters included.
    pub spooled_records: usize,
    /// Indices (into the batch passed in, ascending) of the records written to the spool.
    pub spooled: Vec<usize>,
    /// Records Kafka refused for good (never spooled: no retry could succeed), as indices into
    /// the batch passed in, with a bounded reason such as `kafka_rejected:msg_size_too_large`.
    pub refused: Vec<(usize, &'static str)>,
}

/// Why a batch was not acknowledged. Every variant means "nothing reported as accepted".
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Kafka did not acknowledge every record before the deadline.
    #[error("kafka did not acknowledge in time")]
    Timeout,
    /// The producer queue stayed full until the deadline (back-pressure).
    #[error("producer queue full")]
    QueueFull,
    /// A retryable broker or network error (the client should retry later).
    #[error("retryable kafka error: {0}")]
    Retryable(String),
    /// An error retrying cannot fix (unknown topic, message too large, authorization).
    #[error("permanent kafka error: {0}")]
    Permanent(String),
    /// The sink is shutting down.
    #[error("sink closed")]
    Closed,
    /// The spool is at its byte limit.
    #[error("spool full")]
    SpoolFull,
    /// The spool's oldest record is older than its age limit (Kafka has been away too long).
    #[error("spool too old")]
    SpoolTooOld,
    /// The spool disk failed (ENOSPC, EIO, ...).
    #[error("spool disk error: {0}")]
    SpoolIo(String),
}

impl SinkError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Timeout => "timeout",
            SinkError::QueueFull => "queue_full",
            SinkError::Retryable(_) => "retryable",
            SinkError::Permanent(_) => "permanent",
            SinkError::Closed => "closed",
            SinkError::SpoolFull => "spool_full",
            SinkError::SpoolTooOld => "spool_too_old",
            SinkError::SpoolIo(_) => "spool_io",
        }
    }
}

/// A destination for records.
pub trait Sink: Send + Sync + 'static {
    /// Sends every record; resolves `Ok` once all are durable (acknowledged by Kafka, or fsynced in
    /// the spool), or an error meaning none may be reported as accepted.
    fn send_batch(
        &self,
        records: Vec<Record>,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Delivered, SinkError>>;
    /// Waits until everything sent so far is acknowledged, up to `timeout`.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Whether the sink can take events durably right now (drives `/readyz`).
    fn is_ready(&self) -> bool;
    /// Seconds a refused client should wait before retrying.
    fn retry_after_secs(&self) -> u64 {
        2
    }
    /// Hands the sink the audit books, for the records its replayer delivers later (the
    /// fallback sink); called once at start-up. Other sinks have nothing to report.
    fn attach_audit(&self, _audit: std::sync::Arc<crate::audit::Books>) {}
    /// Stops background work (replay) after the last request; called once at shutdown.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
