//! # eventpipe-client
//!
//! A client for the eventpipe gateway (`POST /v1/events`) for tokio services. It owns the retry
//! contract so the application does not have to:
//!
//! - every event gets its id when it is created and keeps it on every attempt;
//! - events wait in a bounded queue (events and bytes) with a chosen policy when full: `Block`,
//!   `DropOldest`, `DropNewest` or `Spill` to disk (survives a crash, replayed on the next start);
//!   dropped events are counted by reason, never silent;
//! - batches by count, bytes and linger time; gzip;
//! - reads the gateway's per-event answer: accepted and rejected events are done, only what must
//!   be retried is sent again (503, 429, 408, other 5xx, timeouts, connection errors; the
//!   `failed` events of a 500 `dead_letter_refused`); a 413 splits the batch; any other 4xx
//!   rejects it with the gateway's reason;
//! - full-jitter exponential backoff, `Retry-After` honoured as a floor (clamped), and a retry
//!   budget (token bucket) so a dead gateway does not see a multiplied load; every attempt carries
//!   `X-Eventpipe-Attempt: n`;
//! - exports its own metrics (`eventpipe_client_*`, see [`metrics`]) and a tracing span per batch
//!   attempt (`eventpipe_client.batch` with `attempt`, `events`, `status`).
//!
//! ```no_run
//! use std::time::Duration;
//! use eventpipe_client::{Client, Event, QueueConfig, QueuePolicy, Receipt};
//!
//! # async fn example() -> Result<(), eventpipe_client::Error> {
//! let client = Client::builder("https://events.example.com")
//!     .write_key("wk_live_8f2c4e1a9b7d")
//!     .batch_max_events(500)
//!     .linger(Duration::from_millis(200))
//!     .queue(QueueConfig::new(10_000, 16 << 20, QueuePolicy::Block))
//!     .build()?;
//!
//! // Fire and forget: returns the event id at once.
//! let id = client.track("page_view/1", serde_json::json!({"url": "https://example.com/a"}));
//!
//! // Or wait for the gateway's answer on one event.
//! let event = Event::new("click/1", serde_json::json!({"target": "buy"}))
//!     .context(serde_json::json!({"visitor_id": "v-123"}));
//! match client.send(event).await? {
//!     Receipt::Kafka | Receipt::Spooled => {}
//!     Receipt::Rejected { reason, path, message } => eprintln!("{reason} at {path:?}: {message}"),
//! }
//!
//! client.flush().await; // everything enqueued so far is settled
//! let report = client.shutdown(Duration::from_secs(10)).await;
//! assert!(report.is_complete(), "{} events not sent: {:?}", report.unsent, report.unsent_ids);
//! # let _ = id; Ok(()) }
//! ```

mod client;
mod config;
mod error;
mod event;
pub mod metrics;
mod queue;
mod response;
mod retry;
mod spill;
mod worker;

#[cfg(test)]
mod tests;

pub use client::{Attempt, Client, Pending};
pub use config::{Builder, QueueConfig, QueuePolicy, RetryConfig, SpillConfig};
pub use error::{DropReason, Error, Receipt, ShutdownReport, Stats};
pub use event::{Event, EventId};
pub use retry::RetryCause;

/// The header carrying the attempt number (1, 2, ...) of a batch.
pub const ATTEMPT_HEADER: &str = "x-eventpipe-attempt";
