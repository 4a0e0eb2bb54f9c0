//! Segment's HTTP Tracking API: `POST /v1/batch` and the single calls, translated into native
//! bundles (`crate::http::ingest::Translate`); the HTTP side is `crate::http::segment`.
//!
//! Decisions, each for a reason a Segment user depends on:
//! - **Event ids.** A `messageId` is any string (analytics.js sends `ajs-next-<hash>`), but our
//!   event ids are UUIDs: dedup keeps them as `u128`, and Kafka keys and the `event_id` header
//!   are UUIDs by contract. So the event id is a UUIDv5 of the `messageId` in [`NAMESPACE`], with
//!   the source (the write key's name when auth is on, else the write key sent) in the name, so
//!   two sources' ids cannot collide and a retried message keeps its id (and is deduplicated).
//!   The `messageId` itself is kept in `context.segment.message_id`. No `messageId`: a fresh id,
//!   as for a native event without one.
//! - **Schemas.** `track`: the `[segment.events]` table, else the naming rule (snake case of the
//!   event name, if such a schema exists), else the generic `segment_track`; the other calls
//!   have their own `segment_*` schema. A mapped `track`'s `data` is its `properties` as they
//!   are (so an existing schema validates them); the generic schemas wrap the payload with what
//!   the call needs (`event`, `name`, `category`, `group_id`, `previous_id`).
//! - **Partition key.** The native key is `context.visitor_id`: it is set to `userId`, else
//!   `anonymousId`, so one user's events stay in order.
//! - **Bad messages** (not an object, no event name, an over-long `messageId`, over
//!   `segment.max_message_bytes`) become events the native envelope check rejects as
//!   `invalid_envelope`, with the cause in the dead letter's message: each is dead-lettered alone
//!   and the rest of its batch goes on, exactly like an invalid native event. A message nested
//!   deeper than the JSON parser goes is dead-lettered alone as `too_deep`, its text kept.
//! - **Bounds.** A batch-level `context` (and `integrations`) is merged into every message, so a
//!   batch is refused (400 for Segment) before anything is mapped when it has more than
//!   `limits.max_events` messages or a batch `context` over `limits.max_context_bytes` or
//!   deeper than `limits.max_depth` (as a native batch context); and the translation stops with
//!   `decompressed_too_large` as soon as its output passes `limits.max_decompressed_bytes`
//!   (what the pipeline would accept as a body anyway).

mod map;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::{Limits, NamingRule, SegmentConfig};
use crate::http::error::ApiError;
use crate::http::ingest::Translate;
use crate::pipeline::{json_depth, value_depth, BODY_DEPTH_CAP};
use crate::schema::Registry;

pub use map::{event_id, snake_case};

/// The UUIDv5 namespace of event ids derived from Segment `messageId`s (fixed forever: changing
/// it would give retried messages new ids).
pub const NAMESPACE: uuid::Uuid = uuid::uuid!("a43e72e5-e59f-40bc-897c-4ed5b4022f93");

/// A Segment call type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Track => "track",
            Call::Identify => "identify",
            Call::Page => "page",
            Call::Screen => "screen",
            Call::Group => "group",
            Call::Alias => "alias",
        }
    }

    /// A batch message's `type`.
    pub fn parse(s: &str) -> Option<Call> {
        Some(match s {
            "track" => Call::Track,
            "identify" => Call::Identify,
            "page" => Call::Page,
            "screen" => Call::Screen,
            "group" => Call::Group,
            "alias" => Call::Alias,
            _ => return None,
        })
    }
}

/// `[segment]` resolved against the schema registry at start-up.
#[derive(Debug)]
pub struct Segment {
    /// `track` event name -> schema id (all exist).
    events: HashMap<String, String>,
    naming: NamingRule,
    naming_major: u32,
    /// Schema id per call type, in `Call` order.
    generic: [String; 6],
    pub max_message_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_message_id_bytes: usize,
    /// Keyless bodies being read for their `writeKey` (`segment.max_keyless_reads`).
    pub keyless_reads: tokio::sync::Semaphore,
}

