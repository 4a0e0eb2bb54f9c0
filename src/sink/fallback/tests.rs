//! The Kafka-then-spool sink against librdkafka's mock cluster: outages spool, recovery replays.

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::*;
use crate::sink::kafka::producer_config;
use crate::sink::spool::SpoolOptions;

const TOPIC: &str = "events.click";

fn record(i: usize) -> Record {
    Record {
        topic: TOPIC.into(),
        key: Some(format!("k{i}").into_bytes()),
        payload: format!("event-{i}").into_bytes(),
        headers: vec![("event_id", format!("id-{i}"))],
        kind: RecordKind::Event { client_id: None },
    }
}

struct Setup {
    cluster: MockCluster<'static, DefaultProducerContext>,
    sink: FallbackSink,
    _dir: tempfile::TempDir,
}

fn setup(max_bytes: u64) -> Setup {
    setup_with(max_bytes, &[])
}

fn setup_with(max_bytes: u64, extra: &[(&str, &str)]) -> Setup {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let mut overrides = BTreeMap::new();
    overrides.insert("message.timeout.ms".to_string(), "2000".to_string());
    for (k, v) in extra {
        overrides.insert(k.to_string(), v.to_string());
    }
    let kafka = KafkaSink::new(
        &producer_config(&cluster.bootstrap_servers(), &overrides),
        Duration::from_millis(100),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        dir: dir.path().to_owned(),
        max_bytes,
        max_age: Duration::from_secs(3600),
        segment_bytes: 1 << 20,
        seal_after: Duration::from_millis(50),
        io_error_backoff: Duration::from_millis(100),
    })
    .unwrap();
    let replay = ReplayOptions {
        batch_records: 100,
        batch_bytes: 1 << 20,
        ack_timeout: Duration::from_millis(1000),
        max_backoff: Duration::from_millis(200),
        doubtful_refusal_grace: Duration::ZERO,
    };
    let sink = FallbackSink::new(Arc::new(kafka), spool, replay);
    Setup {
        cluster,
        sink,
        _dir: dir,
    }
}

