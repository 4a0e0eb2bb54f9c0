//! From a decoded request body to Kafka records, in typed stages:
//!
//! `Bundle` (parsed envelope, events still raw JSON text)
//!   -> per event: `RawEvent` (envelope fields checked) -> `ValidEvent` (payload passed its schema)
//!   -> `Record` (Thrift bytes, key, topic, headers).
//!
//! Each event ends in exactly one outcome: an `Event` record for its schema's topic, or a
//! `DeadLetter` record plus a `Rejection` for the response. One bad event never costs the others.
//! Each event's JSON is parsed exactly once.
//!
//! Sizes are bounded before a record exists (`bounds`): every record fits the producer's
//! `message.max.bytes`, and a request's records fit its output budget, or the request is refused
//! whole (`OutputTooLarge`, 413) with nothing produced.

pub mod bounds;
mod encode;
mod envelope;
pub mod translated;

pub use bounds::OutputTooLarge;
pub use encode::{dead_letter_for_refused, dead_letter_for_request, fit_dead_letter, Collector};
pub use envelope::{json_depth, value_depth, Bundle, BundleError, BODY_DEPTH_CAP};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::schema::Registry;
use crate::sink::Record;
use crate::thrift::compact::EncodedEnrichment;
use crate::thrift::Enrichment;

/// Why one event was rejected. The string forms are stable API (response `reason` and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not an object, a missing or mistyped envelope field, an unknown field, a bad timestamp.
    InvalidEnvelope,
    /// `event_id` present but not a UUID.
    BadEventId,
    /// `schema` names no schema this gateway knows.
    UnknownSchema,
    /// `data` does not match its schema.
    SchemaViolation,
    /// The event's JSON exceeds the per-event byte limit.
    TooLarge,
    /// The event nests deeper than the depth limit.
    TooDeep,
    /// The request's write key may not send this schema.
    SchemaNotAllowed,
    /// Kafka refused the event's record for good; holds the bounded `kafka_rejected:<code>`
    /// reason from the sink (e.g. `kafka_rejected:msg_size_too_large`).
    KafkaRejected(&'static str),
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidEnvelope => "invalid_envelope",
            RejectReason::BadEventId => "bad_event_id",
            RejectReason::UnknownSchema => "unknown_schema",
            RejectReason::SchemaViolation => "schema_violation",
            RejectReason::TooLarge => "too_large",
            RejectReason::TooDeep => "too_deep",
            RejectReason::SchemaNotAllowed => "schema_not_allowed",
            RejectReason::KafkaRejected(reason) => reason,
        }
    }

    /// The fixed reason named `name` (`kafka_rejected:*` comes only from the sink).
    pub fn from_name(name: &str) -> Option<RejectReason> {
        use RejectReason::*;
        [
            InvalidEnvelope,
            BadEventId,
            UnknownSchema,
            SchemaViolation,
            TooLarge,
            TooDeep,
            SchemaNotAllowed,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

impl Serialize for RejectReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One rejected event, as reported to the client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub reason: RejectReason,
    pub path: String,
    pub message: String,
}

/// An event whose envelope is well formed; its payload is not yet validated.
pub struct RawEvent {
    pub index: usize,
    pub event_id: String,
    /// The event id as a number when the client chose it (retries carry it again).
    pub client_id: Option<u128>,
    /// `name/major` as sent.
    pub schema: String,
    pub ts: Option<String>,
    pub context: Map<String, Value>,
    pub data: Value,
}

/// An event whose payload passed its schema.
pub struct ValidEvent {
    pub raw: RawEvent,
    pub schema: std::sync::Arc<crate::schema::Schema>,
}

/// Where an event record came from, so a record Kafka refuses can still become a dead letter
/// holding its event's original JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOrigin {
    /// The event's index in the bundle.
    pub index: usize,
    /// The event's JSON text: a byte range of the decoded body the bundle was parsed from.
    pub span: std::ops::Range<usize>,
}

