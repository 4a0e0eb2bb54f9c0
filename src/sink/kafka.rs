//! The Kafka sink: idempotent producers (acks=all), each polled by its own thread.
//!
//! Sharding (`kafka.producers`, default 1): the topics are spread over N producer instances by a
//! stable hash of the topic name, so every record of a topic goes through the same producer.
//! Why: librdkafka puts one partition in each ProduceRequest (confluentinc/librdkafka#1700) and
//! an idempotent producer keeps at most 5 requests in flight per broker connection; with hundreds
//! of topics the requests are many and small, and one producer's connection becomes the limit.
//! N producers have N connections per broker, each with its own 5 in flight. What still holds:
//! idempotence and ordering are per producer and partition, and a partition (a topic's) is only
//! ever written by one producer of this process, so records with the same key keep their order
//! and are never duplicated by the producer's own retries. Sharding by key instead would put
//! one partition behind several producers and lose that.
//!
//! Throughput design: no future or task per event. A request's records share one `BatchWaiter`
//! (an atomic countdown plus a `Notify`) passed to librdkafka as the delivery opaque; the polling
//! thread counts deliveries down and wakes the request once, when the last one is acknowledged.
//!
//! Error classes (see `classify`): a full local queue is back-pressure and is retried until the
//! request's deadline; unknown topic, oversized message and authorization failures are permanent;
//! everything else is retryable by the client (librdkafka has already retried internally).
//! Each record's fate is classified once, where librdkafka reports it (synchronously from `send`,
//! e.g. a record over `message.max.bytes` or a topic already known not to exist, or later in its
//! delivery report), and kept per record in the batch's waiter: a batch can be part acknowledged,
//! part retryable (spool it), part refused for good (never spool it: no retry can succeed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientContext, Statistics};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{BoxFuture, Delivered, Record, Sink, SinkError};
use crate::metrics as m;

pub mod client;
pub use client::client_config;

/// A record's fate in `BatchWaiter::fates`: not known yet, acknowledged, failed retryably, or
/// `REFUSED + i` for the permanent error `PERMANENT[i]`.
const PENDING: u8 = 0;
const ACKED: u8 = 1;
const RETRYABLE: u8 = 2;
const REFUSED: u8 = 3;

/// The errors retrying cannot fix, with the bounded reason reported for them
/// (`kafka_rejected:` + librdkafka's error name, lower case, without a local error's `_`).
const PERMANENT: [(RDKafkaErrorCode, &str); 12] = [
    (
        RDKafkaErrorCode::MessageSizeTooLarge,
        "kafka_rejected:msg_size_too_large",
    ),
    (
        RDKafkaErrorCode::InvalidMessageSize,
        "kafka_rejected:invalid_msg_size",
    ),
    (
        RDKafkaErrorCode::MessageBatchTooLarge,
        "kafka_rejected:record_list_too_large",
    ),
    (
        RDKafkaErrorCode::UnknownTopic,
        "kafka_rejected:unknown_topic",
    ),
    (
        RDKafkaErrorCode::UnknownPartition,
        "kafka_rejected:unknown_partition",
    ),
    (
        RDKafkaErrorCode::UnknownTopicOrPartition,
        "kafka_rejected:unknown_topic_or_part",
    ),
    (
        RDKafkaErrorCode::InvalidTopic,
        "kafka_rejected:topic_exception",
    ),
    (
        RDKafkaErrorCode::TopicAuthorizationFailed,
        "kafka_rejected:topic_authorization_failed",
    ),
    (
        RDKafkaErrorCode::ClusterAuthorizationFailed,
        "kafka_rejected:cluster_authorization_failed",
    ),
    (
        RDKafkaErrorCode::InvalidRecord,
        "kafka_rejected:invalid_record",
    ),
    (
        RDKafkaErrorCode::InvalidTimestamp,
        "kafka_rejected:invalid_timestamp",
    ),
    (
        RDKafkaErrorCode::PolicyViolation,
        "kafka_rejected:policy_violation",
    ),
];

/// The librdkafka code of an error, if it has one.
fn error_code(err: &KafkaError) -> Option<RDKafkaErrorCode> {
    match err {
        KafkaError::MessageProduction(c) => Some(*c),
        other => other.rdkafka_error_code(),
    }
}

