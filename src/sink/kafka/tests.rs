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

#[tokio::test]
async fn permanent_errors_fail_the_batch_as_permanent() {
    let c = cluster();
    let s = sink(&c, &[]);
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let err = s.send(vec![record(1)], deadline(10_000)).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(_)), "{err:?}");
}

#[tokio::test]
async fn unauthorized_topic_is_permanent() {
    let c = cluster();
    let s = sink(&c, &[("topic.metadata.propagation.max.ms", "100")]);
    c.topic_error(
        TOPIC,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .unwrap();
    let err = s.send(vec![record(1)], deadline(10_000)).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(_)), "{err:?}");
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
}
