//! Reading topics to "now": every partition from where the last read stopped (or from the
//! lookback's start) up to the high watermark taken when the read starts.
//!
//! Tansu's memory engine reports a stale high watermark: the base offset of the partition's
//! last batch + 1, not its end. Reaching it still fetches that whole batch, so once every
//! partition has reached its watermark the reader drains what was already fetched until
//! `DRAIN_IDLE` passes without a message. Records produced after the read started may be
//! included; that is harmless (windows still open, or events whose audit record comes next).
//! A watermark that cannot be reached within the timeout is an error: a verdict on a partial
//! read would be a false "missing".

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::sink::kafka::client_config;

/// After every partition reached its end offset: stop once no message came for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

pub struct Reader {
    consumer: BaseConsumer,
    /// Next offset to read per (topic, partition).
    positions: HashMap<(String, i32), i64>,
    /// Where a partition read for the first time starts: the first record at or after this
    /// timestamp (None: the beginning).
    since_ms: Option<i64>,
    timeout: Duration,
}

impl Reader {
    pub fn new(
        brokers: &str,
        librdkafka: &BTreeMap<String, String>,
        since_ms: Option<i64>,
        timeout: Duration,
    ) -> anyhow::Result<Reader> {
        let consumer: BaseConsumer = client_config(brokers, librdkafka)
            .set("group.id", "eventpipe-audit")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .create()
            .context("creating the Kafka consumer")?;
        Ok(Reader {
            consumer,
            positions: HashMap::new(),
            since_ms,
            timeout,
        })
    }

    /// Forgets where `topic` was read to: the next read starts it over.
    pub fn restart_topic(&mut self, topic: &str) {
        self.positions.retain(|(t, _), _| t != topic);
    }

    /// Reads `topics` from where the last read stopped to their ends as of now, handing every
    /// payload to `on(topic, payload)`. Returns the topics that do not exist.
    pub fn catch_up(
        &mut self,
        topics: &[String],
        mut on: impl FnMut(&str, &[u8]),
    ) -> anyhow::Result<Vec<String>> {
        let mut absent = Vec::new();
        let mut targets: HashMap<(String, i32), i64> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), self.timeout)
                .with_context(|| format!("fetching metadata of {topic}"))?;
            let Some(partitions) = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            else {
                absent.push(topic.clone());
                self.restart_topic(topic);
                continue;
            };
            for partition in partitions {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(topic, partition, self.timeout)
                    .with_context(|| format!("fetching end offsets of {topic}/{partition}"))?;
                let key = (topic.clone(), partition);
                let position = match self.positions.get(&key) {
                    Some(p) => *p,
                    None => self.start_offset(topic, partition, low, high)?,
                };
                self.positions.insert(key.clone(), position);
                if position < high {
                    targets.insert(key, high);
                }
                assignment.add_partition_offset(topic, partition, Offset::Offset(position))?;
            }
        }
        if targets.is_empty() {
            return Ok(absent);
        }
        self.consumer
            .assign(&assignment)
            .context("assigning partitions")?;
        let deadline = Instant::now() + self.timeout;
        let mut last_message = Instant::now();
        loop {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    last_message = Instant::now();
                    let key = (msg.topic().to_string(), msg.partition());
                    on(msg.topic(), msg.payload().unwrap_or_default());
                    let next = msg.offset() + 1;
                    if targets.get(&key).is_some_and(|t| next >= *t) {
                        targets.remove(&key);
                    }
                    self.positions.insert(key, next);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "audit: consumer error (retrying)"),
                None => {}
            }
            if targets.is_empty() && last_message.elapsed() >= DRAIN_IDLE {
                break;
            }
            if Instant::now() >= deadline {
                let behind: Vec<String> = targets
                    .iter()
                    .map(|((t, p), end)| {
                        let at = self.positions.get(&(t.clone(), *p)).copied().unwrap_or(-1);
                        format!("{t}/{p} at {at} of {end}")
                    })
                    .collect();
                anyhow::bail!(
                    "could not read to the end offsets within {:?}: {}",
                    self.timeout,
                    behind.join(", ")
                );
            }
        }
        self.consumer.unassign().context("unassigning partitions")?;
        Ok(absent)
    }

    /// Where a partition read for the first time starts: the first record at or after
    /// `since_ms` (Tansu 0.6 answers the beginning; reading more is harmless, windows before
    /// the lookback are dropped), else the beginning.
    fn start_offset(
        &self,
        topic: &str,
        partition: i32,
        low: i64,
        high: i64,
    ) -> anyhow::Result<i64> {
        let Some(since) = self.since_ms else {
            return Ok(low);
        };
        let mut query = TopicPartitionList::new();
        query.add_partition_offset(topic, partition, Offset::Offset(since))?;
        let answer = self
            .consumer
            .offsets_for_times(query, self.timeout)
            .with_context(|| format!("looking up offsets by time in {topic}/{partition}"))?;
        let offset = answer
            .find_partition(topic, partition)
            .map(|p| p.offset())
            .unwrap_or(Offset::Beginning);
        Ok(match offset {
            Offset::Offset(o) => o.clamp(low, high.max(low)),
            Offset::End => high,
            _ => low,
        })
    }
}
