//! Error classification and back-pressure against librdkafka's mock cluster.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::*;

const TOPIC: &str = "events.page_view";

fn record(i: usize) -> Record {
    Record {
        topic: TOPIC.into(),
        key: Some(format!("k{i}").into_bytes()),
        payload: vec![i as u8; 100],
        headers: vec![("schema", "page_view/1".into())],
        kind: crate::sink::RecordKind::DeadLetter,
    }
}

fn sink(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    extra: &[(&str, &str)],
) -> KafkaSink {
    let mut overrides = BTreeMap::new();
    overrides.insert("message.timeout.ms".to_string(), "3000".to_string());
    overrides.insert("retry.backoff.ms".to_string(), "10".to_string());
    for (k, v) in extra {
        overrides.insert(k.to_string(), v.to_string());
    }
    KafkaSink::new(
        &producer_config(&cluster.bootstrap_servers(), &overrides),
        Duration::from_millis(100),
    )
    .unwrap()
}

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(1).unwrap();
    c.create_topic(TOPIC, 2, 1).unwrap();
    c
}

fn deadline(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

#[tokio::test]
async fn batch_resolves_once_every_record_is_acknowledged() {
    let c = cluster();
    let s = sink(&c, &[]);
    let records: Vec<Record> = (0..200).map(record).collect();
    s.send(records, deadline(10_000)).await.unwrap();
    s.send(vec![], deadline(1)).await.unwrap();
}

#[tokio::test]
async fn transient_produce_errors_are_retried_inside_the_producer() {
    let c = cluster();
    let s = sink(&c, &[]);
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    s.send((0..10).map(record).collect(), deadline(10_000))
        .await
        .unwrap();
}

/// A permanent error in the delivery report: the record is refused with its reason, not
/// reported as unacknowledged (which would spool it).
#[tokio::test]
async fn a_permanent_produce_error_refuses_the_record_with_its_reason() {
    let c = cluster();
    let s = sink(&c, &[]);
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let out = s
        .send_partial(&[record(1)], deadline(10_000), Duration::ZERO)
        .await;
    assert!(out.unacked.is_empty(), "{out:?}");
    assert_eq!(out.refused, [(0, "kafka_rejected:msg_size_too_large")]);
    assert!(out.error.is_none());
    // Without a spool, the refusal is reported the same way.
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let d = s.send(vec![record(2)], deadline(10_000)).await.unwrap();
    assert_eq!(d.refused, [(0, "kafka_rejected:msg_size_too_large")]);
}

#[tokio::test]
async fn unauthorized_topic_is_refused() {
    let c = cluster();
    let s = sink(&c, &[]);
    c.topic_error(
        TOPIC,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .unwrap();
    let d = s.send(vec![record(1)], deadline(10_000)).await.unwrap();
    assert_eq!(
        d.refused,
        [(0, "kafka_rejected:topic_authorization_failed")]
    );
}

/// A record over `message.max.bytes` is refused by `send()` itself, before it is queued; the
/// rest of the batch is acknowledged.
#[tokio::test]
async fn an_oversize_record_is_refused_synchronously_and_the_rest_delivered() {
    let c = cluster();
    let s = sink(&c, &[("message.max.bytes", "2000")]);
    let mut records: Vec<Record> = (0..4).map(record).collect();
    records[2].payload = vec![7; 5000];
    let out = s
        .send_partial(&records, deadline(10_000), Duration::ZERO)
        .await;
    assert!(out.unacked.is_empty(), "{out:?}");
    assert_eq!(out.refused, [(2, "kafka_rejected:msg_size_too_large")]);
    assert!(out.any_acked);
}

/// A topic the cluster does not have (and may not auto-create) is refused within the request's
/// deadline with the default producer settings, not left to time out (which would spool it);
/// in a mixed batch only its records are refused.
#[tokio::test]
async fn an_unknown_topic_is_refused_fast_with_the_default_settings() {
    let c = cluster();
    let s = sink(&c, &[]);
    let mut records: Vec<Record> = (0..4).map(record).collect();
    records[1].topic = "events.missing".into();
    records[3].topic = "events.missing".into();
    let out = s
        .send_partial(&records, deadline(5_000), Duration::ZERO)
        .await;
    assert!(out.unacked.is_empty(), "{out:?}");
    let refused: Vec<usize> = out.refused.iter().map(|(i, _)| *i).collect();
    assert_eq!(refused, [1, 3], "{out:?}");
    assert!(
        out.refused
            .iter()
            .all(|(_, r)| r.starts_with("kafka_rejected:unknown_topic")),
        "{out:?}"
    );
    // Known not to exist now: refused by send() at once.
    let out = s
        .send_partial(&records[1..2], deadline(5_000), Duration::ZERO)
        .await;
    assert_eq!(
        out.refused,
        [(0, "kafka_rejected:unknown_topic")],
        "{out:?}"
    );
}

/// A retryable failure is never reported as refused.
#[tokio::test]
async fn a_retryable_failure_is_unacknowledged_not_refused() {
    let c = cluster();
    let s = sink(&c, &[]);
    s.send(vec![record(0)], deadline(10_000)).await.unwrap();
    c.broker_down(1).unwrap();
    let out = s
        .send_partial(&[record(1), record(2)], deadline(300), Duration::ZERO)
        .await;
    assert_eq!(out.unacked, [0, 1]);
    assert!(out.refused.is_empty());
    assert!(matches!(out.error, Some(SinkError::Timeout)), "{out:?}");
}

#[tokio::test]
async fn broker_down_times_out_at_the_deadline() {
    let c = cluster();
    let s = sink(&c, &[]);
    s.send(vec![record(0)], deadline(10_000)).await.unwrap();
    c.broker_down(1).unwrap();
    let started = Instant::now();
    let err = s.send(vec![record(1)], deadline(300)).await.unwrap_err();
    assert!(matches!(err, SinkError::Timeout), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited past the deadline"
    );
    c.broker_up(1).unwrap();
    s.send(vec![record(2)], deadline(10_000)).await.unwrap();
}

#[tokio::test]
async fn slow_broker_past_the_deadline_is_a_timeout() {
    let c = cluster();
    let s = sink(&c, &[]);
    s.send(vec![record(0)], deadline(10_000)).await.unwrap();
    c.broker_round_trip_time(1, Duration::from_millis(1500))
        .unwrap();
    let err = s.send(vec![record(1)], deadline(200)).await.unwrap_err();
    assert!(matches!(err, SinkError::Timeout), "{err:?}");
}

#[tokio::test]
async fn full_queue_is_back_pressure() {
    let c = cluster();
    let s = sink(&c, &[("queue.buffering.max.messages", "5")]);
    c.broker_down(1).unwrap();
    let err = s
        .send((0..20).map(record).collect(), deadline(300))
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::QueueFull), "{err:?}");
}

