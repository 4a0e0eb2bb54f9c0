//! One Segment message -> one native event (`{"schema", "event_id", "ts", "context", "data"}`).
//! The mapping table is in the README ("Drop-in for Segment and Snowplow").

use serde_json::{json, Map, Value};

use super::{Call, Segment, NAMESPACE};
use crate::pipeline::translated::rejected_event;
use crate::pipeline::RejectReason;
use crate::schema::Registry;

/// Batch-level members merged into each message.
#[derive(Default)]
pub(super) struct BatchDefaults {
    pub context: Option<Map<String, Value>>,
    pub integrations: Option<Value>,
}

/// What every message of a request is mapped with.
pub(super) struct MapContext<'a> {
    pub segment: &'a Segment,
    pub registry: &'a Registry,
    pub source: &'a str,
    /// The call of a single-call endpoint; None for `/v1/batch` (each message's `type`).
    pub call: Option<Call>,
    pub batch: &'a BatchDefaults,
}

/// Members a message's mapping consumes; any other member is kept in `context.segment.extra`.
const CONSUMED: &[&str] = &[
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "properties",
    "traits",
    "name",
    "category",
    "groupId",
    "previousId",
    "context",
    "integrations",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "writeKey",
];

/// The event id of a Segment message: UUIDv5 in [`NAMESPACE`] of
/// `"<bytes of source>:<source>:<messageId>"` (the length prefix keeps `("a:b", "c")` and
/// `("a", "b:c")` apart).
pub fn event_id(source: &str, message_id: &str) -> uuid::Uuid {
    let name = format!("{}:{source}:{message_id}", source.len());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(NAMESPACE.as_bytes());
    ctx.update(name.as_bytes());
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// "Order Completed", "orderCompleted", "order-completed", "ORDER COMPLETED" ->
/// "order_completed": words split at anything not a letter or digit and at a lower-to-upper
/// case change, lower-cased, joined by `_`. Non-ASCII letters are dropped (schema names are
/// `[a-z0-9_]`).
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// Maps one message's JSON text (already parsed once as part of the body, so it is JSON).
pub(super) fn map_message(text: &str, ctx: &MapContext<'_>) -> Value {
    let seg = ctx.segment;
    let parsed = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        // It is JSON (it was delimited as such), so it nests deeper than the parser goes.
        Err(_) => return too_deep(text, ctx),
    };
    if text.len() > seg.max_message_bytes {
        let cause = format!(
            "message is {} bytes; the limit is {} (segment.max_message_bytes)",
            text.len(),
            seg.max_message_bytes
        );
        return invalid(None, &cause, parsed);
    }
    let Value::Object(mut msg) = parsed else {
        return invalid(None, "a Segment message must be a JSON object", parsed);
    };
    // Kept for a dead letter of the whole message (only built for bad messages).
    let original = |msg: &Map<String, Value>, id: &Option<String>| {
        let mut m = msg.clone();
        if let Some(id) = id {
            m.insert("messageId".into(), Value::String(id.clone()));
        }
        Value::Object(m)
    };
    // The id first, so even a message rejected below carries its (derived) id.
    let message_id = match msg.get("messageId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if s.len() > seg.max_message_id_bytes => {
            let cause = format!(
                "messageId is {} bytes; the limit is {} (segment.max_message_id_bytes)",
                s.len(),
                seg.max_message_id_bytes
            );
            return invalid(None, &cause, Value::Object(msg));
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return invalid(None, "messageId must be a string", Value::Object(msg)),
    };
    msg.remove("messageId");
    let id = message_id
        .as_deref()
        .map(|m| event_id(ctx.source, m).to_string());
    let call = match ctx.call {
        Some(call) => call,
        None => match msg
            .get("type")
            .and_then(Value::as_str)
            .and_then(Call::parse)
        {
            Some(call) => call,
            None => {
                let cause = "a batch message needs a \"type\": track, identify, page, screen, group or alias";
                return invalid(id, cause, original(&msg, &message_id));
            }
        },
    };
    if call == Call::Track && !matches!(msg.get("event"), Some(Value::String(e)) if !e.is_empty()) {
        let cause = "a track message needs an \"event\" name (a string)";
        return invalid(id, cause, original(&msg, &message_id));
    }
    let mut take = |key: &str| msg.remove(key).filter(|v| !v.is_null());
    let object_or_empty = |v: Option<Value>| v.unwrap_or_else(|| Value::Object(Map::new()));

    let mut segment = Map::new();
    if let Some(m) = &message_id {
        segment.insert("message_id".into(), Value::String(m.clone()));
    }
    segment.insert("type".into(), call.as_str().into());
    let (schema, data) = match call {
        Call::Track => {
            let event = match take("event") {
                Some(Value::String(e)) => e,
                _ => String::new(), // checked above
            };
            let properties = object_or_empty(take("properties"));
            let (schema, generic) = seg.track_schema(&event, ctx.registry);
            segment.insert("event".into(), Value::String(event.clone()));
            if generic {
                (schema, json!({"event": event, "properties": properties}))
            } else {
                (schema, properties)
            }
        }
        Call::Identify => (
            seg.generic(call).to_owned(),
            json!({"traits": object_or_empty(take("traits"))}),
        ),
        Call::Page | Call::Screen => {
            let mut data = Map::new();
            for (from, to) in [("name", "name"), ("category", "category")] {
                if let Some(v) = take(from) {
                    data.insert(to.into(), v);
                }
            }
            data.insert("properties".into(), object_or_empty(take("properties")));
            (seg.generic(call).to_owned(), Value::Object(data))
        }
        Call::Group => {
            let mut data = Map::new();
            if let Some(g) = take("groupId") {
                data.insert("group_id".into(), g);
            }
            data.insert("traits".into(), object_or_empty(take("traits")));
            (seg.generic(call).to_owned(), Value::Object(data))
        }
        Call::Alias => {
            let mut data = Map::new();
            if let Some(p) = take("previousId") {
                data.insert("previous_id".into(), p);
            }
            (seg.generic(call).to_owned(), Value::Object(data))
        }
    };

    let user_id = take("userId");
    let anonymous_id = take("anonymousId");
    let mut context = Map::new();
    // The partition key (`visitor_id`): the user, else the anonymous visitor.
    if let Some(key) = user_id.as_ref().or(anonymous_id.as_ref()).and_then(id_text) {
        context.insert("visitor_id".into(), Value::String(key));
    }
    if let Some(u) = user_id {
        context.insert("user_id".into(), u);
    }
    if let Some(a) = anonymous_id {
        context.insert("anonymous_id".into(), a);
    }
    let seg_context = match (take("context"), &ctx.batch.context) {
        (Some(Value::Object(own)), Some(batch)) => {
            let mut merged = batch.clone();
            merged.extend(own);
            Some(Value::Object(merged))
        }
        (None, Some(batch)) => Some(Value::Object(batch.clone())),
        (own, _) => own,
    };
    if let Some(c) = seg_context {
        segment.insert("context".into(), c);
    }
    if let Some(i) = take("integrations").or_else(|| ctx.batch.integrations.clone()) {
        segment.insert("integrations".into(), i);
    }
    // `ts` only when it is RFC 3339 (what the native envelope accepts); any other timestamp is
    // kept as sent rather than costing the event.
    let mut ts = None;
    for key in ["timestamp", "originalTimestamp"] {
        if let Some(v) = take(key) {
            match v.as_str() {
                Some(s) if ts.is_none() && is_rfc3339(s) => ts = Some(s.to_owned()),
                _ => {
                    let name = if key == "timestamp" {
                        "timestamp"
                    } else {
                        "original_timestamp"
                    };
                    segment.insert(name.into(), v);
                }
            }
        }
    }
    for key in ["sentAt", "writeKey", "type"] {
        msg.remove(key);
    }
    // Whatever else the message carried (`version`, `channel`, `_metadata`, ...): kept, never
    // silently dropped.
    msg.retain(|k, _| !CONSUMED.contains(&k.as_str()));
    if !msg.is_empty() {
        segment.insert("extra".into(), Value::Object(msg));
    }
    context.insert("segment".into(), Value::Object(segment));

    let mut event = Map::new();
    event.insert("schema".into(), Value::String(schema));
    if let Some(id) = id {
        event.insert("event_id".into(), Value::String(id));
    }
    if let Some(ts) = ts {
        event.insert("ts".into(), Value::String(ts));
    }
    event.insert("context".into(), Value::Object(context));
    event.insert("data".into(), data);
    Value::Object(event)
}

