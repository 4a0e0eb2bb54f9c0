//! The message mapping, without HTTP: schema choice, data, context, ids, bad messages.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::config::SegmentConfig;

fn registry() -> Arc<Registry> {
    Arc::new(Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap())
}

fn segment(cfg: SegmentConfig) -> Arc<Segment> {
    Arc::new(Segment::new(&cfg, &registry()).unwrap().unwrap())
}

fn enabled() -> SegmentConfig {
    let mut cfg = SegmentConfig {
        enabled: true,
        ..Default::default()
    };
    cfg.events
        .insert("Order Completed".into(), "purchase/1".into());
    cfg
}

/// Translates `body` (a batch when `call` is None) and returns the native bundle.
fn translate(cfg: SegmentConfig, call: Option<Call>, source: Option<&str>, body: Value) -> Value {
    let t = SegmentRequest {
        segment: segment(cfg),
        registry: registry(),
        call,
        source: source.map(str::to_owned),
        limits: crate::config::Limits::default(),
    };
    let out = t.translate(&serde_json::to_vec(&body).unwrap()).unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn one(call: Call, msg: Value) -> Value {
    let bundle = translate(enabled(), Some(call), Some("src"), msg);
    bundle["events"][0].clone()
}

#[test]
fn track_maps_by_table_then_rule_then_generic() {
    let props = json!({"order_id": "o-1", "currency": "EUR", "total_minor": 5, "items": []});
    let e = one(
        Call::Track,
        json!({"event": "Order Completed", "properties": props, "userId": "u-1", "messageId": "m-1"}),
    );
    assert_eq!(e["schema"], "purchase/1");
    assert_eq!(
        e["data"], props,
        "a mapped track's data is its properties as sent"
    );
    assert_eq!(e["context"]["segment"]["event"], "Order Completed");

    // The rule: "Page View" -> page_view/1, which exists.
    let e = one(
        Call::Track,
        json!({"event": "Page View", "properties": {"url": "https://x.example/"}}),
    );
    assert_eq!(e["schema"], "page_view/1");
    assert_eq!(e["data"], json!({"url": "https://x.example/"}));

    // Neither: the generic schema, with the name beside the properties.
    let e = one(
        Call::Track,
        json!({"event": "Video Played", "properties": {"id": 3}}),
    );
    assert_eq!(e["schema"], "segment_track/1");
    assert_eq!(
        e["data"],
        json!({"event": "Video Played", "properties": {"id": 3}})
    );

    // The rule off: even a matching name goes to the generic schema.
    let mut cfg = enabled();
    cfg.naming = crate::config::NamingRule::None;
    let b = translate(
        cfg,
        Some(Call::Track),
        None,
        json!({"event": "Page View", "properties": {}}),
    );
    assert_eq!(b["events"][0]["schema"], "segment_track/1");
}

#[test]
fn other_calls_map_to_their_schemas_with_what_they_need() {
    let cases = [
        (
            Call::Identify,
            json!({"traits": {"email": "a@b.c"}, "userId": "u"}),
            "segment_identify/1",
            json!({"traits": {"email": "a@b.c"}}),
        ),
        (
            Call::Page,
            json!({"name": "Home", "category": "Docs", "properties": {"path": "/"}, "anonymousId": "a"}),
            "segment_page/1",
            json!({"name": "Home", "category": "Docs", "properties": {"path": "/"}}),
        ),
        (
            Call::Screen,
            json!({"name": "Cart", "userId": "u"}),
            "segment_screen/1",
            json!({"name": "Cart", "properties": {}}),
        ),
        (
            Call::Group,
            json!({"groupId": "g-1", "traits": {"n": 1}, "userId": "u"}),
            "segment_group/1",
            json!({"group_id": "g-1", "traits": {"n": 1}}),
        ),
        (
            Call::Alias,
            json!({"previousId": "anon-1", "userId": "u"}),
            "segment_alias/1",
            json!({"previous_id": "anon-1"}),
        ),
    ];
    for (call, msg, schema, data) in cases {
        let e = one(call, msg);
        assert_eq!(e["schema"], schema, "{call:?}");
        assert_eq!(e["data"], data, "{call:?}");
        assert_eq!(e["context"]["segment"]["type"], call.as_str());
        let s = registry();
        let valid = s.get(schema).unwrap().validate(&e["data"]);
        assert!(valid.is_ok(), "{call:?}: {valid:?}");
    }
}

#[test]
fn context_ids_timestamps_and_the_partition_key() {
    let e = one(
        Call::Track,
        json!({
            "event": "Signed Up", "userId": "u-1", "anonymousId": "a-1", "messageId": "m-1",
            "timestamp": "2026-11-23T10:00:00.000Z", "sentAt": "2026-11-23T10:00:01.000Z",
            "context": {"library": {"name": "analytics-python"}, "ip": "1.2.3.4"},
            "integrations": {"All": true}, "_metadata": {"x": 1}, "writeKey": "secret"
        }),
    );
    let c = &e["context"];
    assert_eq!(c["visitor_id"], "u-1", "the user is the partition key");
    assert_eq!(c["user_id"], "u-1");
    assert_eq!(c["anonymous_id"], "a-1");
    assert_eq!(c["segment"]["message_id"], "m-1");
    assert_eq!(c["segment"]["context"]["ip"], "1.2.3.4");
    assert_eq!(c["segment"]["integrations"], json!({"All": true}));
    assert_eq!(c["segment"]["extra"], json!({"_metadata": {"x": 1}}));
    assert_eq!(e["ts"], "2026-11-23T10:00:00.000Z");
    assert!(
        !e.to_string().contains("secret"),
        "the write key is never copied: {e}"
    );

    // Without a user: the anonymous id is the key. A timestamp that is not RFC 3339 is kept, not
    // fatal.
    let e = one(
        Call::Page,
        json!({"anonymousId": "a-2", "timestamp": "yesterday"}),
    );
    assert_eq!(e["context"]["visitor_id"], "a-2");
    assert!(e.get("ts").is_none());
    assert_eq!(e["context"]["segment"]["timestamp"], "yesterday");
}

#[test]
fn event_ids_are_stable_per_source_and_message_id() {
    let id = |source: &str, m: &str| {
        let b = translate(
            enabled(),
            Some(Call::Track),
            Some(source),
            json!({"event": "E", "messageId": m}),
        );
        b["events"][0]["event_id"].as_str().unwrap().to_owned()
    };
    let first = id("web", "ajs-next-1f2e");
    assert_eq!(first, id("web", "ajs-next-1f2e"), "a retry keeps its id");
    assert_ne!(first, id("ios", "ajs-next-1f2e"), "sources cannot collide");
    assert_ne!(first, id("web", "ajs-next-1f2f"));
    let uuid = uuid::Uuid::parse_str(&first).unwrap();
    assert_eq!(uuid.get_version_num(), 5);
    // The documented derivation, recomputed independently of `event_id`.
    assert_eq!(first, event_id("web", "ajs-next-1f2e").to_string());
    // Without a messageId: a fresh id, chosen by the pipeline.
    let b = translate(enabled(), Some(Call::Track), None, json!({"event": "E"}));
    assert!(b["events"][0].get("event_id").is_none());
    // No source from the head: the body's writeKey names it.
    let from_body = translate(
        enabled(),
        Some(Call::Track),
        None,
        json!({"event": "E", "messageId": "ajs-next-1f2e", "writeKey": "web"}),
    );
    assert_eq!(from_body["events"][0]["event_id"], first);
}

/// A bad message becomes an event the native envelope rejects as `invalid_envelope`, with the
/// cause in the one member it does not know and the original message as its value.
#[test]
fn bad_messages_become_envelope_rejections_with_their_cause() {
    let mut cfg = enabled();
    cfg.max_message_bytes = 2000;
    let long_id = "m".repeat(101);
    let big = "x".repeat(3000);
    let body = json!({"batch": [
        {"type": "track", "event": "ok", "messageId": "fine"},
        {"type": "track", "messageId": "no-name"},
        {"type": "bogus", "event": "E"},
        {"type": "track", "event": "E", "messageId": long_id},
        {"type": "track", "event": "E", "properties": {"big": big}},
        "not an object",
    ]});
    let b = translate(cfg.clone(), None, Some("s"), body);
    let events = b["events"].as_array().unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(events[0]["schema"], "segment_track/1");
    let cause = |e: &Value| {
        let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
        keys.into_iter()
            .find(|k| k.starts_with("segment: "))
            .cloned()
            .unwrap_or_else(|| panic!("no cause in {e}"))
    };
    assert!(cause(&events[1]).contains("needs an \"event\" name"));
    assert!(events[1]["event_id"].is_string(), "keeps its derived id");
    assert!(cause(&events[2]).contains("needs a \"type\""));
    assert!(cause(&events[3]).contains("messageId is 101 bytes; the limit is 100"));
    assert!(cause(&events[4]).contains("the limit is 2000 (segment.max_message_bytes)"));
    assert!(cause(&events[5]).contains("must be a JSON object"));
    assert_eq!(events[5][cause(&events[5])], "not an object");

    // And the native pipeline rejects each of them alone, with that cause in its message.
    let gw_registry = registry();
    let pcfg = crate::pipeline::PipelineConfig::new(
        crate::config::Limits::default(),
        "events.",
        "events.invalid",
        &gw_registry,
    );
    let text = serde_json::to_vec(&b).unwrap();
    let bundle = crate::pipeline::Bundle::parse(&text, 64).unwrap();
    let enrichment = crate::thrift::Enrichment {
        received_at_ms: 0,
        client_ip: None,
        user_agent: None,
        collector_host: "h".into(),
        collector_version: "v".into(),
        sent_at: None,
        origin: None,
    };
    let p = crate::pipeline::process(&bundle, &gw_registry, &pcfg, &enrichment).unwrap();
    assert_eq!(p.accepted, 1);
    let reasons: Vec<_> = p.rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, vec!["invalid_envelope"; 5]);
    assert!(p.rejected[2].message.contains("messageId is 101 bytes"));
}

