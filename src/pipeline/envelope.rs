//! The bundle envelope and each event's envelope fields.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

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
    /// Deepest nesting anywhere in the body (from the scan `parse` does anyway). When it is
    /// within the event limit, no event needs a depth scan of its own.
    #[serde(skip)]
    pub depth: usize,
}

/// Deepest body accepted at all: bundle object + events array + event object + 120 levels.
pub const BODY_DEPTH_CAP: usize = 123;

/// Why a body is not a bundle; the message goes back to the client.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is not an event bundle: {0}")]
    NotABundle(String),
    #[error("bundle nests deeper than {0} levels")]
    TooDeep(usize),
}

impl<'a> Bundle<'a> {
    /// Parses a decompressed body. Depth is checked before parsing so a hostile body costs a scan,
    /// not a stack.
    pub fn parse(body: &'a [u8], max_depth: usize) -> Result<Bundle<'a>, BundleError> {
        // An event deeper than the limit is rejected on its own (the batch survives), so the
        // body may nest further; past this cap (below serde_json's recursion limit of 128) the
        // whole body is refused.
        let depth_cap = BODY_DEPTH_CAP.max(max_depth + 3);
        let depth = json_depth(body);
        if depth > depth_cap {
            return Err(BundleError::TooDeep(depth_cap));
        }
        let text = std::str::from_utf8(body)
            .map_err(|e| BundleError::NotJson(format!("not UTF-8: {e}")))?;
        let mut bundle = serde_json::from_str::<Bundle<'a>>(text).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                BundleError::NotJson(e.to_string())
            } else {
                BundleError::NotABundle(e.to_string())
            }
        })?;
        bundle.depth = depth;
        Ok(bundle)
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

/// Parses and checks one event's envelope.
///
/// `body_depth` is the deepest nesting of the whole body: an event sits three levels down
/// (bundle, events array, event), so when the body is within `max_depth + 3` no event can exceed
/// the limit and the per-event scan is skipped.
pub fn parse_event(
    index: usize,
    text: &str,
    limits: &Limits,
    body_depth: usize,
) -> Result<RawEvent, Rejection> {
    let reject = |reason, path: &str, message: String, event_id: Option<String>| Rejection {
        index,
        event_id,
        reason,
        path: path.into(),
        message,
    };
    if text.len() > limits.max_event_bytes {
        let message = format!(
            "event is {} bytes; the limit is {}",
            text.len(),
            limits.max_event_bytes
        );
        return Err(reject(
            RejectReason::TooLarge,
            "",
            message,
            sniff_event_id(text),
        ));
    }
    // The bundle's own levels are not the event's: depth counts from the event object.
    let depth = if body_depth > limits.max_depth + 3 {
        json_depth(text.as_bytes())
    } else {
        0
    };
    if depth > limits.max_depth + 1 {
        let message = format!(
            "event nests {} levels; the limit is {}",
            depth - 1,
            limits.max_depth
        );
        return Err(reject(
            RejectReason::TooDeep,
            "",
            message,
            sniff_event_id(text),
        ));
    }
    let env: EventEnvelope = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) => {
            let message = format!("event envelope: {e}");
            let id = sniff_event_id(text);
            return Err(reject(RejectReason::InvalidEnvelope, "", message, id));
        }
    };
    let (event_id, client_id) = match env.event_id {
        None | Some(Value::Null) => (uuid::Uuid::new_v4().to_string(), None),
        Some(Value::String(s)) => match uuid::Uuid::try_parse(&s) {
            Ok(u) => (s, Some(u.as_u128())),
            Err(_) => {
                let message =
                    "event_id must be a UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e".into();
                return Err(reject(
                    RejectReason::BadEventId,
                    "/event_id",
                    message,
                    Some(s),
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
/// can match the rejection to its event.
fn sniff_event_id(text: &str) -> Option<String> {
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
}

/// The `schema` string of an event as sent, for dead letters (None if absent or unreadable).
pub fn schema_as_sent(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct S {
        schema: Option<Value>,
    }
    match serde_json::from_str::<S>(text).ok()?.schema? {
        Value::String(s) => Some(s),
        _ => None,
    }
}
