//! The Kafka side of a benchmark: the bare-producer ceiling and the count of what landed.
//!
//! The ceiling produces the very records the gateway would write for the generator's bodies
//! (encoded once, up front, with the gateway's own `pipeline::process`) straight to the broker,
//! with the gateway's producer settings (`sink::kafka::producer_config`: idempotent, acks=all,
//! lz4, linger 5 ms) and at most as many messages in flight as the gateway can have (connections
//! × events per request): what the gateway would reach if HTTP, JSON and validation were free.
//!
//! Counting reads every partition of the given topics from the beginning until no message came
//! for `idle`. Tansu's memory engine reports a stale high watermark, so the watermark cannot tell
//! when to stop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use eventpipe::config::Limits;
use eventpipe::pipeline::{self, Bundle, PipelineConfig};
use eventpipe::schema::Registry;
use eventpipe::sink::Record;
use eventpipe::thrift::Enrichment;
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::IntoOpaque;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::gen::Generator;

/// Runs every template through the gateway's pipeline: the records it would produce.
pub fn encode_templates(
    gen: &Generator,
    registry: &Registry,
    topic_prefix: &str,
    dead_letter_topic: &str,
) -> anyhow::Result<Vec<Record>> {
    let cfg = PipelineConfig::new(Limits::default(), topic_prefix, dead_letter_topic, registry);
    let enrichment = loadtest_enrichment();
    let mut records = Vec::new();
    for t in &gen.templates {
        let body = t.fresh_body();
        let bundle = Bundle::parse(&body, cfg.limits.max_depth).context("template body")?;
        let mut enrichment = enrichment.clone();
        enrichment.sent_at = bundle.sent_at.clone();
        let processed =
            pipeline::process(&bundle, registry, &cfg, &enrichment).context("template body")?;
        records.extend(processed.records);
    }
    Ok(records)
}

/// What the gateway would know about a loopback request from this tool.
pub fn loadtest_enrichment() -> Enrichment {
    Enrichment {
        received_at_ms: 1_795_000_000_000,
        client_ip: Some("127.0.0.1".into()),
        user_agent: Some("eventpipe-loadtest".into()),
        collector_host: "loadtest".into(),
        collector_version: env!("CARGO_PKG_VERSION").into(),
        sent_at: None,
        origin: None,
    }
}

/// Counts acknowledgements.
#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct CeilingContext(Arc<Acks>);

impl ClientContext for CeilingContext {}

impl ProducerContext for CeilingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What the bare producer reached.
pub struct CeilingResult {
    /// Acknowledged within the measured window.
    pub events: u64,
    pub payload_bytes: u64,
    pub elapsed: Duration,
    /// Every acknowledged record (warm-up and drain included), for the Kafka check.
    pub total_acked: u64,
    pub failed: u64,
    /// This process's CPU seconds while producing.
    pub cpu_secs: f64,
}

