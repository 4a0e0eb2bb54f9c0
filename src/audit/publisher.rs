//! The publisher: a background task that turns closed (window, topic) cells into `AuditRecord`s
//! on the audit topic, and again whenever a cell's counts change (replay, a slow request).
//!
//! It has its own producer (idempotent, acks=all, the gateway's librdkafka settings): audit
//! records never wait in, or take room from, the request path's producer queue, never trip the
//! breaker that sends requests to the spool, and a stuck audit topic cannot slow a request.
//! A publish that fails (timeout, broker down, the topic missing) leaves the cell unpublished:
//! it is counted (`eventpipe_audit_publish_failures_total`), retried with exponential backoff,
//! and shown in `eventpipe_audit_unpublished_records`. Each attempt takes the next `seq`, so a
//! retry that lands after an earlier attempt also landed only repeats the same counts.
//! At shutdown, after the last request, every cell with unpublished counts (the open window
//! too) is published within the budget; what could not be is logged.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::window::{Books, Snapshot};
use crate::metrics as m;
use crate::sink::{Record, RecordKind, Sink};
use crate::thrift::generated::AuditRecord;

/// Who publishes: the fields every record of this process carries.
#[derive(Debug, Clone)]
pub struct Identity {
    pub collector_host: String,
    pub collector_version: String,
    /// Random per process start.
    pub boot_id: String,
}

/// Records per produce call.
const CHUNK: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running publisher; [`Publisher::shutdown`] flushes it.
pub struct Publisher {
    stop: Option<oneshot::Sender<Instant>>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    books: Arc<Books>,
    sink: Arc<dyn Sink>,
    id: Identity,
    topic: Arc<str>,
    delay_ms: i64,
    /// How long one publish waits for Kafka's acknowledgements.
    timeout: Duration,
    seq: i64,
    /// The last failed publish was refused for good (e.g. the audit topic does not exist):
    /// retrying within the shutdown budget cannot help.
    refused: bool,
}

