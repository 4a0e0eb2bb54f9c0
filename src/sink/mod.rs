//! Where encoded records go: a small trait with the Kafka sink and an in-memory sink for tests.
//!
//! `send_batch` resolves only when every record of the batch is acknowledged (Kafka acks=all) or
//! when the batch as a whole has failed; the HTTP layer answers the client from that result.

pub mod kafka;
pub mod memory;

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
    /// Kafka headers, e.g. `("schema", "page_view/1")`, `("event_id", ...)`.
    pub headers: Vec<(&'static str, String)>,
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
        }
    }
}

/// A destination for records.
pub trait Sink: Send + Sync + 'static {
    /// Sends every record; resolves `Ok` once all are acknowledged, or an error by `deadline`.
    fn send_batch(
        &self,
        records: Vec<Record>,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Waits until everything sent so far is acknowledged, up to `timeout`.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), SinkError>>;
    /// Whether the destination is reachable (drives `/readyz`).
    fn is_ready(&self) -> bool;
}
