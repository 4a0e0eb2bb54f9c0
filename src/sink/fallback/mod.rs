//! Kafka first, the spool when Kafka can't acknowledge in time: the sink behind "2xx means
//! durable".
//!
//! A request's records go to Kafka; whatever is not acknowledged by the ack deadline for a
//! reason that may pass (timed out, retryable error, local queue full) is appended to the spool
//! and fsynced, and the request is answered 202. If the spool refuses too (full, too old, disk
//! error), the request gets 503 and nothing is reported accepted. A record Kafka refuses for good
//! (too large, unknown topic, not authorized...) is never spooled — the replayer could only retry
//! it forever — but handed back to the caller in `Delivered::refused`.
//!
//! A breaker avoids making every request wait out the deadline during an outage: after a
//! retryable failure, requests go straight to the spool until Kafka acknowledges something
//! again — the replayer's batches are the probe — or, as a fallback, one request per
//! `probe_every` tries Kafka. Permanent refusals say nothing about Kafka's health and leave the
//! breaker alone. While the breaker is open, records are spooled without asking Kafka, so one
//! Kafka would refuse can still reach the spool; the replayer deals with it.

mod pace;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::kafka::{KafkaSink, PartialOutcome};
use super::spool::{now_ms, spawn_replayer, ReplayOptions, ReplayResult, ReplayTarget, Spool};
use super::{BoxFuture, Delivered, Record, RecordKind, Sink, SinkError};

/// How long a probing request waits for a Kafka that was down before spooling its records.
pub const PROBE_WAIT: Duration = Duration::from_millis(500);

/// Open/closed state of the Kafka path.
pub struct Breaker {
    /// When it opened (ms since epoch), 0 when closed.
    opened_ms: AtomicI64,
    last_probe_ms: AtomicI64,
    probe_every: Duration,
}

impl Breaker {
    pub fn new(probe_every: Duration) -> Breaker {
        Breaker {
            opened_ms: AtomicI64::new(0),
            last_probe_ms: AtomicI64::new(0),
            probe_every,
        }
    }

    /// Until when this request should wait for Kafka: the full deadline while the breaker is
    /// closed, at most `PROBE_WAIT` when it is this request's turn to probe, None (straight to
    /// the spool) otherwise.
    pub fn kafka_deadline(&self, deadline: Instant) -> Option<Instant> {
        if self.is_closed() {
            Some(deadline)
        } else if crate::at_most_every(&self.last_probe_ms, self.probe_every) {
            Some(deadline.min(Instant::now() + PROBE_WAIT))
        } else {
            None
        }
    }

    pub fn success(&self) {
        if self.opened_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("kafka acknowledges again: requests go to kafka first");
        }
    }

    /// Opens the breaker; true if it was closed until now.
    pub fn failure(&self) -> bool {
        let now = now_ms().max(1);
        let opened = self
            .opened_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if opened {
            self.last_probe_ms.store(now, Ordering::Relaxed);
            tracing::warn!("kafka did not acknowledge: requests go to the spool until it does");
        }
        opened
    }

    pub fn is_closed(&self) -> bool {
        self.opened_ms.load(Ordering::Relaxed) == 0
    }

    /// Learns from a batch: a retryable failure opens the breaker; acknowledgements with none
    /// close it; records only refused for good (possibly without reaching a broker, e.g. too
    /// large) say nothing about Kafka's health.
    pub fn observe(&self, out: &PartialOutcome) {
        if !out.unacked.is_empty() {
            self.failure();
        } else if out.any_acked {
            self.success();
        }
    }
}

/// The replayer's view of Kafka: successes close the breaker, retryable failures open it. A batch
/// is handed over in chunks sized by live pressure (`pace`).
struct ReplayToKafka {
    kafka: Arc<KafkaSink>,
    breaker: Arc<Breaker>,
    pace: Arc<pace::Pace>,
    /// Set once at start-up (`Sink::attach_audit`): the books replayed records are counted in.
    audit: std::sync::OnceLock<Arc<crate::audit::ReplayAudit>>,
}