/// Where `err` is in `PERMANENT`, if it is permanent.
fn permanent_index(err: &KafkaError) -> Option<usize> {
    let code = error_code(err)?;
    PERMANENT.iter().position(|(c, _)| *c == code)
}

/// The bounded `kafka_rejected:<code>` reason of a permanent error (None if retryable).
pub fn refusal_reason(err: &KafkaError) -> Option<&'static str> {
    permanent_index(err).map(|i| PERMANENT[i].1)
}

/// Counts a request's deliveries down and wakes its waiter on the last one; remembers each
/// record's fate (one byte per record, no allocation per delivery) so only the retryable ones
/// need the spool.
pub struct BatchWaiter {
    remaining: AtomicUsize,
    fates: Vec<AtomicU8>,
    first_error: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl BatchWaiter {
    fn new(n: usize) -> Self {
        BatchWaiter {
            remaining: AtomicUsize::new(n),
            fates: (0..n).map(|_| AtomicU8::new(PENDING)).collect(),
            first_error: Mutex::new(None),
            done: Notify::new(),
        }
    }

    /// Settles record `index`: acknowledged when `error` is None, else refused or retryable.
    fn settle(&self, index: usize, error: Option<&KafkaError>) {
        let fate = match error {
            None => ACKED,
            Some(e) => match permanent_index(e) {
                Some(p) => REFUSED + p as u8,
                None => {
                    let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.is_none() {
                        *slot = Some(e.clone());
                    }
                    RETRYABLE
                }
            },
        };
        if let Some(f) = self.fates.get(index) {
            f.store(fate, Ordering::Release);
        }
        self.count_down(1);
    }

    /// `n` records will have no delivery report (never queued): stop waiting for them.
    fn count_down(&self, n: usize) {
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            // notify_one stores a permit if nobody is waiting yet, so this wake is never lost.
            self.done.notify_one();
        }
    }

    /// Splits the records not acknowledged into retryable (including not yet settled) and
    /// refused, with their reasons; also whether any record was acknowledged.
    fn outcome(&self) -> (Vec<usize>, Vec<(usize, &'static str)>, bool) {
        let (mut unacked, mut refused, mut any_acked) = (Vec::new(), Vec::new(), false);
        for (i, f) in self.fates.iter().enumerate() {
            match f.load(Ordering::Acquire) {
                ACKED => any_acked = true,
                PENDING | RETRYABLE => unacked.push(i),
                r => match PERMANENT.get(usize::from(r - REFUSED)) {
                    Some((_, reason)) => refused.push((i, *reason)),
                    None => unacked.push(i),
                },
            }
        }
        (unacked, refused, any_acked)
    }
}

/// The delivery opaque: which request, which record.
pub struct Slot {
    waiter: Arc<BatchWaiter>,
    index: usize,
}

/// The latest statistics of each shard's producer: the gauges report their sums, so the
/// metrics (and the alerts and dashboards on them) mean the same whatever `kafka.producers` is.
#[derive(Default)]
struct ShardStats {
    /// Per shard: queued messages, queued bytes, sent messages, sent bytes.
    shards: Mutex<Vec<[u64; 4]>>,
}

impl ShardStats {
    fn record(&self, shard: usize, values: [u64; 4]) {
        let sums = {
            let mut all = self.shards.lock().unwrap_or_else(|p| p.into_inner());
            if all.len() <= shard {
                all.resize(shard + 1, [0; 4]);
            }
            all[shard] = values;
            all.iter().fold([0u64; 4], |mut acc, v| {
                for (a, x) in acc.iter_mut().zip(v) {
                    *a = a.saturating_add(*x);
                }
                acc
            })
        };
        metrics::gauge!(m::PRODUCER_QUEUE_MESSAGES).set(sums[0] as f64);
        metrics::gauge!(m::PRODUCER_QUEUE_BYTES).set(sums[1] as f64);
        metrics::gauge!(m::PRODUCER_TX_MESSAGES).set(sums[2] as f64);
        metrics::gauge!(m::PRODUCER_TX_BYTES).set(sums[3] as f64);
    }
}

/// librdkafka callbacks: deliveries, errors and statistics.
pub struct GatewayContext {
    /// Set on every librdkafka error: "check whether this producer is now unusable".
    fatal: Arc<AtomicBool>,
    /// Which shard this producer is, and where the shards' statistics are summed.
    shard: usize,
    stats: Arc<ShardStats>,
}

impl ClientContext for GatewayContext {
    fn stats(&self, stats: Statistics) {
        let counts = |v: i64| u64::try_from(v).unwrap_or(0);
        self.stats.record(
            self.shard,
            [
                stats.msg_cnt,
                stats.msg_size,
                counts(stats.txmsgs),
                counts(stats.txmsg_bytes),
            ],
        );
        let mut up = 0;
        for broker in stats.brokers.values() {
            if broker.state == "UP" {
                up += 1;
            }
            if broker.nodeid >= 0 {
                if let Some(rtt) = &broker.rtt {
                    metrics::gauge!(m::BROKER_RTT, "broker" => broker.nodeid.to_string())
                        .set(rtt.avg as f64 / 1e6);
                }
            }
        }
        metrics::gauge!(m::BROKERS_UP).set(f64::from(up));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports a fatal error with its underlying code (e.g. UnknownProducerId);
        // whether it was fatal is asked of the client when the flag is next looked at.
        tracing::warn!(%error, reason, "librdkafka error");
        self.fatal.store(true, Ordering::SeqCst);
    }
}

impl ProducerContext for GatewayContext {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let error = result.as_ref().err().map(|(e, _)| e);
        slot.waiter.settle(slot.index, error);
    }
}