/// Everything produced from one bundle.
pub struct Processed {
    /// Event records and dead-letter records together, all to be acknowledged before answering.
    pub records: Vec<Record>,
    /// Aligned with `records`: an event record's origin, None for a dead letter.
    pub origins: Vec<Option<EventOrigin>>,
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
    /// Accepted events per schema name, for metrics (few distinct names per request).
    pub accepted_by_schema: Vec<(std::sync::Arc<str>, usize)>,
    /// Bytes of `records` as `bounds::size_of` counts them (summed once, by the output budget).
    pub output_bytes: usize,
}

/// Settings the pipeline needs, fixed at start-up.
pub struct PipelineConfig {
    pub limits: Limits,
    pub dead_letter_topic: std::sync::Arc<str>,
    /// The producer's `message.max.bytes`: no record the pipeline builds is larger (as
    /// `bounds::record_size` counts it). `new` sets librdkafka's default; the gateway sets the
    /// effective value (`KafkaConfig::message_max_bytes`).
    pub max_record_bytes: usize,
    /// `<prefix><name>` for every schema name, built once: events share the Arc, no per-event
    /// string building.
    topics: std::collections::HashMap<std::sync::Arc<str>, std::sync::Arc<str>>,
}

impl PipelineConfig {
    pub fn new(
        limits: Limits,
        topic_prefix: &str,
        dead_letter_topic: &str,
        registry: &Registry,
    ) -> Self {
        let topics = registry
            .names()
            .into_iter()
            .map(|name| {
                let topic = std::sync::Arc::from(format!("{topic_prefix}{name}"));
                (name, topic)
            })
            .collect();
        PipelineConfig {
            limits,
            dead_letter_topic: dead_letter_topic.into(),
            max_record_bytes: bounds::DEFAULT_MESSAGE_MAX_BYTES,
            topics,
        }
    }

    /// The same config with the schemas routed by `routing` (`[routing]`: a shared topic for
    /// the schemas not dedicated); `topic_prefix` as given to `new`.
    pub fn with_routing(
        mut self,
        routing: &crate::config::RoutingConfig,
        topic_prefix: &str,
    ) -> Self {
        // One Arc per distinct topic, so the shared topic's events share it too.
        let mut by_topic: std::collections::HashMap<String, std::sync::Arc<str>> =
            std::collections::HashMap::new();
        for (name, topic) in self.topics.iter_mut() {
            let routed = routing.topic(topic_prefix, name);
            *topic = by_topic
                .entry(routed)
                .or_insert_with_key(|t| std::sync::Arc::from(t.as_str()))
                .clone();
        }
        self
    }

    /// The same config with another record size limit (the producer's `message.max.bytes`).
    pub fn with_max_record_bytes(mut self, max_record_bytes: usize) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
    }

    /// Every topic the routing writes to: one per schema name or the shared one (sorted), then
    /// the dead letters.
    pub fn all_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.topics.values().map(|t| t.to_string()).collect();
        topics.sort();
        topics.dedup();
        topics.push(self.dead_letter_topic.to_string());
        topics
    }

    /// The topic of a schema name from the registry the config was built with.
    pub fn topic(&self, schema_name: &str) -> std::sync::Arc<str> {
        self.topics
            .get(schema_name)
            .cloned()
            .expect("every registry schema has a topic")
    }
}

/// Runs every event of a parsed bundle through the stages.
///
/// Stops with `OutputTooLarge` as soon as the records built so far exceed the request's output
/// budget (`bounds::OutputBudget`), so memory stays within it; the request is then refused whole.
pub fn process(
    bundle: &Bundle<'_>,
    registry: &Registry,
    cfg: &PipelineConfig,
    enrichment: &Enrichment,
) -> Result<Processed, OutputTooLarge> {
    process_allowed(bundle, registry, cfg, enrichment, None, &|_| true)
}