impl ReplayTarget for ReplayToKafka {
    fn produce<'a>(
        &'a self,
        records: &'a [Record],
        deadline: Instant,
    ) -> BoxFuture<'a, ReplayResult> {
        Box::pin(async move {
            if let Some(audit) = self.audit.get() {
                // Nothing inherited is delivered before the audit has counted it as pending.
                audit.inventoried().await;
            }
            let mut result = ReplayResult {
                retry: Vec::new(),
                refused: Vec::new(),
            };
            let mut start = 0;
            while start < records.len() {
                let end = start + self.pace.chunk(records.len() - start);
                let out = self
                    .kafka
                    .send_partial(&records[start..end], deadline, Duration::from_millis(200))
                    .await;
                self.breaker.observe(&out);
                let failed = !out.unacked.is_empty();
                result.retry.extend(out.unacked.iter().map(|i| i + start));
                result.refused.extend(
                    out.refused
                        .into_iter()
                        .map(|(i, reason)| (i + start, reason.to_string())),
                );
                if failed {
                    // Kafka is not acknowledging: the rest waits for the replayer's retry.
                    result.retry.extend(end..records.len());
                    break;
                }
                self.pace.adjust(records.len());
                start = end;
            }
            result
        })
    }

    fn acknowledged(&self, record: &Record) {
        if let Some(a) = self.audit.get() {
            a.acknowledged(record);
        }
    }

    fn quarantined(&self, record: &Record) {
        if let Some(a) = self.audit.get() {
            a.quarantined(record);
        }
    }
}

/// The replayer's Kafka target on its own (no live traffic to share a breaker with), for
/// `eventpipe spool drain`: the same produce call and refusal classes as the gateway's replayer.
/// With `audit`, delivered and quarantined records are counted in its books as the gateway's
/// replayer counts them (nothing is sent before `audit` says its inventory is done).
pub fn replay_target(
    kafka: Arc<KafkaSink>,
    audit: Option<Arc<crate::audit::ReplayAudit>>,
) -> Arc<dyn ReplayTarget> {
    let slot = std::sync::OnceLock::new();
    if let Some(a) = audit {
        let _ = slot.set(a);
    }
    Arc::new(ReplayToKafka {
        kafka,
        breaker: Arc::new(Breaker::new(Duration::from_secs(5))),
        pace: Arc::default(),
        audit: slot,
    })
}

/// Kafka with the spool behind it.
pub struct FallbackSink {
    kafka: Arc<KafkaSink>,
    spool: Spool,
    breaker: Arc<Breaker>,
    /// Live acknowledgement latency, read by the replayer to size its chunks.
    pace: Arc<pace::Pace>,
    target: Arc<ReplayToKafka>,
    replayer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    gauges: tokio::task::JoinHandle<()>,
}

impl FallbackSink {
    /// Wires Kafka and the spool and starts the replayer. Needs a Tokio runtime.
    pub fn new(kafka: Arc<KafkaSink>, spool: Spool, replay: ReplayOptions) -> FallbackSink {
        FallbackSink::build(kafka, spool, replay, None)
    }

    /// [`FallbackSink::new`] with the audit books attached before the replayer starts, so that
    /// no inherited record can be delivered before it is counted (the gateway's way).
    pub fn with_audit(
        kafka: Arc<KafkaSink>,
        spool: Spool,
        replay: ReplayOptions,
        books: Arc<crate::audit::Books>,
    ) -> FallbackSink {
        FallbackSink::build(kafka, spool, replay, Some(books))
    }