/// What became of a batch handed to Kafka. Indices are into the batch; a record in neither list
/// was acknowledged.
#[derive(Debug, Default)]
pub struct PartialOutcome {
    /// Records not acknowledged for a reason that may pass (timed out, retryable error, queue
    /// full, never queued): these may be spooled and retried.
    pub unacked: Vec<usize>,
    /// Records Kafka refused for good, with a bounded reason (`kafka_rejected:<code>`).
    pub refused: Vec<(usize, &'static str)>,
    /// Whether at least one record was acknowledged (Kafka answered).
    pub any_acked: bool,
    /// Why the `unacked` ones were not, when there are some.
    pub error: Option<SinkError>,
}

/// Sorts a librdkafka error into the sink's classes.
pub fn classify(err: &KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    if permanent_index(err).is_some() {
        return SinkError::Permanent(err.to_string());
    }
    match error_code(err) {
        Some(C::QueueFull) => SinkError::QueueFull,
        Some(C::MessageTimedOut) => SinkError::Timeout,
        _ => SinkError::Retryable(err.to_string()),
    }
}

/// How long librdkafka keeps retrying a message before failing it.
pub const MESSAGE_TIMEOUT_MS: u64 = 30_000;

/// How long a topic missing from the cluster's metadata may be waited for before its records
/// are refused (librdkafka's default, 30 s, outlasts the request's ack deadline).
pub const TOPIC_PROPAGATION_MS: u64 = 1_000;

/// The producer settings we rely on; `overrides` (the config's raw librdkafka map) win.
pub fn producer_config(brokers: &str, overrides: &BTreeMap<String, String>) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "262144")
        // A request gives up (and spools) at its ack deadline; the message keeps retrying for
        // this long meanwhile. Longer means more duplicates after an outage (spooled and later
        // also delivered), shorter means more idempotent-producer epoch bumps.
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
        // A topic that does not exist is a misconfiguration (`topics create` makes them): never
        // create it with broker defaults, and refuse its records after at most this long
        // instead of holding them until they time out, which would spool them and retry them
        // forever. A topic created less than this before its first event may see those events
        // refused (dead-lettered, not lost).
        .set("allow.auto.create.topics", "false")
        .set(
            "topic.metadata.propagation.max.ms",
            TOPIC_PROPAGATION_MS.to_string(),
        )
        .set("statistics.interval.ms", "5000")
        .set("client.id", "eventpipe");
    for (k, v) in overrides {
        cfg.set(k, v);
    }
    cfg
}

/// A producer and its fatal-error flag.
struct ProducerHandle {
    producer: ThreadedProducer<GatewayContext>,
    fatal: Arc<AtomicBool>,
}

impl ProducerHandle {
    fn create(
        shard: usize,
        config: &ClientConfig,
        stats: &Arc<ShardStats>,
    ) -> Result<ProducerHandle, KafkaError> {
        let fatal = Arc::new(AtomicBool::new(false));
        let producer = config.create_with_context(GatewayContext {
            fatal: fatal.clone(),
            shard,
            stats: stats.clone(),
        })?;
        Ok(ProducerHandle { producer, fatal })
    }
}