/// [`process`], rejecting (alone, as `schema_not_allowed`) each event whose schema `allowed`
/// refuses: what a write key may send. `request_id` goes into the dead letters.
pub fn process_allowed(
    bundle: &Bundle<'_>,
    registry: &Registry,
    cfg: &PipelineConfig,
    enrichment: &Enrichment,
    request_id: Option<&str>,
    allowed: &dyn Fn(&crate::schema::Schema) -> bool,
) -> Result<Processed, OutputTooLarge> {
    let mut out = Processed {
        records: Vec::with_capacity(bundle.events.len()),
        origins: Vec::with_capacity(bundle.events.len()),
        accepted: 0,
        rejected: Vec::new(),
        accepted_by_schema: Vec::new(),
        output_bytes: 0,
    };
    // Encoded once; every event of the request carries the same bytes.
    let encoded_enrichment = EncodedEnrichment::new(enrichment);
    let mut budget = bounds::OutputBudget::new(
        &cfg.limits,
        bundle.body_bytes,
        bundle.events.len(),
        encoded_enrichment.len(),
    );
    for (index, raw_json) in bundle.events.iter().enumerate() {
        let text = raw_json.get();
        let pre_rejected = bundle
            .translated
            .then(|| translated::rejection(index, text))
            .flatten();
        let parsed = match pre_rejected {
            Some(rejection) => Err(rejection),
            None => envelope::parse_event(index, text, bundle.context_bytes, &cfg.limits),
        };
        let result = parsed
            .and_then(|raw| validate(raw, registry, allowed))
            .and_then(|valid| {
                let name = valid.schema.name.clone();
                let record = encode::event_record(
                    valid,
                    text.len(),
                    &bundle.context,
                    cfg,
                    &encoded_enrichment,
                )?;
                Ok((name, record))
            });
        let (record, origin) = match result {
            Ok((name, record)) => {
                out.accepted += 1;
                match out.accepted_by_schema.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => *count += 1,
                    None => out.accepted_by_schema.push((name, 1)),
                }
                let origin = EventOrigin {
                    index,
                    span: bundle.span(index),
                };
                (record, Some(origin))
            }
            Err(rejection) => {
                let record = encode::dead_letter_for_event(
                    &rejection,
                    text.as_bytes(),
                    envelope::schema_as_sent(text),
                    cfg,
                    enrichment,
                    request_id,
                );
                out.rejected.push(rejection);
                (record, None)
            }
        };
        let size = bounds::size_of(&record);
        debug_assert!(
            size <= cfg.max_record_bytes,
            "a {size}-byte record over message.max.bytes {}",
            cfg.max_record_bytes
        );
        budget.spend(size)?;
        out.origins.push(origin);
        out.records.push(record);
    }
    out.output_bytes = budget.used();
    Ok(out)
}

fn validate(
    raw: RawEvent,
    registry: &Registry,
    allowed: &dyn Fn(&crate::schema::Schema) -> bool,
) -> Result<ValidEvent, Rejection> {
    let reject = |raw: &RawEvent, reason, path: &str, message: String| Rejection {
        index: raw.index,
        event_id: Some(raw.event_id.clone()),
        reason,
        path: bounds::cut(path, bounds::PATH_MAX),
        message: bounds::cut_owned(message, bounds::MESSAGE_MAX),
    };
    let Some(schema) = registry.get(&raw.schema) else {
        let message = format!(
            "no schema '{}' (expected <name>/<major> of a known schema)",
            bounds::cut(&raw.schema, bounds::SCHEMA_MAX)
        );
        return Err(reject(
            &raw,
            RejectReason::UnknownSchema,
            "/schema",
            message,
        ));
    };
    // Before the payload is validated: no work spent on events this key may not send.
    if !allowed(schema) {
        let message = format!("this write key may not send '{}'", schema.id);
        return Err(reject(
            &raw,
            RejectReason::SchemaNotAllowed,
            "/schema",
            message,
        ));
    }
    if let Err(v) = schema.validate(&raw.data) {
        let path = format!("/data{}", v.path);
        return Err(reject(
            &raw,
            RejectReason::SchemaViolation,
            &path,
            v.message,
        ));
    }
    Ok(ValidEvent {
        raw,
        schema: schema.clone(),
    })
}

#[cfg(test)]
mod size_tests;
#[cfg(test)]
mod tests;
