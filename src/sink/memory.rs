//! An in-memory sink for router tests: records what it was given, or fails on demand.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{BoxFuture, Delivered, Record, Sink, SinkError};

/// Keeps every acknowledged record in memory.
#[derive(Default)]
pub struct MemorySink {
    records: Mutex<Vec<Record>>,
    fail_with: Mutex<Option<SinkError>>,
    /// Report every record as spooled rather than acknowledged by Kafka.
    spool_all: std::sync::atomic::AtomicBool,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every following batch fail with `err` (or succeed again with `None`).
    pub fn fail_with(&self, err: Option<SinkError>) {
        *self.fail_with.lock().unwrap_or_else(|p| p.into_inner()) = err;
    }

    /// Makes following batches report their records as spooled (as the fallback sink would
    /// during a Kafka outage).
    pub fn spool_all(&self, on: bool) {
        self.spool_all
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Everything acknowledged so far.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Sink for MemorySink {
    fn send_batch(
        &self,
        records: Vec<Record>,
        _deadline: Instant,
    ) -> BoxFuture<'_, Result<Delivered, SinkError>> {
        Box::pin(async move {
            if let Some(err) = self
                .fail_with
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Err(err);
            }
            self.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(records.iter().cloned());
            if self.spool_all.load(std::sync::atomic::Ordering::Relaxed) {
                let spooled_events = records
                    .iter()
                    .filter(|r| matches!(r.kind, super::RecordKind::Event { .. }))
                    .count();
                return Ok(Delivered {
                    spooled_events,
                    spooled_records: records.len(),
                });
            }
            Ok(Delivered::default())
        })
    }

    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    fn is_ready(&self) -> bool {
        self.fail_with
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }
}