impl Segment {
    /// `None` when disabled; an error naming the config key when a schema it maps to is missing.
    pub fn new(cfg: &SegmentConfig, registry: &Registry) -> Result<Option<Segment>, String> {
        if !cfg.enabled {
            return Ok(None);
        }
        let known = |key: String, id: &str| {
            if registry.get(id).is_some() {
                Ok(())
            } else {
                Err(format!(
                    "config key `{key}`: no schema '{id}' in the schema directory \
                     (expected <name>/<major> of a known schema; the shipped segment_* schemas \
                     are in schemas/)"
                ))
            }
        };
        for (event, id) in &cfg.events {
            known(format!("segment.events.\"{event}\""), id)?;
        }
        let s = &cfg.schemas;
        let generic = [
            s.track.clone(),
            s.identify.clone(),
            s.page.clone(),
            s.screen.clone(),
            s.group.clone(),
            s.alias.clone(),
        ];
        for (call, id) in ALL_CALLS.iter().zip(&generic) {
            known(format!("segment.schemas.{}", call.as_str()), id)?;
        }
        Ok(Some(Segment {
            events: cfg.events.clone().into_iter().collect(),
            naming: cfg.naming,
            naming_major: cfg.naming_major,
            generic,
            max_message_bytes: cfg.max_message_bytes,
            max_batch_bytes: cfg.max_batch_bytes,
            max_message_id_bytes: cfg.max_message_id_bytes,
            keyless_reads: tokio::sync::Semaphore::new(cfg.max_keyless_reads),
        }))
    }

    /// The schema of a `track` event: table, naming rule, generic (see the module doc).
    /// `true` with it when it is the generic one (its `data` wraps the properties).
    pub fn track_schema(&self, event: &str, registry: &Registry) -> (String, bool) {
        if let Some(id) = self.events.get(event) {
            return (id.clone(), false);
        }
        if self.naming == NamingRule::SnakeCase {
            let name = snake_case(event);
            if !name.is_empty() {
                let id = format!("{name}/{}", self.naming_major);
                if registry.get(&id).is_some() {
                    return (id, false);
                }
            }
        }
        (self.generic(Call::Track).to_owned(), true)
    }

    /// The configured schema of a call type.
    pub fn generic(&self, call: Call) -> &str {
        let i = ALL_CALLS.iter().position(|c| *c == call).unwrap_or(0);
        &self.generic[i]
    }
}

const ALL_CALLS: [Call; 6] = [
    Call::Track,
    Call::Identify,
    Call::Page,
    Call::Screen,
    Call::Group,
    Call::Alias,
];

/// One request's translation: a `/v1/batch` body (`call` None) or one call's message.
pub struct SegmentRequest {
    pub segment: Arc<Segment>,
    pub registry: Arc<Registry>,
    pub call: Option<Call>,
    /// Names the sender in derived event ids: the write key's name (auth on) or the write key
    /// from the `Authorization` header. None: the body's `writeKey`, else "".
    pub source: Option<String>,
    /// The gateway's request limits (events per batch, batch context, output bound).
    pub limits: Limits,
}

/// A `/v1/batch` body; other members are ignored, as Segment does.
#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(default, rename = "sentAt")]
    sent_at: Option<Value>,
    #[serde(default, rename = "writeKey")]
    write_key: Option<String>,
    /// Merged under each message's own `context` (the message's keys win).
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    integrations: Option<Value>,
}

