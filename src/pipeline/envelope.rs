//! The bundle envelope and each event's envelope fields.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::bounds::{cut, cut_owned, MESSAGE_MAX, SHOWN_ID_MAX};
use super::{RawEvent, RejectReason, Rejection};
use crate::config::Limits;

/// A request body parsed as far as the envelope: events stay raw JSON text borrowed from the
/// body, so each one is parsed (once) on its own and a bad event cannot spoil the bundle.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle<'a> {
    #[serde(default)]
    pub sent_at: Option<String>,
    #[serde(default)]
    pub context: Map<String, Value>,
    #[serde(borrow)]
    pub events: Vec<&'a RawValue>,
    /// Where the parsed body starts in memory, to give events' byte ranges (`span`).
    #[serde(skip)]
    body_start: usize,
    /// Length of the decompressed body (the output budget is a multiple of it).
    #[serde(skip)]
    pub body_bytes: usize,
    /// Length of `context` as compact JSON, 0 when empty: measured once per request, it counts
    /// toward each event's size limit and has its own (`limits.max_context_bytes`).
    #[serde(skip)]
    pub context_bytes: usize,
    /// Produced by a protocol translator: its events may carry the translator's own rejection
    /// (`super::translated`). Never set for a client's native bundle.
    #[serde(skip)]
    pub translated: bool,
}

/// Nesting serde_json parses at most (its recursion limit, which keeps parsing off the stack's
/// edge); a body whose envelope nests deeper is refused as too deep.
pub const BODY_DEPTH_CAP: usize = 127;

/// Why a body is not a bundle; the message goes back to the client.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is not an event bundle: {0}")]
    NotABundle(String),
    #[error("bundle nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("batch context nests deeper than {0} levels (the per-event limit)")]
    ContextTooDeep(usize),
}

impl<'a> Bundle<'a> {
    /// Parses a decompressed body as far as the envelope. Events are only delimited here (serde
    /// skips them without recursion), so a deep event is rejected on its own later; the batch
    /// context is held to the per-event depth limit, since it becomes part of every event.
    /// Depth is measured only when something failed: the common path scans the body once.
    pub fn parse(body: &'a [u8], max_depth: usize) -> Result<Bundle<'a>, BundleError> {
        let text = std::str::from_utf8(body)
            .map_err(|e| BundleError::NotJson(format!("not UTF-8: {e}")))?;
        let mut bundle = serde_json::from_str::<Bundle<'a>>(text).map_err(|e| {
            // serde_json reports its recursion limit as a syntax error; only then is depth the
            // cause worth naming (a deep event inside an otherwise bad bundle is not).
            if e.is_syntax() && json_depth(body) > BODY_DEPTH_CAP {
                BundleError::TooDeep(BODY_DEPTH_CAP)
            } else if e.is_syntax() || e.is_eof() {
                BundleError::NotJson(cut(&e.to_string(), MESSAGE_MAX))
            } else {
                // e.g. "unknown field `<a client's key>`": cut, it goes back in the response.
                BundleError::NotABundle(cut(&e.to_string(), MESSAGE_MAX))
            }
        })?;
        bundle.body_bytes = body.len();
        bundle.context_bytes = compact_json_len(&bundle.context);
        // The context object is level 1 of an event's context, as an event's own would be.
        if bundle.context.values().map(value_depth).max().unwrap_or(0) + 1 > max_depth {
            return Err(BundleError::ContextTooDeep(max_depth));
        }
        bundle.body_start = body.as_ptr() as usize;
        Ok(bundle)
    }

    /// Event `index`'s JSON text as a byte range of the body it was parsed from (empty if there
    /// is no such event).
    pub fn span(&self, index: usize) -> std::ops::Range<usize> {
        let Some(event) = self.events.get(index) else {
            return 0..0;
        };
        let text = event.get();
        // The events borrow from the body, so their text lies inside it.
        let start = (text.as_ptr() as usize).saturating_sub(self.body_start);
        start..start + text.len()
    }
}

/// Length of a map as compact JSON, counted without building the text.
fn compact_json_len(map: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    if map.is_empty() {
        return 0;
    }
    let mut count = Count(0);
    // Only a failing writer or a non-string key could fail; neither exists here. Should it
    // anyway, the context counts as too large rather than free.
    match serde_json::to_writer(&mut count, map) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

/// Nesting depth of a parsed value: 0 for a scalar, 1 for a flat array or object. Recursion is
/// bounded by serde_json's recursion limit on whatever was parsed.
pub fn value_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Maximum nesting depth of JSON text, by a byte scan that understands strings. Malformed text
/// gives some number; the parser reports the real error.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The fields an event may carry. Unknown fields are rejected rather than silently dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventEnvelope {
    schema: Option<Value>,
    event_id: Option<Value>,
    ts: Option<Value>,
    context: Option<Value>,
    data: Option<Value>,
}

impl EventEnvelope {
    fn values(&self) -> impl Iterator<Item = &Value> {
        [
            &self.schema,
            &self.event_id,
            &self.ts,
            &self.context,
            &self.data,
        ]
        .into_iter()
        .flatten()
    }
}

