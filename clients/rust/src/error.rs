//! What a send ends in: a `Receipt` (the gateway's word on the event) or an `Error` (the client
//! could not get one), and what `shutdown` reports.

use crate::event::EventId;

/// The gateway's final answer for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Acknowledged by Kafka (a 200, or a 500 `dead_letter_refused` answer with nothing spooled).
    Kafka,
    /// Durable but maybe not in Kafka yet: accepted in a 202 answer (fsynced in the gateway's
    /// spool, or in Kafka: a 202 does not say which of its accepted events were spooled).
    Spooled,
    /// Refused for good; not to be sent again. `reason` is the gateway's (`schema_violation`,
    /// `unknown_schema`, `too_large`, ... or, for a whole bundle refused with a 4xx, its `error`
    /// such as `unauthorized` or `body_too_large` for a single event over the body limit).
    Rejected {
        reason: String,
        /// The failing JSON pointer, when the gateway gave one.
        path: Option<String>,
        message: String,
    },
}

impl Receipt {
    /// Durable at the gateway (Kafka or its spool).
    pub fn is_durable(&self) -> bool {
        matches!(self, Receipt::Kafka | Receipt::Spooled)
    }
}

/// Why the client itself gave up on an event. Also the `reason` label of
/// `eventpipe_client_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The queue was full and its policy is `DropNewest` (or `track` under `Block`, which cannot
    /// wait).
    QueueFull,
    /// Evicted from a full queue by a newer event (`DropOldest`).
    Oldest,
    /// `RetryConfig::max_attempts` reached.
    RetriesExhausted,
    /// Still unsent when `shutdown`'s deadline passed, or when the drop grace after the last
    /// `Client` handle was dropped ran out.
    Shutdown,
    /// The disk queue (`Spill`) could not take it (full or an I/O error).
    Spill,
    /// Enqueued after `shutdown` or after the last handle was dropped.
    Closed,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Oldest => "drop_oldest",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Shutdown => "shutdown",
            DropReason::Spill => "spill_failed",
            DropReason::Closed => "closed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `build()` refused its settings (the message names the setting).
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// `build()` was called outside a tokio runtime.
    #[error("eventpipe client must be built inside a tokio runtime")]
    NoRuntime,
    /// The client is shut down (or its last handle dropped): nothing more is accepted.
    #[error("eventpipe client is closed")]
    Closed,
    /// The client gave up on the event; counted in `eventpipe_client_dropped_total{reason}`.
    #[error("event dropped by the client: {}", .0.as_str())]
    Dropped(DropReason),
    /// Still in the disk queue (`Spill`) when the client stopped; the next client opened on the
    /// same directory sends it (with the same id).
    #[error("event left in the client's disk queue")]
    Spilled,
    /// The event could not be serialized.
    #[error("event could not be encoded: {0}")]
    Encode(String),
}

/// What `shutdown(deadline)` could and could not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Events made durable (Kafka or the gateway's spool) over the client's life.
    pub delivered: u64,
    /// Events the gateway rejected over the client's life.
    pub rejected: u64,
    /// Events the queue policy or retry limit dropped over the client's life (not counting
    /// `unsent`).
    pub dropped: u64,
    /// Events neither durable nor rejected at the deadline and not kept on disk: lost.
    pub unsent: u64,
    /// Their ids (at most 10 000; `unsent` is the full count).
    pub unsent_ids: Vec<EventId>,
    /// Events left in the disk queue (`Spill`), sent by the next client opened on that directory.
    pub spilled: u64,
}

impl ShutdownReport {
    /// Everything enqueued was delivered or rejected (nothing lost, nothing left on disk).
    pub fn is_complete(&self) -> bool {
        self.unsent == 0 && self.spilled == 0
    }
}

/// A snapshot of the client's counters (the same numbers as its metrics, for this client only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub enqueued: u64,
    pub accepted_kafka: u64,
    pub accepted_spool: u64,
    pub rejected: u64,
    pub dropped: u64,
    /// Attempts after the first, per batch.
    pub retries: u64,
    /// Events waiting in memory (not counting those in flight or on disk).
    pub queued_events: u64,
    pub queued_bytes: u64,
    /// Events in batches being sent or waiting to be retried.
    pub in_flight: u64,
    /// Events this client knows are in its disk queue (spilled, or read back from it) and not yet
    /// settled.
    pub spilled: u64,
}
