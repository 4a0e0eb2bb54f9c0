//! Every size that reaches Kafka (and so the spool) is bounded here, before a record exists.
//!
//! - A record's final size is computed in one place, `record_size`, exactly as librdkafka counts
//!   it against the producer's `message.max.bytes` (`rd_kafka_msg_new0` in `rdkafka_msg.c`):
//!   key + value + serialized headers + the worst-case per-record framing of message format v2.
//!   An event whose record would exceed the limit becomes a `too_large` dead letter; a dead
//!   letter is built to fit (`encode::fit_dead_letter`), since every client-supplied string in it
//!   is cut to a cap below and its copy of the original shrinks to what is left.
//! - Client strings that end up in records or responses are cut to the caps below. A cut string
//!   ends with `TRUNCATION_MARK`, so a reader sees it was cut (the `DeadLetter.truncated` field
//!   keeps its meaning: the copy of the original was cut).
//! - A request may produce at most `max_output_ratio` bytes per decompressed body byte plus a
//!   fixed allowance per event (`OutputBudget`): the batch context is copied into every event,
//!   and without this bound a 424-byte gzip body produced 100 MB.

use crate::config::{Config, ConfigError, KafkaConfig, Limits};

/// librdkafka's worst-case framing of one v2 record (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`):
/// Length varint (5) + Attributes (1) + TimestampDelta varint (10) + OffsetDelta (5) + KeyLen
/// (5) + ValueLen (5) + HeaderCount (5).
pub const KAFKA_RECORD_OVERHEAD: usize = 36;

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The smallest `message.max.bytes` the gateway starts with: room for a dead letter whose every
/// capped field is full (about 5 KB) and some of its original.
pub const MIN_MESSAGE_MAX_BYTES: usize = 16 * 1024;
/// Largest `message.max.bytes` accepted: every record must also fit the spool's record limit
/// (16 MiB of body, with room for its topic and framing), or a record Kafka would take could
/// never be spooled.
pub const MAX_MESSAGE_MAX_BYTES: usize = 15 << 20;

/// An event id that is not a UUID is shown (response, dead letter) cut to this many bytes, and
/// never used as a key or header.
pub const SHOWN_ID_MAX: usize = 64;
/// `schema` as sent, in messages, dead letters and their `schema` header.
pub const SCHEMA_MAX: usize = 128;
/// A rejection's JSON pointer (client keys can make it long).
pub const PATH_MAX: usize = 512;
/// A rejection's or refusal's message (schema validation messages quote client values).
pub const MESSAGE_MAX: usize = 1024;
/// A partition key taken from `visitor_id` / `session_id`; a longer one rejects its event.
pub const PARTITION_KEY_MAX: usize = 256;
/// The request's `User-Agent` and `Origin` as written into every record's enrichment.
pub const USER_AGENT_MAX: usize = 1024;
pub const ORIGIN_MAX: usize = 512;

/// Ends every string that was cut.
pub const TRUNCATION_MARK: &str = "…[truncated]";

impl KafkaConfig {
    /// The producer's `message.max.bytes`: librdkafka's default unless `librdkafka` overrides it.
    /// Every record the pipeline builds fits in it.
    pub fn message_max_bytes(&self) -> usize {
        self.librdkafka
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }
}

/// Start-up checks of the size settings (part of `Config::validate`).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| {
        Err(ConfigError::Invalid {
            key: key.into(),
            message,
        })
    };
    if let Some(v) = config.kafka.librdkafka.get("message.max.bytes") {
        match v.trim().parse::<usize>() {
            Ok(n) if (MIN_MESSAGE_MAX_BYTES..=MAX_MESSAGE_MAX_BYTES).contains(&n) => {}
            _ => {
                let message = format!(
                    "must be a number of bytes between {MIN_MESSAGE_MAX_BYTES} (room for a dead \
                     letter) and {MAX_MESSAGE_MAX_BYTES} (what the spool can hold)"
                );
                return invalid("kafka.librdkafka.message.max.bytes", message);
            }
        }
    }
    let l = &config.limits;
    if l.max_context_bytes >= l.max_event_bytes {
        let message = "must be less than limits.max_event_bytes (the context counts toward every \
                       event)";
        return invalid("limits.max_context_bytes", message.into());
    }
    if l.max_output_ratio < 3 {
        let message = "must be at least 3 (Thrift takes up to 3 bytes per JSON byte, for doubles)";
        return invalid("limits.max_output_ratio", message.into());
    }
    Ok(())
}