/// Parses and checks one event's envelope. `context_bytes` is the batch context's size
/// (`Bundle::context_bytes`): the event inherits it, so it counts toward the event's limit.
///
/// Depth: the event object is level 1, so its `data` may nest `max_depth` levels below it. It is
/// measured on the parsed values (cheap: a walk over nodes, not bytes); an event too deep for
/// serde_json to parse at all is recognised by a byte scan on that error path.
pub fn parse_event(
    index: usize,
    text: &str,
    context_bytes: usize,
    limits: &Limits,
) -> Result<RawEvent, Rejection> {
    let reject = |reason, path: &str, message: String, event_id: Option<String>| Rejection {
        index,
        event_id,
        reason,
        path: path.into(),
        message,
    };
    if text.len().saturating_add(context_bytes) > limits.max_event_bytes {
        let message = if context_bytes == 0 {
            format!(
                "event is {} bytes; the limit is {}",
                text.len(),
                limits.max_event_bytes
            )
        } else {
            format!(
                "event is {} bytes plus {context_bytes} bytes of batch context; the limit is {}",
                text.len(),
                limits.max_event_bytes
            )
        };
        return Err(reject(
            RejectReason::TooLarge,
            "",
            message,
            sniff_event_id(text),
        ));
    }
    let too_deep = |depth: usize| {
        let message = format!(
            "event nests {} levels; the limit is {}",
            depth - 1,
            limits.max_depth
        );
        Err(reject(
            RejectReason::TooDeep,
            "",
            message,
            sniff_event_id(text),
        ))
    };
    let env: EventEnvelope = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => {
            let depth = json_depth(text.as_bytes());
            if depth > limits.max_depth + 1 {
                return too_deep(depth);
            }
            let message = cut(&format!("event envelope: {e}"), MESSAGE_MAX);
            let id = sniff_event_id(text);
            return Err(reject(RejectReason::InvalidEnvelope, "", message, id));
        }
    };
    let depth = 1 + env.values().map(value_depth).max().unwrap_or(0);
    if depth > limits.max_depth + 1 {
        return too_deep(depth);
    }
    let (event_id, client_id) = match env.event_id {
        None | Some(Value::Null) => (uuid::Uuid::new_v4().to_string(), None),
        Some(Value::String(s)) => match uuid::Uuid::try_parse(&s) {
            Ok(u) => (s, Some(u.as_u128())),
            Err(_) => {
                let message =
                    "event_id must be a UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e".into();
                // Shown cut, so the client can find its event; never a key or header.
                return Err(reject(
                    RejectReason::BadEventId,
                    "/event_id",
                    message,
                    Some(cut_owned(s, SHOWN_ID_MAX)),
                ));
            }
        },
        Some(_) => {
            let message = "event_id must be a string holding a UUID".into();
            return Err(reject(RejectReason::BadEventId, "/event_id", message, None));
        }
    };
    let id = Some(event_id.clone());
    let schema = match env.schema {
        Some(Value::String(s)) => s,
        None => {
            let message = "missing 'schema' (<name>/<major>, e.g. \"page_view/1\")".into();
            return Err(reject(
                RejectReason::InvalidEnvelope,
                "/schema",
                message,
                id,
            ));
        }
        Some(_) => {
            let message = "'schema' must be a string like \"page_view/1\"".into();
            return Err(reject(
                RejectReason::InvalidEnvelope,
                "/schema",
                message,
                id,
            ));
        }
    };
    let ts = match env.ts {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_rfc3339(&s) => Some(s),
        Some(_) => {
            let message =
                "ts must be an RFC 3339 timestamp such as 2026-11-21T11:59:58.120Z".into();
            return Err(reject(RejectReason::InvalidEnvelope, "/ts", message, id));
        }
    };
    let context = match env.context {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            let message = "context must be an object".into();
            return Err(reject(
                RejectReason::InvalidEnvelope,
                "/context",
                message,
                id,
            ));
        }
    };
    Ok(RawEvent {
        index,
        event_id,
        client_id,
        schema,
        ts,
        context,
        // A missing payload is the empty object; the schema decides whether that is valid.
        data: env.data.unwrap_or_else(|| Value::Object(Map::new())),
    })
}

/// RFC 3339 check for client timestamps (kept as sent; only their shape is checked).
pub fn is_rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// Best-effort event id from an event that failed before its envelope was read, so the client
/// can match the rejection to its event. Whatever was sent, cut to `SHOWN_ID_MAX`: it is only
/// shown; the dead letter uses it as key or header only if it is a UUID.
pub fn sniff_event_id(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        event_id: Option<String>,
    }
    if text.len() > 1 << 20 {
        return None;
    }
    serde_json::from_str::<Id>(text)
        .ok()
        .and_then(|i| i.event_id)
        .map(|id| cut_owned(id, SHOWN_ID_MAX))
}

/// The `schema` string of an event as sent, for dead letters (None if absent or unreadable),
/// cut to `SCHEMA_MAX`.
pub fn schema_as_sent(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct S {
        schema: Option<Value>,
    }
    match serde_json::from_str::<S>(text).ok()?.schema? {
        Value::String(s) => Some(cut_owned(s, super::bounds::SCHEMA_MAX)),
        _ => None,
    }
}