impl CeilingResult {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Produces `records` round and round for `warmup + duration` with at most `max_in_flight`
/// unacknowledged; blocking (run it on a plain thread).
pub fn produce_ceiling(
    brokers: &str,
    overrides: &BTreeMap<String, String>,
    records: &[Record],
    max_in_flight: u64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<CeilingResult> {
    anyhow::ensure!(!records.is_empty(), "no records to produce");
    let acks = Arc::new(Acks::default());
    let config = eventpipe::sink::kafka::producer_config(brokers, overrides);
    let producer: ThreadedProducer<CeilingContext> = config
        .create_with_context(CeilingContext(acks.clone()))
        .context("creating the producer")?;
    let cpu0 = crate::procs::self_cpu_secs();
    let t0 = Instant::now();
    let window_start = t0 + warmup;
    let end = window_start + duration;
    let (mut sent, mut acked_at_start, mut payload_bytes) = (0u64, None, 0u64);
    let mut i = 0usize;
    while Instant::now() < end {
        if acked_at_start.is_none() && Instant::now() >= window_start {
            acked_at_start = Some(acks.ok.load(Ordering::Relaxed));
        }
        let done = acks.ok.load(Ordering::Relaxed) + acks.failed.load(Ordering::Relaxed);
        if sent - done >= max_in_flight {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let rec = &records[i % records.len()];
        match producer.send(base_record(rec, ())) {
            Ok(()) => {
                sent += 1;
                i += 1;
                if acked_at_start.is_some() {
                    payload_bytes += rec.payload.len() as u64;
                }
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => anyhow::bail!("produce failed: {e}"),
        }
    }
    let acked_at_end = acks.ok.load(Ordering::Relaxed);
    let elapsed = end.duration_since(window_start);
    let cpu_secs = crate::procs::self_cpu_secs() - cpu0;
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    Ok(CeilingResult {
        events: acked_at_end - acked_at_start.unwrap_or(0),
        payload_bytes,
        elapsed,
        total_acked: acks.ok.load(Ordering::Relaxed),
        failed: acks.failed.load(Ordering::Relaxed),
        cpu_secs,
    })
}

/// The message the gateway would send for `rec`, with its headers.
fn base_record<D: IntoOpaque>(rec: &Record, opaque: D) -> BaseRecord<'_, Vec<u8>, Vec<u8>, D> {
    let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
    for (k, v) in &rec.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut base = BaseRecord::with_opaque_to(&rec.topic, opaque)
        .payload(&rec.payload)
        .headers(headers);
    if let Some(key) = &rec.key {
        base = base.key(key);
    }
    base
}

/// One batch of the open loop: counts its deliveries down, records its latency on the last.
struct BatchAck {
    remaining: AtomicU64,
    due: Instant,
    measured: bool,
    latency: Arc<Mutex<Histogram<u64>>>,
    failed: Arc<AtomicU64>,
}

struct BatchContext;

impl ClientContext for BatchContext {}

impl ProducerContext for BatchContext {
    type DeliveryOpaque = Arc<BatchAck>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<BatchAck>) {
        if result.is_err() {
            batch.failed.fetch_add(1, Ordering::Relaxed);
        }
        if batch.remaining.fetch_sub(1, Ordering::AcqRel) == 1 && batch.measured {
            let micros = batch.due.elapsed().as_micros() as u64;
            if let Ok(mut h) = batch.latency.lock() {
                let _ = h.record(micros.max(1));
            }
        }
    }
}

/// The latency floor: batches of `batch` records (one request's worth) produced at `rate`
/// batches per second, each timed from its intended send time until its last acknowledgement,
/// exactly as the gateway's answer waits for its last ack. Blocking.
pub fn produce_open_loop(
    brokers: &str,
    overrides: &BTreeMap<String, String>,
    records: &[Record],
    batch: usize,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    anyhow::ensure!(records.len() >= batch && batch > 0, "not enough records");
    let config = eventpipe::sink::kafka::producer_config(brokers, overrides);
    let producer: ThreadedProducer<BatchContext> = config
        .create_with_context(BatchContext)
        .context("creating the producer")?;
    let latency = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?));
    let failed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let (window_start, end) = (t0 + warmup, t0 + warmup + duration);
    let batches = records.len() / batch;
    let mut sent = 0u64;
    for n in 0u64.. {
        let due = t0 + Duration::from_secs_f64(n as f64 / rate);
        if due >= end {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ack = Arc::new(BatchAck {
            remaining: AtomicU64::new(batch as u64),
            due,
            measured: due >= window_start,
            latency: latency.clone(),
            failed: failed.clone(),
        });
        let first = (n as usize % batches) * batch;
        for rec in &records[first..first + batch] {
            let mut base = base_record(rec, ack.clone());
            loop {
                match producer.send(base) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), b)) => {
                        base = b;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err((e, _)) => anyhow::bail!("produce failed: {e}"),
                }
            }
            sent += 1;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    let hist = latency
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok((hist, sent, failed.load(Ordering::Relaxed)))
}

/// Messages per topic, read from the beginning of every partition until `idle` passes without
/// one (or `max` in all). Blocking.
pub fn count_messages(
    brokers: &str,
    topics: &[String],
    idle: Duration,
    max: Duration,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("loadtest-count-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the consumer")?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata for {topic}"))?;
        let partitions: BTreeSet<i32> = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        for p in partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut counts: BTreeMap<String, u64> = topics.iter().map(|t| (t.clone(), 0)).collect();
    let started = Instant::now();
    let mut last = Instant::now();
    while last.elapsed() < idle && started.elapsed() < max {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                *counts.entry(msg.topic().to_owned()).or_default() += 1;
                last = Instant::now();
            }
            Some(Err(e)) => anyhow::bail!("consuming: {e}"),
            None => {}
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{shipped_mix, GenConfig};

    #[test]
    fn the_ceiling_produces_what_the_gateway_would() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let registry = Registry::load(&root).unwrap();
        let gen = Generator::new(&GenConfig {
            events_per_request: 50,
            event_bytes: 500,
            invalid_share: 0.05,
            schemas: shipped_mix(),
            templates: 8,
            seed: 3,
        });
        let records = encode_templates(&gen, &registry, "p.", "p.invalid").unwrap();
        assert_eq!(records.len(), 8 * 50, "one record per event");
        let invalid: usize = gen.templates.iter().map(|t| t.invalid).sum();
        let dead = records.iter().filter(|r| &*r.topic == "p.invalid").count();
        assert_eq!(dead, invalid, "each invalid event becomes a dead letter");
        assert!(records.iter().all(|r| r.topic.starts_with("p.")));
    }
}