/// One producer instance of the sink: its settings and the producer currently in use.
struct Shard {
    index: usize,
    config: ClientConfig,
    current: RwLock<Arc<ProducerHandle>>,
}

/// The most producers `kafka.producers` may ask for.
pub const MAX_PRODUCERS: usize = 32;

/// The shard of `topic` among `shards`: FNV-1a of the name, so it never changes between runs
/// or hosts (a restarted gateway produces each topic through the same shard index).
fn shard_of(topic: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let hash = topic.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % shards as u64) as usize
}

/// Produces records to Kafka and waits for their acknowledgements.
pub struct KafkaSink {
    shards: Vec<Shard>,
    stats: Arc<ShardStats>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl KafkaSink {
    /// One producer and a thread that checks broker metadata every `probe_every`.
    pub fn new(config: &ClientConfig, probe_every: Duration) -> Result<KafkaSink, KafkaError> {
        Self::sharded(config, probe_every, 1)
    }

    /// `producers` producers (1..=[`MAX_PRODUCERS`]) with the topics sharded across them (see
    /// the module doc), and one metadata probe every `probe_every`. With more than one, each
    /// producer's `client.id` gets its index as a suffix, so brokers can tell them apart.
    pub fn sharded(
        config: &ClientConfig,
        probe_every: Duration,
        producers: usize,
    ) -> Result<KafkaSink, KafkaError> {
        let producers = producers.clamp(1, MAX_PRODUCERS);
        let stats = Arc::new(ShardStats::default());
        let shards = (0..producers)
            .map(|index| {
                let mut config = config.clone();
                if producers > 1 {
                    let id = config.get("client.id").unwrap_or("eventpipe").to_owned();
                    config.set("client.id", format!("{id}-{index}"));
                }
                let producer = ProducerHandle::create(index, &config, &stats)?;
                Ok(Shard {
                    index,
                    config,
                    current: RwLock::new(Arc::new(producer)),
                })
            })
            .collect::<Result<Vec<_>, KafkaError>>()?;
        let sink = KafkaSink {
            shards,
            stats,
            ready: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let config = &sink.shards[0].config;
        // The probe is a separate metadata-only client, so replacing the producer can't strand it.
        // It connects as the producer does (security settings included), else a SASL/SSL
        // cluster would look down to it.
        let probe: BaseConsumer = client::shared_part(config).create()?;
        let (ready, stop) = (sink.ready.clone(), sink.stop.clone());
        std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ok = probe
                        .fetch_metadata(None, Duration::from_secs(2))
                        .map(|md| !md.brokers().is_empty())
                        .unwrap_or(false);
                    if ok != ready.swap(ok, Ordering::Relaxed) {
                        tracing::info!(reachable = ok, "kafka metadata reachability changed");
                    }
                    let mut slept = Duration::ZERO;
                    while slept < probe_every && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        slept += Duration::from_millis(50);
                    }
                }
            })
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(sink)
    }

    /// The current producer, replaced first if it hit a fatal error (e.g. the idempotent
    /// producer's UNKNOWN_PRODUCER_ID after the broker lost its state). Records in flight on the
    /// old one fail when it is dropped (librdkafka purges them), so their requests spool them.
    fn producer(&self, shard: usize) -> Arc<ProducerHandle> {
        let shard = &self.shards[shard];
        let current = shard
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !current.fatal.swap(false, Ordering::SeqCst) {
            return current;
        }
        let Some((code, reason)) = current.producer.client().fatal_error() else {
            return current;
        };
        tracing::error!(
            ?code,
            reason,
            "librdkafka fatal error: replacing the producer"
        );
        let mut slot = shard.current.write().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&slot, &current) {
            match ProducerHandle::create(shard.index, &shard.config, &self.stats) {
                Ok(fresh) => {
                    *slot = Arc::new(fresh);
                    metrics::counter!(m::PRODUCER_REPLACED).increment(1);
                    tracing::warn!(
                        producer = shard.index,
                        "kafka producer replaced after a fatal error"
                    );
                }
                Err(e) => tracing::error!(error = %e, "could not replace the failed producer"),
            }
        }
        slot.clone()
    }

    /// Raises a fatal error in the current producer, as librdkafka would (tests).
    #[cfg(test)]
    pub fn inject_fatal_error(&self) {
        self.inject_fatal_error_in(0);
    }

    /// Raises a fatal error in shard `shard`'s current producer (tests).
    #[cfg(test)]
    pub fn inject_fatal_error_in(&self, shard: usize) {
        let current = self.producer(shard);
        let reason = std::ffi::CString::new("test").expect("no NUL");
        // SAFETY: the client pointer is valid while `current` holds the producer.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                current.producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
                reason.as_ptr(),
            );
        }
    }

    /// Hands every record to the producer and waits, until `deadline`, for acknowledgements.
    /// A full local queue is waited on for at most `queue_full_wait` before the remaining
    /// records are reported unacknowledged.
    pub async fn send_partial(
        &self,
        records: &[Record],
        deadline: Instant,
        queue_full_wait: Duration,
    ) -> PartialOutcome {
        if records.is_empty() {
            return PartialOutcome::default();
        }
        // Each shard's current producer, looked up (and replaced if it failed) once per batch.
        let handles: Vec<Arc<ProducerHandle>> =
            (0..self.shards.len()).map(|i| self.producer(i)).collect();
        let n = records.len();
        let waiter = Arc::new(BatchWaiter::new(n));
        let started = Instant::now();
        let give_up_on_full = deadline.min(Instant::now() + queue_full_wait);
        let mut queue_full = false;
        'records: for (i, rec) in records.iter().enumerate() {
            loop {
                let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
                for (k, v) in &rec.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let slot = Box::new(Slot {
                    waiter: waiter.clone(),
                    index: i,
                });
                let mut base = BaseRecord::with_opaque_to(&rec.topic, slot)
                    .payload(&rec.payload)
                    .headers(headers);
                if let Some(key) = &rec.key {
                    base = base.key(key);
                }
                let producer = &handles[shard_of(&rec.topic, handles.len())].producer;
                let full = match producer.send(base) {
                    Ok(()) => false,
                    Err((e, _)) => match classify(&e) {
                        SinkError::QueueFull => true,
                        // Refused before it was queued (too large, topic known not to exist
                        // or not writable) or failed locally: settled now, no report will come.
                        _ => {
                            waiter.settle(i, Some(&e));
                            false
                        }
                    },
                };
                if !full {
                    break;
                }
                if Instant::now() >= give_up_on_full {
                    // The rest stay pending: reported unacknowledged (retryable).
                    queue_full = true;
                    waiter.count_down(n - i);
                    break 'records;
                }
                // Back-pressure: let the polling thread drain the queue.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let timed_out = tokio::time::timeout_at(deadline, waiter.done.notified())
            .await
            .is_err();
        let (unacked, refused, any_acked) = waiter.outcome();
        if unacked.is_empty() {
            if refused.is_empty() {
                metrics::histogram!(m::PRODUCE_LATENCY).record(started.elapsed().as_secs_f64());
            }
            return PartialOutcome {
                refused,
                any_acked,
                ..PartialOutcome::default()
            };
        }
        let first_error = waiter
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let error = if queue_full {
            SinkError::QueueFull
        } else if timed_out {
            SinkError::Timeout
        } else {
            first_error
                .map(|e| classify(&e))
                .unwrap_or(SinkError::Timeout)
        };
        PartialOutcome {
            unacked,
            refused,
            any_acked,
            error: Some(error),
        }
    }

    /// Without a spool: every record acknowledged or refused for good, or the batch fails.
    async fn send(&self, records: Vec<Record>, deadline: Instant) -> Result<Delivered, SinkError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let outcome = self.send_partial(&records, deadline, wait).await;
        match outcome.error {
            Some(e) if !outcome.unacked.is_empty() => Err(e),
            _ => Ok(Delivered {
                refused: outcome.refused,
                ..Delivered::default()
            }),
        }
    }
}

impl Sink for KafkaSink {
    fn send_batch(
        &self,
        records: Vec<Record>,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<Delivered, SinkError>> {
        Box::pin(self.send(records, deadline))
    }

    /// Flushes every shard; `timeout` bounds them all together.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        let handles: Vec<_> = (0..self.shards.len()).map(|i| self.producer(i)).collect();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let deadline = std::time::Instant::now() + timeout;
                for handle in handles {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    handle.producer.flush(left)?;
                }
                Ok(())
            })
            .await
            .map_err(|_| SinkError::Closed)?
            .map_err(|e: KafkaError| classify(&e))
        })
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
