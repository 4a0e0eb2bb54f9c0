//! The last stage: a valid event (or a rejection) becomes a Kafka record of Thrift bytes.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{PipelineConfig, RejectReason, Rejection, ValidEvent};
use crate::sink::{Record, RecordKind};
use crate::thrift::compact::{encode_event, EncodedEnrichment, EventFields};
use crate::thrift::{self, DeadLetter, Enrichment};

/// The gateway's identity, written into every record.
#[derive(Debug, Clone)]
pub struct Collector {
    pub host: String,
    pub version: String,
}

/// Builds the record for an accepted event: Thrift `Event` to `<prefix><name>`, keyed by
/// `visitor_id`, else `session_id`, else the event id, so one visitor's events stay in order.
pub fn event_record(
    valid: ValidEvent,
    text_len: usize,
    batch_context: &Map<String, Value>,
    cfg: &PipelineConfig,
    enrichment: &EncodedEnrichment,
) -> Record {
    let raw = valid.raw;
    let key = partition_key(batch_context, &raw.context).unwrap_or_else(|| raw.event_id.clone());
    let payload = encode_event(
        &EventFields {
            event_id: &raw.event_id,
            schema_name: &valid.schema.name,
            schema_major: i32::try_from(valid.schema.major).unwrap_or(i32::MAX),
            ts: raw.ts.as_deref(),
            batch_context,
            event_context: &raw.context,
            data: &raw.data,
            enrichment,
        },
        text_len,
    );
    Record {
        topic: cfg.topic(&valid.schema.name),
        key: Some(key.into_bytes()),
        payload,
        headers: vec![
            ("schema", valid.schema.id.to_string()),
            ("event_id", raw.event_id),
        ],
        kind: RecordKind::Event {
            client_id: raw.client_id,
        },
    }
}

/// The partition key from the merged context (the event's own context wins over the batch's,
/// key by key).
fn partition_key(batch: &Map<String, Value>, event: &Map<String, Value>) -> Option<String> {
    for field in ["visitor_id", "session_id"] {
        match event.get(field).or_else(|| batch.get(field)) {
            Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
            Some(Value::Number(n)) => return Some(n.to_string()),
            _ => {}
        }
    }
    None
}

fn truncated(original: &[u8], cap: usize) -> (Vec<u8>, bool) {
    if original.len() > cap {
        (original[..cap].to_vec(), true)
    } else {
        (original.to_vec(), false)
    }
}

/// Builds the dead letter for one rejected event, holding its original JSON.
pub fn dead_letter_for_event(
    rejection: &Rejection,
    original: &[u8],
    schema: Option<String>,
    cfg: &PipelineConfig,
    enrichment: &Enrichment,
) -> Record {
    let (original, was_truncated) = truncated(original, cfg.limits.dead_letter_max_bytes);
    let letter = DeadLetter {
        reason: rejection.reason.as_str().into(),
        path: Some(rejection.path.clone()),
        message: rejection.message.clone(),
        original,
        truncated: was_truncated,
        event_id: rejection.event_id.clone(),
        schema: schema.clone(),
        index: i32::try_from(rejection.index).ok(),
        http_status: None,
        enrichment: enrichment.clone(),
    };
    let mut headers = vec![("reason", rejection.reason.as_str().to_string())];
    if let Some(id) = &rejection.event_id {
        headers.push(("event_id", id.clone()));
    }
    if let Some(s) = schema {
        headers.push(("schema", s));
    }
    Record {
        topic: cfg.dead_letter_topic.clone(),
        key: rejection.event_id.clone().map(String::into_bytes),
        payload: thrift::to_compact_bytes(&letter),
        headers,
        kind: RecordKind::DeadLetter,
    }
}

/// For an accepted event whose record Kafka then refused for good (`reason` is the sink's
/// bounded `kafka_rejected:<code>`): the rejection reported to the client and the dead letter
/// holding the event's original JSON, as for an event the pipeline rejected.
pub fn dead_letter_for_refused(
    index: usize,
    reason: &'static str,
    original: &str,
    cfg: &PipelineConfig,
    enrichment: &Enrichment,
) -> (Rejection, Record) {
    let rejection = Rejection {
        index,
        event_id: super::envelope::sniff_event_id(original),
        reason: RejectReason::KafkaRejected(reason),
        path: String::new(),
        message: format!("kafka refused the event's record and retrying cannot help ({reason})"),
    };
    let record = dead_letter_for_event(
        &rejection,
        original.as_bytes(),
        super::envelope::schema_as_sent(original),
        cfg,
        enrichment,
    );
    (rejection, record)
}

/// Builds the dead letter for a whole request that was refused (undecodable body, too large...),
/// holding as much of the body as was read, cut to the cap.
pub fn dead_letter_for_request(
    reason: &str,
    message: &str,
    http_status: u16,
    body: &[u8],
    dead_letter_topic: &Arc<str>,
    cap: usize,
    enrichment: &Enrichment,
) -> Record {
    let (original, was_truncated) = truncated(body, cap);
    let letter = DeadLetter {
        reason: reason.into(),
        path: None,
        message: message.into(),
        original,
        truncated: was_truncated,
        event_id: None,
        schema: None,
        index: None,
        http_status: Some(i32::from(http_status)),
        enrichment: enrichment.clone(),
    };
    Record {
        topic: dead_letter_topic.clone(),
        key: None,
        payload: thrift::to_compact_bytes(&letter),
        headers: vec![("reason", reason.into())],
        kind: RecordKind::DeadLetter,
    }
}
