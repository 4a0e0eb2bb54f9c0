//! The Kafka sink: one idempotent producer (acks=all) per process, polled by its own thread.
//!
//! Throughput design: no future or task per event. A request's records share one `BatchWaiter`
//! (an atomic countdown plus a `Notify`) passed to librdkafka as the delivery opaque; the polling
//! thread counts deliveries down and wakes the request once, when the last one is acknowledged.
//!
//! Error classes (see `classify`): a full local queue is back-pressure and is retried until the
//! request's deadline; unknown topic, oversized message and authorization failures are permanent;
//! everything else is retryable by the client (librdkafka has already retried internally).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Statistics};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{BoxFuture, Record, Sink, SinkError};
use crate::metrics as m;

/// Counts a request's deliveries down and wakes its waiter on the last one.
pub struct BatchWaiter {
    remaining: AtomicUsize,
    first_error: Mutex<Option<KafkaError>>,
    done: Notify,
}

impl BatchWaiter {
    fn new(n: usize) -> Self {
        BatchWaiter {
            remaining: AtomicUsize::new(n),
            first_error: Mutex::new(None),
            done: Notify::new(),
        }
    }

    fn complete(&self, n: usize, error: Option<&KafkaError>) {
        if let Some(e) = error {
            let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.clone());
            }
        }
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            // notify_one stores a permit if nobody is waiting yet, so this wake is never lost.
            self.done.notify_one();
        }
    }
}

/// librdkafka callbacks: deliveries and statistics.
pub struct GatewayContext;

impl ClientContext for GatewayContext {
    fn stats(&self, stats: Statistics) {
        metrics::gauge!(m::PRODUCER_QUEUE_MESSAGES).set(stats.msg_cnt as f64);
        metrics::gauge!(m::PRODUCER_QUEUE_BYTES).set(stats.msg_size as f64);
        metrics::gauge!(m::PRODUCER_TX_MESSAGES).set(stats.txmsgs as f64);
        metrics::gauge!(m::PRODUCER_TX_BYTES).set(stats.txmsg_bytes as f64);
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
}

impl ProducerContext for GatewayContext {
    type DeliveryOpaque = Arc<BatchWaiter>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Arc<BatchWaiter>) {
        waiter.complete(1, result.as_ref().err().map(|(e, _)| e));
    }
}

/// Sorts a librdkafka error into the sink's classes.
pub fn classify(err: &KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    let code = match err {
        KafkaError::MessageProduction(c) => Some(*c),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(C::QueueFull) => SinkError::QueueFull,
        Some(C::MessageTimedOut) => SinkError::Timeout,
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidRecord
            | C::InvalidTopic,
        ) => SinkError::Permanent(err.to_string()),
        _ => SinkError::Retryable(err.to_string()),
    }
}

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
        // The HTTP request gives up long before this; the message keeps retrying meanwhile so a
        // client retry is likely to find it already written (the event id makes it a duplicate
        // consumers can drop).
        .set("message.timeout.ms", "120000")
        .set("statistics.interval.ms", "5000")
        .set("client.id", "eventpipe");
    for (k, v) in overrides {
        cfg.set(k, v);
    }
    cfg
}

/// Produces records to Kafka and waits for their acknowledgements.
pub struct KafkaSink {
    producer: Arc<ThreadedProducer<GatewayContext>>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl KafkaSink {
    /// Creates the producer and a thread that checks broker metadata every `probe_every`.
    pub fn new(config: &ClientConfig, probe_every: Duration) -> Result<KafkaSink, KafkaError> {
        let producer: ThreadedProducer<GatewayContext> =
            config.create_with_context(GatewayContext)?;
        let producer = Arc::new(producer);
        let ready = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (producer, ready, stop) = (producer.clone(), ready.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-probe".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let ok = producer
                            .client()
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
        }
        Ok(KafkaSink {
            producer,
            ready,
            stop,
        })
    }

    async fn send(&self, records: Vec<Record>, deadline: Instant) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        let waiter = Arc::new(BatchWaiter::new(n));
        let started = Instant::now();
        for (i, rec) in records.iter().enumerate() {
            loop {
                let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
                for (k, v) in &rec.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let mut base = BaseRecord::with_opaque_to(&rec.topic, waiter.clone())
                    .payload(&rec.payload)
                    .headers(headers);
                if let Some(key) = &rec.key {
                    base = base.key(key);
                }
                let full = match self.producer.send(base) {
                    Ok(()) => false,
                    Err((e, _)) => match classify(&e) {
                        SinkError::QueueFull => true,
                        _ => {
                            waiter.complete(1, Some(&e));
                            false
                        }
                    },
                };
                if !full {
                    break;
                }
                // Back-pressure: wait for the polling thread to drain the queue, up to the deadline.
                if Instant::now() >= deadline {
                    let unsent = n - i;
                    waiter.complete(
                        unsent,
                        Some(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
                    );
                    return Err(SinkError::QueueFull);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if tokio::time::timeout_at(deadline, waiter.done.notified())
            .await
            .is_err()
        {
            return Err(SinkError::Timeout);
        }
        metrics::histogram!(m::PRODUCE_LATENCY).record(started.elapsed().as_secs_f64());
        let first_error = waiter
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match first_error {
            None => Ok(()),
            Some(e) => Err(classify(&e)),
        }
    }
}

impl Sink for KafkaSink {
    fn send_batch(
        &self,
        records: Vec<Record>,
        deadline: Instant,
    ) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(self.send(records, deadline))
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, Result<(), SinkError>> {
        let producer = self.producer.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || producer.flush(timeout))
                .await
                .map_err(|_| SinkError::Closed)?
                .map_err(|e| classify(&e))
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
