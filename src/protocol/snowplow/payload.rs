//! One Snowplow tracker-protocol event (a map of parameter -> string) -> one native event.
//!
//! | Snowplow | native |
//! |---|---|
//! | `eid` | `event_id` (a UUID, as every Snowplow tracker sends; anything else: `bad_event_id`) |
//! | `ttm`, else `dtm` (ms since the epoch) | `ts` (RFC 3339, ms) |
//! | `e=pv` + `url`, `page`, `refr` | `snowplow_page_view/1`: `{url, title, referrer}` |
//! | `e=pp` + `pp_mix` .. `pp_may` | `snowplow_page_ping/1`: `{url, title, referrer, min_x, max_x, min_y, max_y}` |
//! | `e=se` + `se_ca`, `se_ac`, `se_la`, `se_pr`, `se_va` | `snowplow_structured/1`: `{category, action, label, property, value}` |
//! | `e=tr` + `tr_*` | `snowplow_transaction/1` |
//! | `e=ti` + `ti_*` | `snowplow_transaction_item/1` |
//! | `e=ue` + `ue_pr`/`ue_px` | the inner schema's Iglu URI, its `data` as `data` |
//! | `co`/`cx` | `context.contexts`: `[{schema, data}]`, each validated when its schema is known |
//! | `uid`, else `duid` | `context.visitor_id` (the partition key) |
//! | `sid` | `context.session_id` |
//! | every other parameter (`tv`, `p`, `aid`, `tna`, `uid`, `duid`, `sid`, `vid`, `dtm`, `stm`, `url`, `refr`, `res`, `lang`, `tz`, ...) | `context.snowplow.<param>`, as sent (strings) |
//!
//! Numbers the schemas want as numbers (`se_va`, `pp_*`, `tr_tt`, `ti_qu`, ...) are converted
//! when they parse; when not, the string stays and the schema rejects it (`schema_violation`).
//! What cannot be translated at all (unknown `e`, an undecodable `ue_px`/`cx`, a context that
//! fails its schema) becomes a translator rejection (`pipeline::translated`): dead-lettered
//! with its reason, the rest of the payload goes on.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::config::UnknownContexts;
use crate::pipeline::translated::rejected_event;
use crate::pipeline::RejectReason;
use crate::schema::iglu::IgluKey;
use crate::schema::Registry;

/// Shipped schemas the fixed event types map to.
pub const PAGE_VIEW: &str = "snowplow_page_view/1";
pub const PAGE_PING: &str = "snowplow_page_ping/1";
pub const STRUCTURED: &str = "snowplow_structured/1";
pub const TRANSACTION: &str = "snowplow_transaction/1";
pub const TRANSACTION_ITEM: &str = "snowplow_transaction_item/1";
/// Every schema the mapping needs in the registry.
pub const SHIPPED: [&str; 5] = [
    PAGE_VIEW,
    PAGE_PING,
    STRUCTURED,
    TRANSACTION,
    TRANSACTION_ITEM,
];

const UNSTRUCT_PREFIX: &str = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-";
const CONTEXTS_PREFIX: &str = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-";

/// What a translation needs besides the event.
pub struct Mapping<'a> {
    pub registry: &'a Registry,
    pub unknown_contexts: UnknownContexts,
}

/// Why an event cannot be translated: becomes its dead letter's reason, path and message.
struct Bad {
    reason: RejectReason,
    path: String,
    message: String,
}

fn bad(path: &str, message: impl Into<String>) -> Bad {
    Bad {
        reason: RejectReason::InvalidEnvelope,
        path: path.into(),
        message: message.into(),
    }
}

/// The native event for one Snowplow event (or its translator rejection).
pub fn event(params: &Map<String, Value>, mapping: &Mapping<'_>) -> Value {
    let eid = params.get("eid").and_then(Value::as_str);
    match translate(params, mapping) {
        Ok(v) => v,
        Err(b) => rejected_event(
            b.reason,
            &b.path,
            &b.message,
            eid,
            Value::Object(params.clone()),
        ),
    }
}

/// Parameters consumed into `data` (or the envelope) rather than copied into `context.snowplow`;
/// `key` is a write key (`snowplow.require_write_key`) and never stored.
fn consumed(key: &str) -> bool {
    matches!(key, "e" | "eid" | "ue_pr" | "ue_px" | "co" | "cx" | "key")
        || ["se_", "pp_", "tr_", "ti_"]
            .iter()
            .any(|p| key.starts_with(p))
}

