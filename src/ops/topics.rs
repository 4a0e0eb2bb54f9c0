//! `eventpipe topics create`: one topic per schema name plus the dead-letter topic. An explicit
//! admin step, never a side effect of `serve`; running it twice is harmless.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Limits;
use crate::pipeline::PipelineConfig;
use crate::schema::Registry;

/// Topics the routing needs for `registry` (the pipeline's own naming rule).
pub fn needed_topics(registry: &Registry, prefix: &str, dead_letter: &str) -> Vec<String> {
    PipelineConfig::new(Limits::default(), prefix, dead_letter, registry).all_topics()
}

/// Creates `topics`; returns (created, already existing).
pub async fn create(
    brokers: &str,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
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
