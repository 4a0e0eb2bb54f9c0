//! The last stage: a valid event (or a rejection) becomes a Kafka record of Thrift bytes.
//!
//! Every record leaves here within `PipelineConfig::max_record_bytes`: an event record that
//! would not fit is turned into a rejection (`too_large`), and a dead letter is cut to fit.

use serde_json::{Map, Value};

use super::bounds::{self, record_size, PARTITION_KEY_MAX};
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
///
/// Rejects the event when its partition key is over `PARTITION_KEY_MAX` (`invalid_envelope`)
/// or its record would exceed the producer's `message.max.bytes` (`too_large`).
pub fn event_record(
    valid: ValidEvent,
    text_len: usize,
    batch_context: &Map<String, Value>,
    cfg: &PipelineConfig,
    enrichment: &EncodedEnrichment,
) -> Result<Record, Rejection> {
    let raw = valid.raw;
    let reject = |event_id, reason, path: String, message| Rejection {
        index: raw.index,
        event_id: Some(event_id),
        reason,
        path,
        message,
    };
    let key = match partition_key(batch_context, &raw.context) {
        Ok(Some(key)) => key,
        Ok(None) => raw.event_id.clone(),
        Err((field, len)) => {
            let message = format!(
                "context.{field} is {len} bytes; a partition key may have at most {PARTITION_KEY_MAX}"
            );
            let path = format!("/context/{field}");
            return Err(reject(
                raw.event_id,
                RejectReason::InvalidEnvelope,
                path,
                message,
            ));
        }
    };
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
    let mut headers = vec![
        ("schema", valid.schema.id.to_string()),
        ("event_id", raw.event_id),
    ];
    let size = record_size(Some(key.as_bytes()), &headers, payload.len());
    if size > cfg.max_record_bytes {
        let message = format!(
            "event encodes to a {size}-byte Kafka record; the producer's message.max.bytes is {}",
            cfg.max_record_bytes
        );
        let event_id = headers.pop().map(|(_, id)| id).unwrap_or_default();
        return Err(reject(
            event_id,
            RejectReason::TooLarge,
            String::new(),
            message,
        ));
    }
    Ok(Record {
        topic: cfg.topic(&valid.schema.name),
        key: Some(key.into_bytes()),
        payload,
        headers,
        kind: RecordKind::Event {
            client_id: raw.client_id,
        },
    })
}

/// The partition key from the merged context (the event's own context wins over the batch's,
/// key by key); `Err((field, length))` when the chosen one is over `PARTITION_KEY_MAX`.
fn partition_key(
    batch: &Map<String, Value>,
    event: &Map<String, Value>,
) -> Result<Option<String>, (&'static str, usize)> {
    for field in ["visitor_id", "session_id"] {
        match event.get(field).or_else(|| batch.get(field)) {
            Some(Value::String(s)) if s.len() > PARTITION_KEY_MAX => return Err((field, s.len())),
            Some(Value::String(s)) if !s.is_empty() => return Ok(Some(s.clone())),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            _ => {}
        }
    }
    Ok(None)
}

/// Builds the dead letter for one rejected event, holding its original JSON.
///
/// The event id becomes the key and `event_id` header only when it is a UUID (anything else
/// was cut for display and stays in the letter's `event_id` field).
pub fn dead_letter_for_event(
    rejection: &Rejection,
    original: &[u8],
    schema: Option<String>,
    cfg: &PipelineConfig,
    enrichment: &Enrichment,
    request_id: Option<&str>,
) -> Record {
    let valid_id = rejection
        .event_id
        .as_ref()
        .filter(|id| uuid::Uuid::try_parse(id).is_ok());
    let schema = schema.map(|s| bounds::cut_owned(s, bounds::SCHEMA_MAX));
    let letter = DeadLetter {
        reason: rejection.reason.as_str().into(),
        path: Some(bounds::cut(&rejection.path, bounds::PATH_MAX)),
        message: bounds::cut(&rejection.message, bounds::MESSAGE_MAX),
        original: Vec::new(),
        truncated: false,
        event_id: rejection
            .event_id
            .as_deref()
            .map(|id| bounds::cut(id, bounds::SHOWN_ID_MAX)),
        schema: schema.clone(),
        index: i32::try_from(rejection.index).ok(),
        http_status: None,
        enrichment: enrichment.clone(),
        request_id: request_id.map(str::to_owned),
    };
    let mut headers = vec![("reason", rejection.reason.as_str().to_string())];
    if let Some(id) = valid_id {
        headers.push(("event_id", id.clone()));
    }
    if let Some(s) = schema {
        headers.push(("schema", s));
    }
    let key = valid_id.map(|id| id.clone().into_bytes());
    fit_dead_letter(letter, original, key, headers, cfg)
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
    request_id: Option<&str>,
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
        request_id,
    );
    (rejection, record)
}

/// Builds the dead letter for a whole request that was refused (undecodable body, too large...),
/// holding as much of the body as was read, cut to the cap and to what fits in a record.
pub fn dead_letter_for_request(
    reason: &str,
    message: &str,
    http_status: u16,
    body: &[u8],
    cfg: &PipelineConfig,
    enrichment: &Enrichment,
    request_id: Option<&str>,
) -> Record {
    let letter = DeadLetter {
        reason: bounds::cut(reason, bounds::SCHEMA_MAX),
        path: None,
        message: bounds::cut(message, bounds::MESSAGE_MAX),
        original: Vec::new(),
        truncated: false,
        event_id: None,
        schema: None,
        index: None,
        http_status: Some(i32::from(http_status)),
        enrichment: enrichment.clone(),
        request_id: request_id.map(str::to_owned),
    };
    let headers = vec![("reason", letter.reason.clone())];
    fit_dead_letter(letter, body, None, headers, cfg)
}

/// Finishes a dead letter whose client strings are already capped: `original` is cut to
/// `limits.dead_letter_max_bytes` and, if the record would still exceed `max_record_bytes`, by
/// the excess (one more encoding, only then), so the record always fits.
pub fn fit_dead_letter(
    mut letter: DeadLetter,
    original: &[u8],
    key: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    cfg: &PipelineConfig,
) -> Record {
    let mut keep = original.len().min(cfg.limits.dead_letter_max_bytes);
    letter.original = original[..keep].to_vec();
    letter.truncated = keep < original.len();
    let mut payload = thrift::to_compact_bytes(&letter);
    let size = record_size(key.as_deref(), &headers, payload.len());
    if size > cfg.max_record_bytes {
        // Dropping n bytes of `original` shrinks the payload by at least n (its length varint
        // can only get shorter).
        keep = keep.saturating_sub(size - cfg.max_record_bytes);
        letter.original.truncate(keep);
        letter.truncated = true;
        payload = thrift::to_compact_bytes(&letter);
    }
    let record = Record {
        topic: cfg.dead_letter_topic.clone(),
        key,
        payload,
        headers,
        kind: RecordKind::DeadLetter,
    };
    debug_assert!(bounds::size_of(&record) <= cfg.max_record_bytes);
    record
}