/// An id as text for the partition key: strings as they are, numbers in decimal.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn is_rfc3339(s: &str) -> bool {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

/// A native event the envelope check rejects as `invalid_envelope` with `cause` in its message
/// (as the name of the one member it does not know, whose value is the original message): the
/// message is dead-lettered alone, as sent, with its derived id when it had one.
fn invalid(id: Option<String>, cause: &str, original: Value) -> Value {
    let mut event = Map::new();
    if let Some(id) = id {
        event.insert("event_id".into(), Value::String(id));
    }
    event.insert(format!("segment: {cause}"), original);
    Value::Object(event)
}

/// A message nested deeper than the JSON parser goes: dead-lettered alone as `too_deep`, with
/// its text (as a JSON string) and the id derived from its `messageId` when that can be read
/// (the rest of the message is skipped without recursion).
fn too_deep(text: &str, ctx: &MapContext<'_>) -> Value {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default, rename = "messageId")]
        message_id: Option<Value>,
    }
    let message_id = serde_json::from_str::<Head>(text)
        .ok()
        .and_then(|h| match h.message_id {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .filter(|m| m.len() <= ctx.segment.max_message_id_bytes);
    let id = message_id.map(|m| event_id(ctx.source, &m).to_string());
    let message = format!(
        "segment: message nests deeper than {} levels",
        crate::pipeline::BODY_DEPTH_CAP
    );
    rejected_event(
        RejectReason::TooDeep,
        "",
        &message,
        id.as_deref(),
        Value::String(text.to_owned()),
    )
}
