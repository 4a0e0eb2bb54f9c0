//! Audit records: this gateway's books, per window of receive time and topic, published to the
//! audit topic so that `eventpipe audit` can balance them against what the topics hold.
//!
//! # What is counted, and where
//! Counts are of *records Kafka acknowledged*, attributed to the window of their receive time
//! (`Enrichment.received_at_ms`, the same value the record carries) and their topic:
//! - `events_kafka`: acknowledged within the request's ack deadline (`ingest`, the dead letters
//!   of refused events, the dead letters of refused requests: every `send_batch` of the request
//!   path goes through [`send`]). Counted from the sink's answer: a record answered as spooled
//!   is never counted here, even if Kafka acknowledges its first attempt later (it is then in the
//!   topic twice; the audit counts it once, when the replayer has it acknowledged).
//! - `events_pending`: answered as spooled and not yet delivered by this boot's replayer;
//!   `events_replayed`: delivered by the replayer (pending goes down by one). Records the
//!   replayer quarantines leave pending for `events_quarantined` (and
//!   `eventpipe_audit_quarantined_records_total`): they were acknowledged to the client and will
//!   never be in their topic, so the checker counts them as reported and hence missing.
//! - Dead letters count like events on the dead-letter topic's record, plus `dead_letters` by
//!   reason; whole requests refused count in its `requests_refused` by reason (401, 429, 503...).
//! - Retries answered from the dedup window were not produced again and are not counted again.
//!   A request answered 503 after part of its records were acknowledged is not counted (the
//!   client retries; the topic then holds more than reported: never a false "missing").
//!
//! # Restarts
//! A new process on the same spool first counts every record its predecessor left there as
//! pending in that record's (old) window, under its own boot id (an inventory of the sealed
//! segments from their replay checkpoints, read in the background before the replayer delivers
//! anything: `FallbackSink::attach_audit`), publishes those windows at once (they are closed),
//! and moves them to `events_replayed` as it delivers them. The predecessor's last record for
//! such a window keeps the pending count it had when it stopped; the checker reads pending from
//! a host's latest boot only (README "Auditing", /work/helpers/audit-contract.md).
//!
//! # Cost on the request path
//! One pass over the request's records into a few groups (usually one per topic), one lock of
//! the books per request, no allocation per event. Memory is bounded by `audit.max_cells`.

mod publisher;
mod window;

use std::sync::Arc;

use thrift::protocol::{TInputProtocol, TType};
use tokio::time::Instant;

pub use publisher::{Identity, Publisher};
pub use window::{Books, Counts, Delta, Snapshot};

use crate::metrics as m;
use crate::sink::{Delivered, Record, RecordKind, Sink, SinkError};

/// Sends a request's records (all received at `received_at_ms`) and counts what Kafka
/// acknowledged or the spool took.
pub async fn send(
    books: &Books,
    sink: &dyn Sink,
    records: Vec<Record>,
    deadline: Instant,
    received_at_ms: i64,
) -> Result<Delivered, SinkError> {
    let tally = Tally::of(&records);
    let out = sink.send_batch(records, deadline).await;
    if let Ok(delivered) = &out {
        tally.settle(books, delivered, received_at_ms);
    }
    out
}

/// A request's records by (topic, dead-letter reason), before the sink's answer.
pub struct Tally {
    groups: Vec<Group>,
    /// Per record: its group and payload size.
    slots: Vec<(u16, u32)>,
}

struct Group {
    topic: Arc<str>,
    reason: Option<String>,
    event: bool,
    kafka: i64,
    pending: i64,
    bytes: i64,
}

impl Tally {
    pub fn of(records: &[Record]) -> Tally {
        let mut groups: Vec<Group> = Vec::new();
        let mut slots = Vec::with_capacity(records.len());
        for r in records {
            let reason = match r.kind {
                RecordKind::Event { .. } => None,
                RecordKind::DeadLetter => Some(r.header("reason").unwrap_or("unknown")),
            };
            let found = groups.iter().position(|g| {
                (Arc::ptr_eq(&g.topic, &r.topic) || g.topic == r.topic)
                    && g.reason.as_deref() == reason
            });
            let g = match found {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        topic: r.topic.clone(),
                        reason: reason.map(str::to_owned),
                        event: reason.is_none(),
                        kafka: 0,
                        pending: 0,
                        bytes: 0,
                    });
                    groups.len() - 1
                }
            };
            let len = r.payload.len();
            groups[g].kafka += 1;
            groups[g].bytes += len as i64;
            slots.push((g.min(u16::MAX as usize) as u16, len as u32));
        }
        Tally { groups, slots }
    }

    /// Applies the sink's answer: spooled records are pending, refused ones not counted (their
    /// events' dead letters are sent, and counted, separately), the rest acknowledged.
    pub fn settle(mut self, books: &Books, delivered: &Delivered, received_at_ms: i64) {
        for &i in &delivered.spooled {
            if let Some(&(g, len)) = self.slots.get(i) {
                let g = &mut self.groups[g as usize];
                g.kafka -= 1;
                g.bytes -= i64::from(len);
                g.pending += 1;
            }
        }
        for &(i, _) in &delivered.refused {
            if let Some(&(g, len)) = self.slots.get(i) {
                let g = &mut self.groups[g as usize];
                g.kafka -= 1;
                g.bytes -= i64::from(len);
            }
        }
        let acked_events: i64 = self
            .groups
            .iter()
            .filter(|g| g.event)
            .map(|g| g.kafka)
            .sum();
        if acked_events > 0 {
            let secs = (crate::now_ms() - received_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(m::DELIVERY_LATENCY, "path" => "kafka")
                .record_many(secs, acked_events as usize);
        }
        books.request(
            received_at_ms,
            self.groups.iter().map(|g| {
                (
                    &g.topic,
                    Delta {
                        kafka: g.kafka,
                        pending: g.pending,
                        bytes: g.bytes,
                        reason: g.reason.as_deref(),
                    },
                )
            }),
        );
    }
}