#[tokio::test]
async fn readiness_follows_metadata() {
    let c = cluster();
    let s = sink(&c, &[]);
    let until = Instant::now() + Duration::from_secs(5);
    while !s.is_ready() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.is_ready());
}

fn sharded(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    producers: usize,
    extra: &[(&str, &str)],
) -> KafkaSink {
    let mut overrides = BTreeMap::new();
    overrides.insert("message.timeout.ms".to_string(), "5000".to_string());
    for (k, v) in extra {
        overrides.insert(k.to_string(), v.to_string());
    }
    KafkaSink::sharded(
        &producer_config(&cluster.bootstrap_servers(), &overrides),
        Duration::from_millis(100),
        producers,
    )
    .unwrap()
}

fn to(topic: &str, i: usize) -> Record {
    Record {
        topic: topic.into(),
        ..record(i)
    }
}

/// Records waiting in each shard's producer.
fn in_flight(s: &KafkaSink) -> Vec<i32> {
    (0..s.shards.len())
        .map(|i| s.producer(i).producer.in_flight_count())
        .collect()
}

/// Every record of a topic goes through one producer (ordering per key and idempotence hold
/// per producer), and the topics spread over the producers.
#[tokio::test]
async fn each_topic_is_produced_by_exactly_one_shard() {
    let topics: Vec<String> = (0..8).map(|i| format!("events.t{i}")).collect();
    let c = MockCluster::new(1).unwrap();
    for t in &topics {
        c.create_topic(t, 3, 1).unwrap();
    }
    // A long linger holds what was handed over inside its producer, where it can be counted.
    let s = sharded(
        &c,
        4,
        &[("linger.ms", "1000"), ("message.timeout.ms", "120000")],
    );
    let mut used = std::collections::HashSet::new();
    for t in &topics {
        let out = s
            .send_partial(
                &(0..20).map(|i| to(t, i)).collect::<Vec<_>>(),
                deadline(50),
                Duration::from_millis(50),
            )
            .await;
        assert_eq!(out.unacked.len(), 20, "lingering, not delivered yet");
        let waiting = in_flight(&s);
        let busy: Vec<usize> = (0..4).filter(|&i| waiting[i] > 0).collect();
        assert_eq!(
            busy.len(),
            1,
            "{t}: records in several producers: {waiting:?}"
        );
        assert_eq!(waiting[busy[0]], 20, "{t}: {waiting:?}");
        used.insert(busy[0]);
        s.flush(Duration::from_secs(10)).await.unwrap();
        assert_eq!(in_flight(&s), vec![0; 4], "flush left records behind");
    }
    assert!(used.len() > 1, "8 topics all on one of 4 producers");
}

