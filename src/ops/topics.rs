//! `eventpipe topics create`: one topic per schema name plus the dead-letter topic. An explicit
//! admin step, never a side effect of `serve`; running it twice is harmless.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Limits;
use crate::pipeline::PipelineConfig;
use crate::schema::Registry;
use crate::sink::kafka::client_config;

/// Topics the routing needs for `registry` (the pipeline's own naming rule).
pub fn needed_topics(registry: &Registry, prefix: &str, dead_letter: &str) -> Vec<String> {
    PipelineConfig::new(Limits::default(), prefix, dead_letter, registry).all_topics()
}

/// The topics the events of a gateway with `config` go to (`[routing]`), and its dead letters.
pub fn routed_topics(config: &crate::config::Config, registry: &Registry) -> Vec<String> {
    let k = &config.kafka;
    PipelineConfig::new(
        Limits::default(),
        &k.topic_prefix,
        &k.dead_letter_topic,
        registry,
    )
    .with_routing(&config.routing, &k.topic_prefix)
    .all_topics()
}

/// Every topic a gateway with `config` writes to: the routed ones, and the audit topic when
/// auditing is on.
pub fn gateway_topics(config: &crate::config::Config, registry: &Registry) -> Vec<String> {
    let mut topics = routed_topics(config, registry);
    if config.audit.enabled && !topics.contains(&config.audit.topic) {
        topics.push(config.audit.topic.clone());
    }
    topics
}

/// Creates `topics` over a plain connection; returns (created, already existing).
pub async fn create(
    brokers: &str,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    create_with(brokers, &BTreeMap::new(), topics, partitions, replication).await
}

/// Creates `topics`, connecting with the shared settings of `librdkafka` (the config's
/// `kafka.librdkafka`: security, network); returns (created, already existing).
pub async fn create_with(
    brokers: &str,
    librdkafka: &BTreeMap<String, String>,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let sized: Vec<(String, i32)> = topics.iter().map(|t| (t.clone(), partitions)).collect();
    create_sized(brokers, librdkafka, &sized, replication).await
}

/// Creates each (topic, partitions) of `topics`, connecting with the shared settings of
/// `librdkafka`; returns (created, already existing). An existing topic is left as it is (its
/// partition count included: growing it would move keys to other partitions).
pub async fn create_sized(
    brokers: &str,
    librdkafka: &BTreeMap<String, String>,
    topics: &[(String, i32)],
    replication: i32,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, librdkafka)
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, partitions)| NewTopic::new(t, *partitions, TopicReplication::Fixed(replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .context("CreateTopics request failed")?;
    let (mut created, mut existing) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok((created, existing))
}