    fn build(
        kafka: Arc<KafkaSink>,
        spool: Spool,
        replay: ReplayOptions,
        books: Option<Arc<crate::audit::Books>>,
    ) -> FallbackSink {
        let breaker = Arc::new(Breaker::new(Duration::from_secs(5)));
        let pace = Arc::new(pace::Pace::default());
        let target = Arc::new(ReplayToKafka {
            kafka: kafka.clone(),
            breaker: breaker.clone(),
            pace: pace.clone(),
            audit: std::sync::OnceLock::new(),
        });
        if let Some(books) = books {
            attach(&target, &spool, books);
        }
        let replayer = spawn_replayer(&spool, target.clone(), replay);
        // Set once before anything can scrape: the gauges exist (at 0) from start-up, and a spool
        // that holds records must never be reported empty, not even for the first second.
        spool_gauges(&spool);
        let gauges = {
            let spool = spool.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    spool_gauges(&spool);
                }
            })
        };
        FallbackSink {
            kafka,
            spool,
            breaker,
            pace,
            target,
            replayer: std::sync::Mutex::new(Some(replayer)),
            gauges,
        }
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    async fn send(
        &self,
        mut records: Vec<Record>,
        deadline: Instant,
    ) -> Result<Delivered, SinkError> {
        if records.is_empty() {
            return Ok(Delivered::default());
        }
        let mut kafka_error = None;
        let mut refused = Vec::new();
        let mut spooled: Vec<usize> = (0..records.len()).collect();
        if let Some(kafka_deadline) = self.breaker.kafka_deadline(deadline) {
            let started = Instant::now();
            let out = self
                .kafka
                .send_partial(&records, kafka_deadline, Duration::ZERO)
                .await;
            self.breaker.observe(&out);
            if out.unacked.is_empty() {
                self.pace.observe_live(started.elapsed());
                return Ok(Delivered {
                    refused: out.refused,
                    ..Delivered::default()
                });
            }
            kafka_error = out.error;
            refused = out.refused;
            // Only the retryable ones are spooled.
            spooled = out.unacked;
            let mut keep = spooled.iter().copied().peekable();
            let mut i = 0;
            records.retain(|_| {
                let wanted = keep.peek() == Some(&i);
                if wanted {
                    keep.next();
                }
                i += 1;
                wanted
            });
        }
        if let Err(spool_error) = self.spool.append(&records).await {
            tracing::debug!(kafka = ?kafka_error, spool = %spool_error, "neither kafka nor the spool took the batch");
            return Err(spool_error);
        }
        let spooled_events = records
            .iter()
            .filter(|r| matches!(r.kind, RecordKind::Event { .. }))
            .count();
        Ok(Delivered {
            spooled_events,
            spooled_records: records.len(),
            spooled,
            refused,
        })
    }
}

impl Sink for FallbackSink {
    fn send_batch(
        &self,
        records: Vec<Record>,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Delivered, SinkError>> {
        Box::pin(self.send(records, deadline))
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        self.kafka.flush(timeout)
    }

    /// Ready when Kafka is reachable and acknowledging, or the spool can take events.
    fn is_ready(&self) -> bool {
        (self.kafka.is_ready() && self.breaker.is_closed()) || self.spool.check_accepting().is_ok()
    }

    fn retry_after_secs(&self) -> u64 {
        self.spool.retry_after_secs()
    }

    /// Also counts, as pending, what an earlier process left in the spool (read in the
    /// background; the replayer waits for it). Call before the first request.
    fn attach_audit(&self, books: Arc<crate::audit::Books>) {
        attach(&self.target, &self.spool, books);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.spool.close().await;
            let replayer = self
                .replayer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(r) = replayer {
                let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
            }
            self.gauges.abort();
        })
    }
}

#[cfg(test)]
mod tests;

/// The spool's gauges (`eventpipe_spool_*`) from its current stats.
fn spool_gauges(spool: &Spool) {
    spool.publish_gauges();
}

/// Points the replayer's target at `books` and counts, as pending, what an earlier process
/// left in the spool (read in the background; the replayer waits for it). Once only: a second
/// call is ignored.
fn attach(target: &ReplayToKafka, spool: &Spool, books: Arc<crate::audit::Books>) {
    let enabled = books.enabled();
    let audit = Arc::new(crate::audit::ReplayAudit::new(books));
    if target.audit.set(audit.clone()).is_err() {
        return;
    }
    if !enabled {
        audit.inventory_done();
        return;
    }
    let inventory = spool.inventory();
    tokio::task::spawn_blocking(move || {
        /// Replay must never wait for an inventory that ended early (a panic).
        struct Done(Arc<crate::audit::ReplayAudit>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.inventory_done();
            }
        }
        let done = Done(audit);
        let mut n = 0u64;
        inventory.for_each_record(|r| {
            done.0.inherited(r);
            n += 1;
        });
        drop(done);
        if n > 0 {
            tracing::info!(
                records = n,
                "audit: counted the records left in the spool as pending"
            );
        }
    });
}
