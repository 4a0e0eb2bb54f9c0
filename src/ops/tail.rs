//! `eventpipe tail`: reads a topic and prints one JSON object per line, decoded from Thrift.
//! Accepted events and dead letters alike; the dead-letter topic is recognised by name. A topic
//! shared by several schemas (`[routing] shared_topic`) reads the same way: every line names its
//! `schema`, and `--schema` keeps one schema's records by their `schema` header, undecoded
//! otherwise.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::sink::kafka::client_config;
use crate::thrift::{self, json::from_thrift, DeadLetter, Enrichment, Event};

pub struct TailOptions {
    pub brokers: String,
    /// The config's `kafka.librdkafka` (its security and network settings are used).
    pub librdkafka: BTreeMap<String, String>,
    pub topic: String,
    pub dead_letter_topic: String,
    pub from_beginning: bool,
    pub count: Option<usize>,
    /// Stop after this long without a new message (None: run until interrupted).
    pub idle_timeout: Option<Duration>,
    /// Only records whose `schema` header is this (`name/major`) or of this name (`name`).
    pub schema: Option<String>,
}

/// Whether a record's `schema` header value (`name/major`) is what `wanted` asks for.
fn schema_matches(header: Option<&[u8]>, wanted: &str) -> bool {
    let Some(value) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    value == wanted || (!wanted.contains('/') && value.split('/').next() == Some(wanted))
}

/// Consumes and prints until `count` messages or the idle timeout. Returns messages printed.
pub fn run(opts: &TailOptions, out: &mut impl Write) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = client_config(&opts.brokers, &opts.librdkafka)
        .set("group.id", "eventpipe-tail")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&opts.topic), Duration::from_secs(10))
        .context("fetching topic metadata")?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == opts.topic)
        .filter(|t| !t.partitions().is_empty())
        .with_context(|| format!("topic {} not found", opts.topic))?;
    let mut assignment = TopicPartitionList::new();
    let start = if opts.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for p in topic.partitions() {
        assignment.add_partition_offset(&opts.topic, p.id(), start)?;
    }
    consumer.assign(&assignment)?;
    let dead_letters = opts.topic == opts.dead_letter_topic;
    let mut printed = 0;
    let mut last = Instant::now();
    while opts.count.is_none_or(|c| printed < c) {
        if opts.idle_timeout.is_some_and(|t| last.elapsed() >= t) {
            break;
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.context("consuming")?;
        last = Instant::now();
        if let Some(wanted) = &opts.schema {
            let header = msg
                .headers()
                .and_then(|hs| hs.iter().find(|h| h.key == "schema"))
                .and_then(|h| h.value);
            if !schema_matches(header, wanted) {
                continue;
            }
        }
        let payload = msg.payload().unwrap_or_default();
        let mut line = if dead_letters {
            dead_letter_json(payload)
        } else {
            event_json(payload)
        }
        .unwrap_or_else(|e| json!({"undecodable": e.to_string()}));
        if let Value::Object(map) = &mut line {
            map.insert("_partition".into(), json!(msg.partition()));
            map.insert("_offset".into(), json!(msg.offset()));
            if let Some(headers) = msg.headers() {
                let h: serde_json::Map<String, Value> = headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            json!(String::from_utf8_lossy(h.value.unwrap_or_default())),
                        )
                    })
                    .collect();
                map.insert("_headers".into(), Value::Object(h));
            }
        }
        writeln!(out, "{line}")?;
        printed += 1;
    }
    out.flush()?;
    Ok(printed)
}

fn enrichment_json(e: &Enrichment) -> Value {
    json!({
        "received_at_ms": e.received_at_ms,
        "client_ip": e.client_ip,
        "user_agent": e.user_agent,
        "collector_host": e.collector_host,
        "collector_version": e.collector_version,
        "sent_at": e.sent_at,
        "origin": e.origin,
    })
}

/// Decodes an accepted event to JSON.
pub fn event_json(payload: &[u8]) -> anyhow::Result<Value> {
    let event: Event = thrift::from_compact_bytes(payload)?;
    Ok(json!({
        "event_id": event.event_id,
        "schema": format!("{}/{}", event.schema_name, event.schema_major),
        "ts": event.ts,
        "context": from_thrift(&event.context)?,
        "data": from_thrift(&event.data)?,
        "enrichment": enrichment_json(&event.enrichment),
    }))
}

/// Decodes a dead letter to JSON; `original` is shown as text (lossy for non-UTF-8 bytes).
pub fn dead_letter_json(payload: &[u8]) -> anyhow::Result<Value> {
    let dl: DeadLetter = thrift::from_compact_bytes(payload)?;
    Ok(json!({
        "reason": dl.reason,
        "path": dl.path,
        "message": dl.message,
        "original": String::from_utf8_lossy(&dl.original),
        "truncated": dl.truncated,
        "event_id": dl.event_id,
        "schema": dl.schema,
        "index": dl.index,
        "http_status": dl.http_status,
        "request_id": dl.request_id,
        "enrichment": enrichment_json(&dl.enrichment),
    }))
}

#[cfg(test)]
mod tests {
    use super::schema_matches;

    #[test]
    fn schema_filter_matches_the_header() {
        assert!(schema_matches(Some(b"click/1"), "click/1"));
        assert!(schema_matches(Some(b"click/2"), "click"));
        assert!(!schema_matches(Some(b"click/2"), "click/1"));
        assert!(!schema_matches(Some(b"clicks/1"), "click"));
        assert!(!schema_matches(None, "click"));
    }
}