#[test]
fn whole_body_errors_are_refusals() {
    let t = SegmentRequest {
        segment: segment(enabled()),
        registry: registry(),
        call: None,
        source: None,
        limits: crate::config::Limits::default(),
    };
    let code = |body: &[u8]| t.translate(body).unwrap_err().code();
    assert_eq!(code(b"{not json"), "undecodable_body");
    assert_eq!(code(br#"{"messages": []}"#), "not_a_bundle");
    assert_eq!(code(br#"{"batch": {}}"#), "not_a_bundle");
    let big = format!(r#"{{"batch": [], "pad": "{}"}}"#, "x".repeat(500 << 10));
    assert_eq!(code(big.as_bytes()), "decompressed_too_large");
    // Batch-level context and sentAt reach every message.
    let b = translate(
        enabled(),
        None,
        None,
        json!({"batch": [{"type": "identify", "context": {"a": 1}}], "context": {"a": 0, "b": 2}, "sentAt": "2026-11-23T10:00:00Z"}),
    );
    assert_eq!(b["sent_at"], "2026-11-23T10:00:00Z");
    assert_eq!(
        b["events"][0]["context"]["segment"]["context"],
        json!({"a": 1, "b": 2})
    );
}

#[test]
fn snake_case_names() {
    for (from, to) in [
        ("Order Completed", "order_completed"),
        ("orderCompleted", "order_completed"),
        ("order-completed", "order_completed"),
        ("ORDER COMPLETED", "order_completed"),
        ("  Video  Played! ", "video_played"),
        ("v2 Launch", "v2_launch"),
        ("Ünïcode", "n_code"),
        ("!!!", ""),
    ] {
        assert_eq!(snake_case(from), to, "{from}");
    }
}

#[test]
fn start_up_refuses_a_mapping_to_a_missing_schema_naming_the_key() {
    let mut cfg = enabled();
    cfg.events.insert("Refund".into(), "refund/1".into());
    let err = Segment::new(&cfg, &registry()).unwrap_err();
    assert!(err.contains("segment.events.\"Refund\""), "{err}");
    assert!(err.contains("refund/1"), "{err}");
    let mut cfg = enabled();
    cfg.schemas.page = "nope/1".into();
    let err = Segment::new(&cfg, &registry()).unwrap_err();
    assert!(err.contains("segment.schemas.page"), "{err}");
    assert!(Segment::new(&SegmentConfig::default(), &registry())
        .unwrap()
        .is_none());
}

fn request(limits: crate::config::Limits) -> SegmentRequest {
    SegmentRequest {
        segment: segment(enabled()),
        registry: registry(),
        call: None,
        source: Some("s".into()),
        limits,
    }
}

/// The hostile body: a 240 KB batch context and 14,000 tiny messages, under 500 KB on the wire.
/// Copied into every message it would build ~3.4 GB; it is refused before mapping, and with
/// every per-batch check relaxed the translation still stops at its output budget.
#[test]
fn a_batch_context_copied_into_many_messages_is_bounded() {
    let mut body = format!(
        r#"{{"context":{{"x":"{}"}},"batch":["#,
        "c".repeat(240 << 10)
    );
    body.push_str(&vec![r#"{"type":"alias"}"#; 14_000].join(","));
    body.push_str("]}");
    assert!(body.len() < 500 << 10);
    let limits = crate::config::Limits::default();
    let err = request(limits.clone())
        .translate(body.as_bytes())
        .unwrap_err();
    assert_eq!(err.code(), "too_many_events", "{err}");

    // Count allowed: the context alone is over limits.max_context_bytes, as natively.
    let mut relaxed = limits.clone();
    relaxed.max_events = 20_000;
    let err = request(relaxed.clone())
        .translate(body.as_bytes())
        .unwrap_err();
    assert_eq!(err.code(), "context_too_large", "{err}");

    // Context allowed too: the output budget (limits.max_decompressed_bytes) stops it.
    relaxed.max_context_bytes = 1 << 20;
    relaxed.max_decompressed_bytes = 4 << 20;
    let err = request(relaxed.clone())
        .translate(body.as_bytes())
        .unwrap_err();
    assert_eq!(err.code(), "decompressed_too_large", "{err}");

    // What fits is translated, each message with the batch context merged in.
    let small = r#"{"context":{"x":"c"},"batch":[{"type":"alias"},{"type":"alias"}]}"#;
    let out = request(relaxed).translate(small.as_bytes()).unwrap();
    let b: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(b["events"][1]["context"]["segment"]["context"]["x"], "c");
}

/// A message deeper than the parser goes is dead-lettered alone as `too_deep`, with its text
/// and derived id; a deep batch context is a refusal naming the depth.
#[test]
fn deep_messages_and_deep_batch_contexts() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"batch":[{{"type":"track","event":"E","messageId":"m-deep","properties":{{"p":{deep}}}}},{{"type":"track","event":"ok"}}]}}"#
    );
    let t = request(crate::config::Limits::default());
    let out = t.translate(body.as_bytes()).unwrap();
    let text = String::from_utf8(out).unwrap();
    let b: Value = serde_json::from_str(&text).unwrap();
    let bad = &b["events"][0];
    assert_eq!(bad["rejected"]["reason"], "too_deep", "{bad}");
    assert_eq!(
        bad["event_id"],
        event_id("s", "m-deep").to_string(),
        "keeps its derived id"
    );
    assert!(bad["original"].as_str().unwrap().contains(&deep));
    assert_eq!(b["events"][1]["schema"], "segment_track/1");

    // Through the pipeline: rejected alone as too_deep.
    let gw_registry = registry();
    let pcfg = crate::pipeline::PipelineConfig::new(
        crate::config::Limits::default(),
        "events.",
        "events.invalid",
        &gw_registry,
    );
    let mut bundle = crate::pipeline::Bundle::parse(text.as_bytes(), 64).unwrap();
    bundle.translated = true;
    let enrichment = crate::thrift::Enrichment {
        received_at_ms: 0,
        client_ip: None,
        user_agent: None,
        collector_host: "h".into(),
        collector_version: "v".into(),
        sent_at: None,
        origin: None,
    };
    let p = crate::pipeline::process(&bundle, &gw_registry, &pcfg, &enrichment).unwrap();
    assert_eq!(p.accepted, 1);
    assert_eq!(p.rejected.len(), 1);
    assert_eq!(p.rejected[0].reason.as_str(), "too_deep");

    // A batch context past limits.max_depth, or past the parser: a 400 naming the depth.
    for levels in [70, 200] {
        let ctx = format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        let body = format!(r#"{{"context":{{"c":{ctx}}},"batch":[{{"type":"alias"}}]}}"#);
        let err = t.translate(body.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "undecodable_body");
        assert!(err.to_string().contains("deeper than"), "{err}");
    }
}