/// What the replayer tells the books about each spooled record it is done with.
pub struct ReplayAudit {
    books: Arc<Books>,
    /// Set once the records inherited from a predecessor's spool are counted as pending; the
    /// replayer waits for it, so none is delivered before it is counted.
    inventoried: std::sync::atomic::AtomicBool,
    inventoried_notify: tokio::sync::Notify,
}

impl ReplayAudit {
    pub fn new(books: Arc<Books>) -> ReplayAudit {
        ReplayAudit {
            books,
            inventoried: std::sync::atomic::AtomicBool::new(false),
            inventoried_notify: tokio::sync::Notify::new(),
        }
    }

    /// A record a predecessor spooled and this process will replay: pending in its window.
    pub fn inherited(&self, r: &Record) {
        let at = received_at_ms(&r.payload).unwrap_or_else(crate::now_ms);
        self.books.pending(at, &r.topic);
    }

    /// Every inherited record is counted.
    pub fn inventory_done(&self) {
        self.inventoried
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inventoried_notify.notify_waiters();
    }

    /// Waits until the inventory of inherited records is done.
    pub async fn inventoried(&self) {
        loop {
            let notified = self.inventoried_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inventoried.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Kafka acknowledged a spooled record.
    pub fn acknowledged(&self, r: &Record) {
        let received = received_at_ms(&r.payload);
        let at = received.unwrap_or_else(crate::now_ms);
        let reason = match r.kind {
            RecordKind::Event { .. } => {
                let secs = (crate::now_ms() - at).max(0) as f64 / 1000.0;
                metrics::histogram!(m::DELIVERY_LATENCY, "path" => "spool").record(secs);
                None
            }
            RecordKind::DeadLetter => Some(r.header("reason").unwrap_or("unknown")),
        };
        self.books.replayed(at, &r.topic, r.payload.len(), reason);
    }

    /// The replayer moved a spooled record to the quarantine.
    pub fn quarantined(&self, r: &Record) {
        let received = received_at_ms(&r.payload);
        let kind = match r.kind {
            RecordKind::Event { .. } => "event",
            RecordKind::DeadLetter => "dead_letter",
        };
        metrics::counter!(m::AUDIT_QUARANTINED, "kind" => kind).increment(1);
        self.books
            .quarantined(received.unwrap_or_else(crate::now_ms), &r.topic);
    }
}

/// `Enrichment.received_at_ms` of an `Event` (field 7) or `DeadLetter` (field 10) payload,
/// read without decoding the rest (length prefixes bounded by the bytes left).
pub fn received_at_ms(payload: &[u8]) -> Option<i64> {
    enrichment_field(payload, 1, TType::I64, |p| p.read_i64().ok())
}

/// `Enrichment.collector_host` of an `Event` (field 7) or `DeadLetter` (field 10) payload: the
/// host that received it (`eventpipe spool drain` publishes a dead host's audit under it).
pub fn collector_host(payload: &[u8]) -> Option<String> {
    enrichment_field(payload, 4, TType::String, |p| p.read_string().ok())
}

/// Reads field `id` (of type `ty`) of the `Enrichment` inside an `Event` or `DeadLetter`
/// payload, skipping everything else.
fn enrichment_field<T>(
    payload: &[u8],
    id: i16,
    ty: TType,
    read: impl FnOnce(&mut crate::thrift::bounded::BoundedCompact) -> Option<T>,
) -> Option<T> {
    let mut p = crate::thrift::bounded::BoundedCompact::new(payload);
    p.read_struct_begin().ok()?;
    loop {
        let f = p.read_field_begin().ok()?;
        match f.field_type {
            TType::Stop => return None,
            TType::Struct if matches!(f.id, Some(7) | Some(10)) => {
                p.read_struct_begin().ok()?;
                loop {
                    let g = p.read_field_begin().ok()?;
                    match g.field_type {
                        TType::Stop => return None,
                        t if t == ty && g.id == Some(id) => return read(&mut p),
                        other => p.skip(other).ok()?,
                    }
                    p.read_field_end().ok()?;
                }
            }
            other => p.skip(other).ok()?,
        }
        p.read_field_end().ok()?;
    }
}

#[cfg(test)]
pub(crate) mod tests;