fn translate(params: &Map<String, Value>, mapping: &Mapping<'_>) -> Result<Value, Bad> {
    let mut text = Map::new();
    for (k, v) in params {
        match v {
            Value::String(_) => {}
            Value::Number(_) | Value::Bool(_) => {}
            _ => {
                let path = format!("/{}", escape_pointer(k));
                return Err(bad(&path, "tracker-protocol values are strings"));
            }
        }
        text.insert(k.clone(), v.clone());
    }
    let s = |k: &str| match text.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    };
    let e = s("e").unwrap_or_default();
    let (schema, data) = match e.as_str() {
        "pv" => (
            PAGE_VIEW.to_owned(),
            object([
                ("url", s("url").map(Value::String)),
                ("title", s("page").map(Value::String)),
                ("referrer", s("refr").map(Value::String)),
            ]),
        ),
        "pp" => (
            PAGE_PING.to_owned(),
            object([
                ("url", s("url").map(Value::String)),
                ("title", s("page").map(Value::String)),
                ("referrer", s("refr").map(Value::String)),
                ("min_x", s("pp_mix").map(int)),
                ("max_x", s("pp_max").map(int)),
                ("min_y", s("pp_miy").map(int)),
                ("max_y", s("pp_may").map(int)),
            ]),
        ),
        "se" => (
            STRUCTURED.to_owned(),
            object([
                ("category", s("se_ca").map(Value::String)),
                ("action", s("se_ac").map(Value::String)),
                ("label", s("se_la").map(Value::String)),
                ("property", s("se_pr").map(Value::String)),
                ("value", s("se_va").map(number)),
            ]),
        ),
        "tr" => (
            TRANSACTION.to_owned(),
            object([
                ("order_id", s("tr_id").map(Value::String)),
                ("affiliation", s("tr_af").map(Value::String)),
                ("total", s("tr_tt").map(number)),
                ("tax", s("tr_tx").map(number)),
                ("shipping", s("tr_sh").map(number)),
                ("city", s("tr_ci").map(Value::String)),
                ("state", s("tr_st").map(Value::String)),
                ("country", s("tr_co").map(Value::String)),
                ("currency", s("tr_cu").map(Value::String)),
            ]),
        ),
        "ti" => (
            TRANSACTION_ITEM.to_owned(),
            object([
                ("order_id", s("ti_id").map(Value::String)),
                ("sku", s("ti_sk").map(Value::String)),
                ("name", s("ti_nm").or_else(|| s("ti_na")).map(Value::String)),
                ("category", s("ti_ca").map(Value::String)),
                ("price", s("ti_pr").map(number)),
                ("quantity", s("ti_qu").map(int)),
                ("currency", s("ti_cu").map(Value::String)),
            ]),
        ),
        "ue" => self_describing_event(s("ue_pr"), s("ue_px"), mapping)?,
        "" => return Err(bad("/e", "missing the event type `e`")),
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(
                "/e",
                format!("unknown event type e={shown:?} (expected pv, pp, se, ue, tr or ti)"),
            ));
        }
    };
    let contexts = contexts(s("co"), s("cx"), mapping)?;
    let ts = match s("ttm").or_else(|| s("dtm")) {
        None => Value::Null,
        Some(ms) => Value::String(rfc3339_ms(&ms).ok_or_else(|| {
            bad(
                if text.contains_key("ttm") {
                    "/ttm"
                } else {
                    "/dtm"
                },
                "timestamps are milliseconds since the Unix epoch",
            )
        })?),
    };
    let mut context = Map::new();
    if let Some(visitor) = s("uid")
        .filter(|v| !v.is_empty())
        .or_else(|| s("duid").filter(|v| !v.is_empty()))
    {
        context.insert("visitor_id".into(), Value::String(visitor));
    }
    if let Some(session) = s("sid").filter(|v| !v.is_empty()) {
        context.insert("session_id".into(), Value::String(session));
    }
    let rest: Map<String, Value> = text
        .iter()
        .filter(|(k, _)| !consumed(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    context.insert("snowplow".into(), Value::Object(rest));
    if let Some(list) = contexts {
        context.insert("contexts".into(), Value::Array(list));
    }
    let mut native = Map::new();
    native.insert("schema".into(), Value::String(schema));
    if let Some(eid) = s("eid") {
        native.insert("event_id".into(), Value::String(eid));
    }
    if !ts.is_null() {
        native.insert("ts".into(), ts);
    }
    native.insert("context".into(), Value::Object(context));
    native.insert("data".into(), data);
    Ok(Value::Object(native))
}

/// `ue_pr`/`ue_px`: `{"schema": "iglu:...unstruct_event/...", "data": {"schema": URI, "data": {...}}}`.
fn self_describing_event(
    pr: Option<String>,
    px: Option<String>,
    mapping: &Mapping<'_>,
) -> Result<(String, Value), Bad> {
    let (wrapper, field) = json_param(pr, px, "ue_pr", "ue_px")?.ok_or_else(|| {
        bad(
            "/ue_pr",
            "a self-describing event (e=ue) needs ue_pr or ue_px",
        )
    })?;
    let path = format!("/{field}");
    let inner = self_describing(&wrapper, UNSTRUCT_PREFIX)
        .filter(|d| d.is_object())
        .ok_or_else(|| {
            bad(
                &path,
                "expected {\"schema\": \"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0\", \"data\": {\"schema\": ..., \"data\": ...}}",
            )
        })?;
    let uri = inner.get("schema").and_then(Value::as_str).unwrap_or("");
    let data = inner.get("data").cloned().unwrap_or(Value::Null);
    let key = IgluKey::parse_uri(uri).ok_or_else(|| {
        bad(
            &format!("{path}/data/schema"),
            format!(
                "{:?} is not an Iglu URI like iglu:com.acme/checkout/jsonschema/1-0-0",
                cut(uri)
            ),
        )
    })?;
    if mapping.registry.get(uri).is_none() {
        return Err(Bad {
            reason: RejectReason::UnknownSchema,
            path: format!("{path}/data/schema"),
            message: format!(
                "no schema {} in the registry (expected the file <schemas>/{}/{}/jsonschema/{})",
                key.uri(),
                key.vendor,
                key.name,
                key.version()
            ),
        });
    }
    Ok((key.uri(), data))
}

/// `co`/`cx`: the contexts wrapper -> `[{schema, data}]`, each known one validated.
fn contexts(
    co: Option<String>,
    cx: Option<String>,
    mapping: &Mapping<'_>,
) -> Result<Option<Vec<Value>>, Bad> {
    let Some((wrapper, field)) = json_param(co, cx, "co", "cx")? else {
        return Ok(None);
    };
    let path = format!("/{field}");
    let Some(Value::Array(items)) = self_describing(&wrapper, CONTEXTS_PREFIX) else {
        return Err(bad(
            &path,
            "expected {\"schema\": \"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1\", \"data\": [...]}",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let uri = item.get("schema").and_then(Value::as_str).unwrap_or("");
        let data = item.get("data").cloned().unwrap_or(Value::Null);
        let at = format!("/context/contexts/{i}");
        if IgluKey::parse_uri(uri).is_none() {
            return Err(bad(
                &format!("{at}/schema"),
                format!("context {i}: {:?} is not an Iglu URI", cut(uri)),
            ));
        }
        match mapping.registry.get(uri) {
            Some(schema) => {
                if let Err(v) = schema.validate(&data) {
                    return Err(Bad {
                        reason: RejectReason::SchemaViolation,
                        path: format!("{at}/data{}", v.path),
                        message: format!("context {i} ({}): {}", cut(uri), v.message),
                    });
                }
            }
            None if mapping.unknown_contexts == UnknownContexts::Reject => {
                return Err(Bad {
                    reason: RejectReason::UnknownSchema,
                    path: format!("{at}/schema"),
                    message: format!(
                        "context {i}: no schema {} in the registry (snowplow.unknown_contexts = \"reject\")",
                        cut(uri)
                    ),
                });
            }
            None => {}
        }
        out.push(json!({"schema": uri, "data": data}));
    }
    Ok(Some(out))
}

/// The data of a self-describing JSON whose schema starts with `prefix`.
fn self_describing<'v>(v: &'v Value, prefix: &str) -> Option<&'v Value> {
    let schema = v.get("schema")?.as_str()?;
    schema.starts_with(prefix).then_some(())?;
    v.get("data")
}

/// A JSON parameter sent as plain JSON (`plain`) or base64 (`encoded`); plain wins when both
/// are there. Returns the value and the parameter it came from.
fn json_param(
    plain: Option<String>,
    encoded: Option<String>,
    plain_name: &'static str,
    encoded_name: &'static str,
) -> Result<Option<(Value, &'static str)>, Bad> {
    let (text, name) = match (plain, encoded) {
        (Some(p), _) => (p.into_bytes(), plain_name),
        (None, Some(e)) => {
            let bytes = decode_base64(&e).ok_or_else(|| {
                bad(
                    &format!("/{encoded_name}"),
                    format!("{encoded_name} is not base64 (standard or URL-safe alphabet, padded or not)"),
                )
            })?;
            (bytes, encoded_name)
        }
        (None, None) => return Ok(None),
    };
    let value = serde_json::from_slice(&text)
        .map_err(|e| bad(&format!("/{name}"), format!("{name} is not JSON: {e}")))?;
    Ok(Some((value, name)))
}

/// Base64 in the standard or URL-safe alphabet (even mixed), with or without padding.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let normal: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    ENGINE.decode(normal).ok()
}

fn object<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    )
}

/// An integer when it parses as one, else the string (the schema then says what is wrong).
fn int(s: String) -> Value {
    s.trim()
        .parse::<i64>()
        .map(Value::from)
        .unwrap_or(Value::String(s))
}

/// A finite number when it parses as one, else the string.
fn number(s: String) -> Value {
    if let Ok(i) = s.trim().parse::<i64>() {
        return Value::from(i);
    }
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::String(s))
}

/// Milliseconds since the epoch -> RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: &str) -> Option<String> {
    let ms: i64 = ms.trim().parse().ok()?;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    Some(crate::rfc3339_ms(t))
}

fn cut(s: &str) -> String {
    crate::pipeline::bounds::cut(s, 256)
}

fn escape_pointer(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}