/// `flush` waits for every shard, not only the first.
#[tokio::test]
async fn flush_covers_every_shard() {
    let topics: Vec<String> = (0..8).map(|i| format!("events.f{i}")).collect();
    let c = MockCluster::new(1).unwrap();
    for t in &topics {
        c.create_topic(t, 1, 1).unwrap();
    }
    let s = sharded(
        &c,
        3,
        &[("linger.ms", "1000"), ("message.timeout.ms", "120000")],
    );
    // Nothing for the first shard: a flush of only that one would return at once.
    let records: Vec<Record> = topics
        .iter()
        .filter(|t| shard_of(t, 3) != 0)
        .map(|t| to(t, 0))
        .collect();
    let out = s
        .send_partial(&records, deadline(50), Duration::from_millis(50))
        .await;
    assert_eq!(out.unacked.len(), records.len());
    assert!(in_flight(&s).iter().filter(|&&n| n > 0).count() > 1);
    s.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(in_flight(&s), vec![0; 3]);
}

/// A fatal error replaces the failed shard's producer only; every topic still delivers.
#[tokio::test]
async fn a_fatal_error_replaces_only_its_own_shard() {
    let topics: Vec<String> = (0..8).map(|i| format!("events.x{i}")).collect();
    let c = MockCluster::new(1).unwrap();
    for t in &topics {
        c.create_topic(t, 1, 1).unwrap();
    }
    let s = sharded(&c, 3, &[]);
    let before: Vec<_> = (0..3).map(|i| s.producer(i)).collect();
    s.inject_fatal_error_in(1);
    // The error callback raises the flag from librdkafka's thread.
    let until = Instant::now() + Duration::from_secs(5);
    while !before[1].fatal.load(Ordering::SeqCst) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let records: Vec<Record> = topics.iter().map(|t| to(t, 1)).collect();
    s.send(records, deadline(10_000)).await.unwrap();
    let after: Vec<_> = (0..3).map(|i| s.producer(i)).collect();
    assert!(Arc::ptr_eq(&before[0], &after[0]));
    assert!(
        !Arc::ptr_eq(&before[1], &after[1]),
        "shard 1 was not replaced"
    );
    assert!(Arc::ptr_eq(&before[2], &after[2]));
}

#[test]
fn the_shard_of_a_topic_is_stable_and_spread() {
    let mut counts = [0usize; 4];
    for i in 0..200 {
        let t = format!("events.s{i:03}");
        let shard = shard_of(&t, 4);
        assert_eq!(shard, shard_of(&t, 4));
        counts[shard] += 1;
    }
    assert!(counts.iter().all(|&n| n >= 25), "{counts:?}");
    // FNV-1a is fixed: a restart or another host uses the same shard for the same topic.
    assert_eq!(
        shard_of("events.page_view", 4),
        shard_of("events.page_view", 4)
    );
    assert_eq!(shard_of("anything", 1), 0);
}

#[test]
fn classification() {
    use rdkafka::error::RDKafkaErrorCode as C;
    let e = |c| KafkaError::MessageProduction(c);
    assert!(matches!(classify(&e(C::QueueFull)), SinkError::QueueFull));
    assert!(matches!(
        classify(&e(C::MessageTimedOut)),
        SinkError::Timeout
    ));
    assert!(matches!(
        classify(&e(C::UnknownTopicOrPartition)),
        SinkError::Permanent(_)
    ));
    assert!(matches!(
        classify(&e(C::TopicAuthorizationFailed)),
        SinkError::Permanent(_)
    ));
    assert!(matches!(
        classify(&e(C::NotEnoughReplicas)),
        SinkError::Retryable(_)
    ));
    assert!(matches!(
        classify(&e(C::BrokerTransportFailure)),
        SinkError::Retryable(_)
    ));
    assert_eq!(
        refusal_reason(&e(C::UnknownTopicOrPartition)),
        Some("kafka_rejected:unknown_topic_or_part")
    );
    assert_eq!(refusal_reason(&e(C::NotEnoughReplicas)), None);
    assert_eq!(refusal_reason(&e(C::QueueFull)), None);
}