/// Bytes librdkafka counts for a record against `message.max.bytes`.
pub fn record_size(
    key: Option<&[u8]>,
    headers: &[(&'static str, String)],
    value_len: usize,
) -> usize {
    let headers: usize = headers
        .iter()
        .map(|(k, v)| zigzag_varint_len(k.len()) + k.len() + zigzag_varint_len(v.len()) + v.len())
        .sum();
    KAFKA_RECORD_OVERHEAD + key.map_or(0, <[u8]>::len) + value_len + headers
}

/// Size of `record_size` for a built record.
pub fn size_of(record: &crate::sink::Record) -> usize {
    record_size(record.key.as_deref(), &record.headers, record.payload.len())
}

/// Length of a signed varint as Kafka writes header lengths (zigzag, 7 bits a byte).
fn zigzag_varint_len(n: usize) -> usize {
    let mut z = (n as u64) << 1;
    let mut len = 1;
    while z >= 0x80 {
        z >>= 7;
        len += 1;
    }
    len
}

/// `s` if it fits in `max` bytes, else its longest prefix (on a char boundary) that fits with
/// `TRUNCATION_MARK` after it. The result is at most `max` bytes (for `max` ≥ the mark's length).
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(TRUNCATION_MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + TRUNCATION_MARK.len());
    out.push_str(&s[..end]);
    out.push_str(TRUNCATION_MARK);
    out
}

/// `cut` for an owned string: no copy when it fits.
pub fn cut_owned(s: String, max: usize) -> String {
    if s.len() <= max {
        s
    } else {
        cut(&s, max)
    }
}

/// The bytes one request may produce, and how many it has so far.
pub struct OutputBudget {
    limit: usize,
    used: usize,
    ratio: usize,
    body_bytes: usize,
    per_event: usize,
}

/// A request whose records would exceed its output budget (answered 413, nothing produced).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "this request would produce more than {limit} bytes for Kafka (limits.max_output_ratio \
     {ratio} x its {body_bytes} decompressed bytes + {per_event} bytes per event): send fewer \
     events per request or a smaller batch context"
)]
pub struct OutputTooLarge {
    pub limit: usize,
    pub ratio: usize,
    pub body_bytes: usize,
    pub per_event: usize,
}

impl OutputBudget {
    /// `max_output_ratio` × the decompressed body, plus per event `output_bytes_per_event` and
    /// the request's encoded enrichment (which is copied into each of its records).
    pub fn new(limits: &Limits, body_bytes: usize, events: usize, enrichment_bytes: usize) -> Self {
        let per_event = limits
            .output_bytes_per_event
            .saturating_add(enrichment_bytes);
        let limit = limits
            .max_output_ratio
            .saturating_mul(body_bytes)
            .saturating_add(events.saturating_mul(per_event));
        OutputBudget {
            limit,
            used: 0,
            ratio: limits.max_output_ratio,
            body_bytes,
            per_event,
        }
    }

    /// Counts a record's bytes; an error once the request is over its budget.
    pub fn spend(&mut self, record_bytes: usize) -> Result<(), OutputTooLarge> {
        self.used = self.used.saturating_add(record_bytes);
        if self.used <= self.limit {
            return Ok(());
        }
        Err(OutputTooLarge {
            limit: self.limit,
            ratio: self.ratio,
            body_bytes: self.body_bytes,
            per_event: self.per_event,
        })
    }

    /// Bytes of the records counted so far.
    pub fn used(&self) -> usize {
        self.used
    }
}