impl Translate for SegmentRequest {
    fn translate(&self, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        let seg = &self.segment;
        if body.len() > seg.max_batch_bytes {
            return Err(ApiError::DecompressedTooLarge {
                limit: seg.max_batch_bytes,
            });
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| ApiError::Undecodable(format!("body is not UTF-8: {e}")))?;
        let json_error = |e: serde_json::Error, shape: &str| {
            let message = crate::pipeline::bounds::cut(&e.to_string(), 512);
            if e.is_syntax() || e.is_eof() {
                ApiError::Undecodable(format!("body is not valid JSON: {message}"))
            } else {
                ApiError::NotABundle(format!("{shape}: {message}"))
            }
        };
        let limits = &self.limits;
        let (messages, sent_at, write_key, batch) = match self.call {
            None => {
                let b: BatchBody = serde_json::from_str(text).map_err(|e| {
                    if e.is_syntax() && json_depth(body) > BODY_DEPTH_CAP {
                        return ApiError::Undecodable(format!(
                            "body nests deeper than {BODY_DEPTH_CAP} levels"
                        ));
                    }
                    json_error(e, "a batch is {\"batch\": [messages]}")
                })?;
                // Checked before anything is mapped: each message gets a copy of the batch
                // context, so its size times the count is what mapping would build.
                if b.batch.len() > limits.max_events {
                    return Err(ApiError::TooManyEvents {
                        count: b.batch.len(),
                        limit: limits.max_events,
                    });
                }
                if let Some(context) = &b.context {
                    check_batch_context(context, limits)?;
                }
                let batch = map::BatchDefaults {
                    context: b.context,
                    integrations: b.integrations,
                };
                (b.batch, b.sent_at, b.write_key, batch)
            }
            Some(_) => {
                let raw: &RawValue = serde_json::from_str(text)
                    .map_err(|e| json_error(e, "a call's body is one message"))?;
                let head = serde_json::from_str::<SingleHead>(raw.get()).ok();
                let (sent_at, write_key) = head.map_or((None, None), |h| (h.sent_at, h.write_key));
                (vec![raw], sent_at, write_key, map::BatchDefaults::default())
            }
        };
        let source = self.source.clone().or(write_key).unwrap_or_default();
        let ctx = map::MapContext {
            segment: seg,
            registry: &self.registry,
            source: &source,
            call: self.call,
            batch: &batch,
        };
        // The native bundle, written as it is mapped and bounded as it grows: at most one
        // event past the budget is ever held.
        let budget = limits.max_decompressed_bytes;
        let too_large = || ApiError::DecompressedTooLarge { limit: budget };
        let write_error = |e: serde_json::Error| {
            ApiError::Undecodable(format!("could not translate the body: {e}"))
        };
        let mut out = Vec::with_capacity(body.len().saturating_mul(2).min(budget));
        out.push(b'{');
        if let Some(Value::String(s)) = sent_at {
            out.extend_from_slice(b"\"sent_at\":");
            serde_json::to_writer(&mut out, &s).map_err(write_error)?;
            out.push(b',');
        }
        out.extend_from_slice(b"\"events\":[");
        for (i, raw) in messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let event = map::map_message(raw.get(), &ctx);
            serde_json::to_writer(&mut out, &event).map_err(write_error)?;
            if out.len() > budget {
                return Err(too_large());
            }
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }
}

/// A batch-level `context` is copied into every message: held to the native batch context's
/// limits (`limits.max_context_bytes`, and `limits.max_depth` with the context object as
/// level 1).
fn check_batch_context(context: &Map<String, Value>, limits: &Limits) -> Result<(), ApiError> {
    let size = serde_json::to_vec(context).map_or(usize::MAX, |v| v.len());
    if size > limits.max_context_bytes {
        return Err(ApiError::ContextTooLarge {
            size,
            limit: limits.max_context_bytes,
        });
    }
    if context.values().map(value_depth).max().unwrap_or(0) + 1 > limits.max_depth {
        return Err(ApiError::Undecodable(format!(
            "batch context nests deeper than {} levels (the per-event limit)",
            limits.max_depth
        )));
    }
    Ok(())
}

/// What a single call's body says besides the message.
#[derive(Deserialize)]
struct SingleHead {
    #[serde(default, rename = "sentAt")]
    sent_at: Option<Value>,
    #[serde(default, rename = "writeKey")]
    write_key: Option<String>,
}