fn deadline(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// Reads every payload in the topic (the mock cluster's watermarks are accurate).
fn topic_payloads(cluster: &MockCluster<'static, DefaultProducerContext>) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "check")
        .create()
        .unwrap();
    let (_, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(5))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while (out.len() as i64) < high && std::time::Instant::now() < until {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    out
}

/// Closed: the request's own deadline. Open: straight to the spool, except a probe now and then
/// that waits only `PROBE_WAIT` (not the full ack deadline) before spooling.
#[tokio::test]
async fn an_open_breaker_probes_briefly_and_otherwise_skips_kafka() {
    let far = Instant::now() + Duration::from_secs(30);
    let b = Breaker::new(Duration::from_secs(3600));
    assert_eq!(b.kafka_deadline(far), Some(far));
    assert!(b.failure());
    assert_eq!(b.kafka_deadline(far), None, "no probe due yet");
    let probing = Breaker::new(Duration::ZERO);
    probing.failure();
    let d = probing.kafka_deadline(far).expect("a probe is due");
    assert!(
        d <= Instant::now() + PROBE_WAIT,
        "probe waits the full deadline"
    );
    probing.success();
    assert_eq!(probing.kafka_deadline(far), Some(far));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_kafka_acknowledges_without_the_spool() {
    let s = setup(1 << 20);
    let d = s
        .sink
        .send_batch((0..10).map(record).collect(), deadline(5000))
        .await
        .unwrap();
    assert_eq!(d, Delivered::default());
    assert!(s.sink.spool().is_empty());
    s.sink.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_spools_then_replays_everything_once_kafka_is_back() {
    let s = setup(1 << 20);
    s.sink
        .send_batch(vec![record(0)], deadline(5000))
        .await
        .unwrap();
    s.cluster.broker_down(1).unwrap();
    let d = s
        .sink
        .send_batch((1..6).map(record).collect(), deadline(300))
        .await
        .unwrap();
    assert_eq!((d.spooled_events, d.spooled_records), (5, 5));
    // The breaker is open now: the next batch goes straight to the spool, without waiting.
    let started = Instant::now();
    let d = s
        .sink
        .send_batch((6..10).map(record).collect(), deadline(3000))
        .await
        .unwrap();
    assert_eq!(d.spooled_events, 4);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "waited for a known-down kafka"
    );
    assert!(s.sink.is_ready(), "a spooling gateway still takes traffic");
    s.cluster.broker_up(1).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while !s.sink.spool().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        s.sink.spool().is_empty(),
        "spool not drained: {:?}",
        s.sink.spool().stats()
    );
    let landed: std::collections::HashSet<String> =
        topic_payloads(&s.cluster).into_iter().collect();
    for i in 0..10 {
        assert!(
            landed.contains(&format!("event-{i}")),
            "event-{i} missing from kafka"
        );
    }
    s.sink.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_and_spool_full_is_refused() {
    let s = setup(300);
    s.cluster.broker_down(1).unwrap();
    let mut last = Ok(Delivered::default());
    for i in 0..20 {
        last = s.sink.send_batch(vec![record(i)], deadline(200)).await;
        if last.is_err() {
            break;
        }
    }
    assert!(matches!(last, Err(SinkError::SpoolFull)), "{last:?}");
    assert!(!s.sink.is_ready(), "full spool and no kafka: not ready");
    s.sink.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_is_replaced_without_losing_requests() {
    let s = setup(1 << 20);
    s.sink
        .send_batch(vec![record(0)], deadline(5000))
        .await
        .unwrap();
    s.sink.kafka.inject_fatal_error();
    // Whatever the fatal producer could not deliver is spooled; later requests use a new one.
    let first = s
        .sink
        .send_batch(vec![record(1)], deadline(2000))
        .await
        .unwrap();
    assert!(first.spooled_events <= 1);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let d = s
            .sink
            .send_batch(vec![record(2)], deadline(2000))
            .await
            .unwrap();
        if d.spooled_events == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "never got back to kafka after the fatal error"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while !s.sink.spool().is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let landed = topic_payloads(&s.cluster);
    for i in 0..3 {
        assert!(
            landed.contains(&format!("event-{i}")),
            "event-{i} missing: {landed:?}"
        );
    }
    s.sink.close().await;
}

/// A record Kafka refuses for good is handed back, never spooled, and does not open the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_is_not_spooled_and_keeps_the_breaker_closed() {
    let s = setup(1 << 20);
    s.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let d = s
        .sink
        .send_batch(vec![record(0)], deadline(5000))
        .await
        .unwrap();
    assert_eq!(d.refused, [(0, "kafka_rejected:msg_size_too_large")]);
    assert_eq!((d.spooled_events, d.spooled_records), (0, 0));
    // A topic the cluster does not have.
    let mut missing = record(1);
    missing.topic = "events.missing".into();
    let d = s
        .sink
        .send_batch(vec![missing], deadline(5000))
        .await
        .unwrap();
    assert_eq!(d.refused.len(), 1, "{d:?}");
    assert!(
        d.refused[0].1.starts_with("kafka_rejected:unknown_topic"),
        "{d:?}"
    );
    assert!(s.sink.spool().is_empty(), "{:?}", s.sink.spool().stats());
    assert!(s.sink.breaker.is_closed(), "a refusal opened the breaker");
    s.sink.close().await;
}

/// Broker down and one record too large: the large one is refused, the others spooled, and the
/// breaker opens (for the retryable failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_spools_only_the_retryable_records() {
    let s = setup_with(1 << 20, &[("message.max.bytes", "2000")]);
    s.sink
        .send_batch(vec![record(0)], deadline(5000))
        .await
        .unwrap();
    s.cluster.broker_down(1).unwrap();
    let mut records: Vec<Record> = (1..5).map(record).collect();
    records[1].payload = vec![b'x'; 5000];
    let d = s.sink.send_batch(records, deadline(300)).await.unwrap();
    assert_eq!(d.refused, [(1, "kafka_rejected:msg_size_too_large")]);
    assert_eq!((d.spooled_events, d.spooled_records), (3, 3));
    assert!(!s.sink.breaker.is_closed());
    s.sink.close().await;
}

/// The replayer's target reports refused records apart, and only retryable ones open the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reports_refused_records_without_opening_the_breaker() {
    let s = setup_with(1 << 20, &[("message.max.bytes", "2000")]);
    let target = ReplayToKafka {
        kafka: s.sink.kafka.clone(),
        breaker: s.sink.breaker.clone(),
        pace: Default::default(),
        audit: Default::default(),
    };
    let mut records: Vec<Record> = (0..3).map(record).collect();
    records[0].payload = vec![b'x'; 5000];
    let result = target.produce(&records, deadline(5000)).await;
    assert_eq!(
        result,
        ReplayResult {
            retry: vec![],
            refused: vec![(0, "kafka_rejected:msg_size_too_large".to_string())],
        }
    );
    assert!(s.sink.breaker.is_closed(), "a refusal opened the breaker");
    s.sink.close().await;
}

/// A batch handed over in chunks (`pace`) reports its records by their index in the whole
/// batch, whichever chunk they were in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_chunks_report_indices_into_the_whole_batch() {
    let s = setup_with(1 << 20, &[("message.max.bytes", "2000")]);
    let target = ReplayToKafka {
        kafka: s.sink.kafka.clone(),
        breaker: s.sink.breaker.clone(),
        pace: Default::default(),
        audit: Default::default(),
    };
    let mut records: Vec<Record> = (0..450).map(record).collect();
    for i in [5, 150, 449] {
        records[i].payload = vec![b'x'; 5000];
    }
    let result = target.produce(&records, deadline(10_000)).await;
    let refused: Vec<usize> = result.refused.iter().map(|(i, _)| *i).collect();
    assert_eq!(refused, vec![5, 150, 449]);
    assert!(result.retry.is_empty(), "{:?}", result.retry);
    s.sink.close().await;
}