impl Publisher {
    /// Starts publishing `books` through `sink` (its own producer) to `topic`, each window
    /// `delay_ms` after it ends; one publish waits up to `timeout` for Kafka.
    pub fn spawn(
        books: Arc<Books>,
        sink: Arc<dyn Sink>,
        id: Identity,
        topic: &str,
        delay_ms: u64,
        timeout: Duration,
        first_backoff: Duration,
    ) -> Publisher {
        // Exported from the start (at 0), so alerts and dashboards find them before any publish.
        metrics::counter!(m::AUDIT_PUBLISHED).increment(0);
        metrics::counter!(m::AUDIT_PUBLISH_FAILURES).increment(0);
        metrics::gauge!(m::AUDIT_UNPUBLISHED).set(0.0);
        let (stop_tx, mut stop_rx) = oneshot::channel::<Instant>();
        let tick = Duration::from_millis((books.window_ms() as u64 / 4).clamp(100, 1_000));
        let mut st = State {
            books,
            sink,
            id,
            topic: topic.into(),
            delay_ms: delay_ms as i64,
            timeout,
            seq: 0,
            refused: false,
        };
        let task = tokio::spawn(async move {
            let mut backoff = first_backoff;
            let mut next_try = Instant::now();
            loop {
                tokio::select! {
                    deadline = &mut stop_rx => {
                        st.flush(deadline.unwrap_or_else(|_| Instant::now()), first_backoff).await;
                        return;
                    }
                    _ = tokio::time::sleep(tick) => {}
                }
                if Instant::now() < next_try {
                    continue;
                }
                let due = st.books.due(crate::now_ms(), st.delay_ms, false);
                if st.publish(due).await {
                    backoff = first_backoff;
                } else {
                    next_try = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                st.gauge();
            }
        });
        Publisher {
            stop: Some(stop_tx),
            task,
        }
    }

    /// Publishes everything not yet published (the open window too), trying until `budget`
    /// has passed; logs what is left.
    pub async fn shutdown(mut self, budget: Duration) {
        let deadline = Instant::now() + budget;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(deadline);
        }
        // The task gives up at the deadline; a little slack for its last log line.
        let _ = tokio::time::timeout(budget + Duration::from_secs(1), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl State {
    fn gauge(&self) {
        let n = self.books.unpublished(crate::now_ms(), self.delay_ms);
        metrics::gauge!(m::AUDIT_UNPUBLISHED).set(n as f64);
    }

    /// Publishes `due`; true if every record was acknowledged.
    async fn publish(&mut self, due: Vec<Snapshot>) -> bool {
        let mut all_ok = true;
        self.refused = false;
        for chunk in due.chunks(CHUNK) {
            let records: Vec<Record> = chunk.iter().map(|s| self.record(s)).collect();
            let deadline = Instant::now() + self.timeout;
            let failed: Vec<usize> = match self.sink.send_batch(records, deadline).await {
                Ok(d) => {
                    if let Some((_, reason)) = d.refused.first() {
                        self.refused = true;
                        log_failure(reason, d.refused.len());
                    }
                    // The audit's own producer has no spool: anything not refused was acked.
                    d.refused.iter().map(|(i, _)| *i).chain(d.spooled).collect()
                }
                Err(e) => {
                    log_failure(&e.to_string(), chunk.len());
                    (0..chunk.len()).collect()
                }
            };
            for (i, snap) in chunk.iter().enumerate() {
                if !failed.contains(&i) {
                    self.books.published(snap);
                }
            }
            let ok = (chunk.len() - failed.len()) as u64;
            metrics::counter!(m::AUDIT_PUBLISHED).increment(ok);
            if !failed.is_empty() {
                metrics::counter!(m::AUDIT_PUBLISH_FAILURES).increment(failed.len() as u64);
                all_ok = false;
            }
        }
        all_ok
    }

    fn record(&mut self, s: &Snapshot) -> Record {
        self.seq += 1;
        let c = &s.counts;
        let dead_letter = s.topic == *self.books.dead_letter_topic();
        let rec = AuditRecord {
            collector_host: self.id.collector_host.clone(),
            boot_id: self.id.boot_id.clone(),
            seq: self.seq,
            window_start_ms: s.window_start_ms,
            window_ms: self.books.window_ms(),
            topic: s.topic.to_string(),
            events_kafka: c.events_kafka,
            events_replayed: c.events_replayed,
            events_pending: c.events_pending,
            bytes: c.bytes,
            events_quarantined: Some(c.quarantined),
            dead_letters: dead_letter.then(|| c.dead_letters.clone()),
            requests_refused: dead_letter.then(|| {
                c.requests_refused
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect()
            }),
            published_at_ms: crate::now_ms(),
            collector_version: self.id.collector_version.clone(),
        };
        Record {
            topic: self.topic.clone(),
            // One host's records stay in one partition, in publish order.
            key: Some(self.id.collector_host.as_bytes().to_vec()),
            payload: crate::thrift::to_compact_bytes(&rec),
            headers: Vec::new(),
            kind: RecordKind::Event { client_id: None },
        }
    }

    /// Shutdown: publish every unpublished cell until `deadline`.
    async fn flush(&mut self, deadline: Instant, first_backoff: Duration) {
        let mut backoff = first_backoff;
        loop {
            let due = self.books.due(crate::now_ms(), self.delay_ms, true);
            if due.is_empty() {
                self.gauge();
                return;
            }
            let ok = tokio::time::timeout_at(deadline, self.publish(due)).await;
            self.gauge();
            if matches!(ok, Ok(true)) {
                continue;
            }
            if self.refused || Instant::now() + backoff >= deadline {
                let left = self.books.due(crate::now_ms(), self.delay_ms, true);
                let windows: std::collections::BTreeSet<i64> =
                    left.iter().map(|s| s.window_start_ms).collect();
                tracing::error!(
                    records = left.len(),
                    first_window_ms = windows.first().copied(),
                    last_window_ms = windows.last().copied(),
                    "audit: shutdown budget spent; these audit records were not published \
                     (`eventpipe audit` will see those windows as under-reported)"
                );
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn log_failure(error: &str, records: usize) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    if m::log_allowed(&LAST) {
        tracing::warn!(
            error,
            records,
            "audit: publishing audit records failed; keeping them and retrying (logged at most once a second)"
        );
    }
}
