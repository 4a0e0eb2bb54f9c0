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
    /// Topics whose records are refused for good, with the reason Kafka would give.
    refuse: Mutex<Vec<(String, &'static str)>>,
    /// Batches to take before `fail_with` applies (`fail_after`).
    ok_batches_left: Mutex<Option<usize>>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every following batch fail with `err` (or succeed again with `None`).
    pub fn fail_with(&self, err: Option<SinkError>) {
        *self.fail_with.lock().unwrap_or_else(|p| p.into_inner()) = err;
    }

    /// Takes the next `n` batches normally, then fails every following one with `err`.
    pub fn fail_after(&self, n: usize, err: SinkError) {
        *self
            .ok_batches_left
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(n);
        self.fail_with(Some(err));
    }

    /// Makes following batches report their records as spooled (as the fallback sink would
    /// during a Kafka outage).
    pub fn spool_all(&self, on: bool) {
        self.spool_all
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes every following record to `topic` refused for good with `reason` (as Kafka refuses
    /// a topic that does not exist or may not be written), as the Kafka sink reports it.
    pub fn refuse_topic(&self, topic: &str, reason: &'static str) {
        self.refuse
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((topic.to_string(), reason));
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
            let take_normally = {
                let mut left = self
                    .ok_batches_left
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match left.as_mut() {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        true
                    }
                    _ => false,
                }
            };
            if let Some(err) = self
                .fail_with
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .filter(|_| !take_normally)
            {
                return Err(err);
            }
            let mut refused = Vec::new();
            {
                let refuse = self.refuse.lock().unwrap_or_else(|p| p.into_inner());
                for (i, r) in records.iter().enumerate() {
                    if let Some((_, reason)) = refuse.iter().find(|(t, _)| **t == *r.topic) {
                        refused.push((i, *reason));
                    }
                }
            }
            let taken_at: Vec<usize> = (0..records.len())
                .filter(|i| !refused.iter().any(|(r, _)| r == i))
                .collect();
            let taken: Vec<&Record> = taken_at.iter().map(|&i| &records[i]).collect();
            self.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(taken.iter().map(|r| (*r).clone()));
            if self.spool_all.load(std::sync::atomic::Ordering::Relaxed) {
                let spooled_events = taken
                    .iter()
                    .filter(|r| matches!(r.kind, super::RecordKind::Event { .. }))
                    .count();
                return Ok(Delivered {
                    spooled_events,
                    spooled_records: taken.len(),
                    spooled: taken_at,
                    refused,
                });
            }
            Ok(Delivered {
                refused,
                ..Delivered::default()
            })
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