/// A spooled record Kafka refuses for good on replay is quarantined, and the records after it
/// are delivered: nothing blocks replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_on_replay_is_quarantined_and_the_rest_delivered() {
    let s = setup_with(1 << 20, &[("message.max.bytes", "2000")]);
    let mut records: Vec<Record> = (0..3).map(record).collect();
    records[1].payload = vec![b'x'; 5000];
    s.sink.spool().append(&records).await.unwrap();
    let mut drained = false;
    for _ in 0..200 {
        if s.sink.spool().is_empty() && s.sink.spool().stats().bytes == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(drained, "replay is stuck: {:?}", s.sink.spool().stats());
    let payloads = tokio::task::block_in_place(|| topic_payloads(&s.cluster));
    assert_eq!(payloads, ["event-0", "event-2"]);
    let listed = crate::sink::spool::quarantine::list(s._dir.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].entry.reason, "kafka_rejected:msg_size_too_large");
    assert!(s.sink.breaker.is_closed(), "a refusal opened the breaker");
    s.sink.close().await;
}

/// A record answered as spooled whose first attempt Kafka acknowledges after the deadline is
/// in the topic twice but in the audit once: pending, then replayed, never also acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_ack_of_a_spooled_record_is_counted_once() {
    let s = setup(1 << 20);
    let books = Arc::new(crate::audit::Books::new(
        true,
        1_000,
        100,
        0,
        "events.invalid",
    ));
    s.sink.attach_audit(books.clone());
    s.sink
        .send_batch(vec![record(0)], deadline(5000))
        .await
        .unwrap();
    s.cluster
        .broker_round_trip_time(1, Duration::from_millis(1500))
        .unwrap();
    let now = crate::now_ms();
    let records: Vec<Record> = (0..3).map(|_| crate::audit::tests::event(now)).collect();
    let d = crate::audit::send(&books, &s.sink, records, deadline(300), now)
        .await
        .unwrap();
    assert_eq!(d.spooled, vec![0, 1, 2], "the deadline passed: spooled");
    let window = books.window_of(now);
    assert_eq!(books.counts(window, TOPIC).unwrap().events_pending, 3);
    s.cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    // The first attempts land late, the replayed copies too: 1 + 3 + 3 records in the topic.
    let until = Instant::now() + Duration::from_secs(30);
    while (topic_payloads(&s.cluster).len() < 7 || !s.sink.spool().is_empty())
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        topic_payloads(&s.cluster).len(),
        7,
        "late acks and replayed copies"
    );
    let c = books.counts(window, TOPIC).unwrap();
    assert_eq!(
        (c.events_kafka, c.events_replayed, c.events_pending),
        (0, 3, 0),
        "counted once, as replayed"
    );
    s.sink.close().await;
}

/// The next process on a spool counts what its predecessor left there as pending, in the
/// records' (old) windows, before replaying it; then as replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_counts_the_inherited_spool_as_pending_then_replayed() {
    let Setup {
        cluster,
        sink,
        _dir: dir,
    } = setup(1 << 20);
    sink.send_batch(vec![record(0)], deadline(5000))
        .await
        .unwrap();
    cluster.broker_down(1).unwrap();
    let at = 1_700_000_000_500;
    let records: Vec<Record> = (0..3).map(|_| crate::audit::tests::event(at)).collect();
    let d = sink.send_batch(records, deadline(300)).await.unwrap();
    assert_eq!(d.spooled.len(), 3);
    sink.close().await;
    drop(sink);

    let kafka = KafkaSink::new(
        &producer_config(&cluster.bootstrap_servers(), &BTreeMap::new()),
        Duration::from_millis(100),
    )
    .unwrap();
    let spool = Spool::open(SpoolOptions {
        dir: dir.path().to_owned(),
        max_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        segment_bytes: 1 << 20,
        seal_after: Duration::from_millis(50),
        io_error_backoff: Duration::from_millis(100),
    })
    .unwrap();
    let replay = ReplayOptions {
        batch_records: 100,
        batch_bytes: 1 << 20,
        ack_timeout: Duration::from_millis(1000),
        max_backoff: Duration::from_millis(200),
        doubtful_refusal_grace: Duration::ZERO,
    };
    let next = FallbackSink::new(Arc::new(kafka), spool, replay);
    let books = Arc::new(crate::audit::Books::new(
        true,
        1_000,
        100,
        0,
        "events.invalid",
    ));
    next.attach_audit(books.clone());
    let window = books.window_of(at);
    let counts = || books.counts(window, TOPIC).unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(20);
    while counts().events_pending != 3 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counts().events_pending, 3, "inherited records are pending");
    cluster.broker_up(1).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while counts().events_replayed < 3 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = counts();
    assert_eq!(
        (c.events_kafka, c.events_replayed, c.events_pending),
        (0, 3, 0)
    );
    next.close().await;
}
