use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::thrift::{from_compact_bytes, json::from_thrift, DeadLetter, Event};

fn registry() -> Registry {
    Registry::from_values(vec![(
        "page_view",
        1,
        json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}),
    )])
    .unwrap()
}

fn cfg() -> PipelineConfig {
    PipelineConfig::new(
        Config::default().limits,
        "events.",
        "events.invalid",
        &registry(),
    )
}

/// The enrichment every pipeline test uses (also `size_tests`).
pub(super) fn enrichment() -> Enrichment {
    Enrichment {
        received_at_ms: 1,
        client_ip: Some("192.0.2.1".into()),
        user_agent: Some("ua".into()),
        collector_host: "host-a".into(),
        collector_version: "0.1.0".into(),
        sent_at: None,
        origin: None,
    }
}

fn run(body: &Value) -> Processed {
    let text = serde_json::to_vec(body).unwrap();
    let bundle = Bundle::parse(&text, 64).unwrap();
    process(&bundle, &registry(), &cfg(), &enrichment()).unwrap()
}

const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

#[test]
fn accepted_event_becomes_a_thrift_record_keyed_by_visitor() {
    let p = run(&json!({
        "context": {"visitor_id": "v-1", "session_id": "s-1", "app": {"name": "web"}},
        "events": [{"schema": "page_view/1", "event_id": ID, "ts": "2026-11-21T11:59:58.120Z",
                    "context": {"app": {"name": "ios"}, "page": 2}, "data": {"url": "https://e.com/a", "n": 1.5}}]
    }));
    assert_eq!((p.accepted, p.rejected.len(), p.records.len()), (1, 0, 1));
    let r = &p.records[0];
    assert_eq!(&*r.topic, "events.page_view");
    assert_eq!(r.key.as_deref(), Some(&b"v-1"[..]));
    assert!(r.headers.contains(&("schema", "page_view/1".into())));
    assert!(r.headers.contains(&("event_id", ID.into())));
    let e: Event = from_compact_bytes(&r.payload).unwrap();
    assert_eq!(
        (e.event_id.as_str(), e.schema_name.as_str(), e.schema_major),
        (ID, "page_view", 1)
    );
    assert_eq!(e.ts.as_deref(), Some("2026-11-21T11:59:58.120Z"));
    assert_eq!(
        from_thrift(&e.data).unwrap(),
        json!({"url": "https://e.com/a", "n": 1.5})
    );
    // Event context wins key by key; batch keys it doesn't override survive.
    assert_eq!(
        from_thrift(&e.context).unwrap(),
        json!({"visitor_id": "v-1", "session_id": "s-1", "app": {"name": "ios"}, "page": 2})
    );
    assert_eq!(e.enrichment.client_ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(e.enrichment.collector_host, "host-a");
}

#[test]
fn key_falls_back_to_session_then_event_id() {
    let p = run(
        &json!({"context": {"session_id": "s-9"}, "events": [{"schema": "page_view/1", "data": {"url": "u"}}]}),
    );
    assert_eq!(p.records[0].key.as_deref(), Some(&b"s-9"[..]));
    let p =
        run(&json!({"events": [{"schema": "page_view/1", "event_id": ID, "data": {"url": "u"}}]}));
    assert_eq!(p.records[0].key.as_deref(), Some(ID.as_bytes()));
}

#[test]
fn missing_event_id_is_assigned_a_uuid() {
    let p = run(&json!({"events": [{"schema": "page_view/1", "data": {"url": "u"}}]}));
    let e: Event = from_compact_bytes(&p.records[0].payload).unwrap();
    assert!(uuid::Uuid::try_parse(&e.event_id).is_ok());
}

#[test]
fn each_bad_event_is_rejected_alone_with_reason_and_path() {
    let deep = (0..70).fold(json!(1), |v, _| json!([v]));
    let big = "x".repeat(70 * 1024);
    let p = run(&json!({"events": [
        {"schema": "page_view/1", "event_id": ID, "data": {"url": "https://ok"}},
        {"schema": "page_view/1", "data": {"url": 7}},
        {"schema": "nope/1", "data": {}},
        {"schema": "page_view/1", "event_id": "not-a-uuid", "data": {"url": "u"}},
        {"schema": "page_view/1", "data": {"url": big}},
        {"schema": "page_view/1", "data": {"url": "u", "deep": deep}},
        {"data": {"url": "u"}},
        "just a string",
        {"schema": "page_view/1", "data": {"url": "u"}, "extra": 1},
        {"schema": "page_view/1", "ts": "yesterday", "data": {"url": "u"}},
        {"schema": "page_view/1", "data": {"url": "https://also-ok"}},
    ]}));
    assert_eq!(p.accepted, 2);
    let got: Vec<(usize, &str, &str)> = p
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "schema_violation", "/data/url"),
            (2, "unknown_schema", "/schema"),
            (3, "bad_event_id", "/event_id"),
            (4, "too_large", ""),
            (5, "too_deep", ""),
            (6, "invalid_envelope", "/schema"),
            (7, "invalid_envelope", ""),
            (8, "invalid_envelope", ""),
            (9, "invalid_envelope", "/ts"),
        ]
    );
    // Every rejected event has its dead letter, holding the original JSON.
    let letters: Vec<DeadLetter> = p
        .records
        .iter()
        .filter(|r| &*r.topic == "events.invalid")
        .map(|r| from_compact_bytes(&r.payload).unwrap())
        .collect();
    assert_eq!(letters.len(), 9);
    assert_eq!(letters[0].reason, "schema_violation");
    assert_eq!(letters[0].path.as_deref(), Some("/data/url"));
    assert_eq!(letters[0].schema.as_deref(), Some("page_view/1"));
    let original: Value = serde_json::from_slice(&letters[0].original).unwrap();
    assert_eq!(
        original,
        json!({"schema": "page_view/1", "data": {"url": 7}})
    );
    assert_eq!(letters[2].event_id.as_deref(), Some("not-a-uuid"));
    // The 70 KiB event is over the 64 KiB dead-letter cap: its copy is cut and says so.
    assert!(letters[3].truncated);
    assert_eq!(
        letters[3].original.len(),
        cfg().limits.dead_letter_max_bytes
    );
}

#[test]
fn bundle_errors() {
    assert!(matches!(
        Bundle::parse(b"{", 64),
        Err(BundleError::NotJson(_))
    ));
    assert!(matches!(
        Bundle::parse(b"[]", 64),
        Err(BundleError::NotABundle(_))
    ));
    assert!(matches!(
        Bundle::parse(b"{\"events\": 3}", 64),
        Err(BundleError::NotABundle(_))
    ));
    assert!(matches!(
        Bundle::parse(b"{\"events\": [], \"x\": 1}", 64),
        Err(BundleError::NotABundle(_))
    ));
    assert!(matches!(
        Bundle::parse(b"\xff\xfe", 64),
        Err(BundleError::NotJson(_))
    ));
    // Hostile depth costs a scan, not the stack: refused as too deep inside the envelope, and
    // as not a bundle where the parser gives up before descending.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let in_context = format!(r#"{{"context": {{"a": {deep}}}, "events": []}}"#);
    assert!(matches!(
        Bundle::parse(in_context.as_bytes(), 64),
        Err(BundleError::TooDeep(_))
    ));
    assert!(matches!(
        Bundle::parse(deep.as_bytes(), 64),
        Err(BundleError::NotABundle(_))
    ));
}

/// `data` may nest exactly `max_depth` levels; one more is `too_deep`, for that event alone, even
/// when it is too deep for the JSON parser itself (such a body used to be refused whole).
#[test]
fn depth_limit_is_per_event_at_any_depth() {
    let nest = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    let event = |levels: usize| {
        format!(
            r#"{{"schema": "page_view/1", "data": {{"url": "u", "d": {}}}}}"#,
            nest(levels)
        )
    };
    // data object (1) + "d" array levels.
    let body = format!(
        r#"{{"events": [{}, {}, {}, {}]}}"#,
        event(63),
        event(64),
        event(500),
        event(30_000)
    );
    let bundle = Bundle::parse(body.as_bytes(), 64).expect("a bundle whose events are deep");
    let p = process(&bundle, &registry(), &cfg(), &enrichment()).unwrap();
    assert_eq!(p.accepted, 1);
    let got: Vec<_> = p.rejected.iter().map(|r| (r.index, r.reason)).collect();
    assert_eq!(
        got,
        [
            (1, RejectReason::TooDeep),
            (2, RejectReason::TooDeep),
            (3, RejectReason::TooDeep)
        ]
    );
    assert!(
        p.rejected[0].message.contains("65 levels"),
        "{}",
        p.rejected[0].message
    );
}

#[test]
fn batch_context_is_held_to_the_event_depth_limit() {
    let ctx = |levels: usize| {
        format!(
            r#"{{"context": {{"a": {}}}, "events": []}}"#,
            "[".repeat(levels) + "1" + &"]".repeat(levels)
        )
    };
    assert!(Bundle::parse(ctx(63).as_bytes(), 64).is_ok());
    assert!(matches!(
        Bundle::parse(ctx(64).as_bytes(), 64),
        Err(BundleError::ContextTooDeep(64))
    ));
    // Past serde_json's recursion limit the parse itself stops.
    assert!(matches!(
        Bundle::parse(ctx(200).as_bytes(), 64),
        Err(BundleError::TooDeep(_))
    ));
    // A deep event inside a bundle that is wrong for another reason is reported for that reason.
    let deep_event = format!(
        r#"{{"events": [{{"data": {}}}], "extra": 1}}"#,
        "[".repeat(200) + &"]".repeat(200)
    );
    assert!(matches!(
        Bundle::parse(deep_event.as_bytes(), 64),
        Err(BundleError::NotABundle(_))
    ));
}

#[test]
fn depth_scan_ignores_brackets_in_strings() {
    assert_eq!(
        json_depth(br#"{"a": "[[[[{{{", "b": [1, {"c": "\"]"}]}"#),
        3
    );
}

/// Each event record remembers its event's index and exact JSON text in the body (a record Kafka
/// later refuses becomes a dead letter holding that text); dead letters have no origin.
#[test]
fn event_records_keep_their_events_span_in_the_body() {
    let body = br#"{"events": [ {"schema": "page_view/1", "data": {"url": 1}},
        {"schema":"page_view/1",   "data": {"url": "https://e.com/\u00e9"}} ], "context": {}}"#;
    let bundle = Bundle::parse(body, 64).unwrap();
    let p = process(&bundle, &registry(), &cfg(), &enrichment()).unwrap();
    assert_eq!(p.origins.len(), p.records.len());
    assert_eq!(p.origins[0], None, "a dead letter has no origin");
    let origin = p.origins[1].clone().expect("the accepted event's origin");
    assert_eq!(origin.index, 1);
    assert_eq!(
        &body[origin.span],
        &br#"{"schema":"page_view/1",   "data": {"url": "https://e.com/\u00e9"}}"#[..]
    );
    assert_eq!(bundle.span(9), 0..0);
}

#[test]
fn a_refused_record_becomes_a_dead_letter_with_the_events_json() {
    let text = r#"{"schema": "page_view/1", "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "data": {"url": "x"}}"#;
    let mut c = cfg();
    c.limits.dead_letter_max_bytes = 40;
    let (rejection, record) = dead_letter_for_refused(
        3,
        "kafka_rejected:msg_size_too_large",
        text,
        &c,
        &enrichment(),
        Some("req-7"),
    );
    assert_eq!(rejection.index, 3);
    assert_eq!(
        rejection.reason.as_str(),
        "kafka_rejected:msg_size_too_large"
    );
    assert_eq!(rejection.event_id.as_deref(), Some(ID));
    assert_eq!(
        serde_json::to_value(&rejection).unwrap()["reason"],
        "kafka_rejected:msg_size_too_large"
    );
    assert_eq!(&*record.topic, "events.invalid");
    assert!(record
        .headers
        .contains(&("reason", "kafka_rejected:msg_size_too_large".into())));
    let dl: DeadLetter = from_compact_bytes(&record.payload).unwrap();
    assert_eq!(
        (dl.original.as_slice(), dl.truncated),
        (&text.as_bytes()[..40], true)
    );
    assert_eq!(dl.schema.as_deref(), Some("page_view/1"));
    assert_eq!(dl.enrichment.user_agent.as_deref(), Some("ua"));
    assert_eq!(dl.request_id.as_deref(), Some("req-7"));
}

#[test]
fn dead_letters_carry_the_request_id() {
    let text = serde_json::to_vec(&json!({"events": [
        {"schema": "page_view/1", "data": {"url": 5}},
        {"schema": "page_view/1", "data": {"url": "https://e.com"}},
    ]}))
    .unwrap();
    let bundle = Bundle::parse(&text, 64).unwrap();
    let p = process_allowed(
        &bundle,
        &registry(),
        &cfg(),
        &enrichment(),
        Some("req-42"),
        &|_| true,
    )
    .unwrap();
    let letter: DeadLetter = from_compact_bytes(&p.records[0].payload).unwrap();
    assert_eq!(letter.request_id.as_deref(), Some("req-42"));
    let c = cfg();
    let whole = dead_letter_for_request(
        "undecodable_body",
        "m",
        400,
        b"{",
        &c,
        &enrichment(),
        Some("req-43"),
    );
    let letter: DeadLetter = from_compact_bytes(&whole.payload).unwrap();
    assert_eq!(letter.request_id.as_deref(), Some("req-43"));
    // Without one (`process`, the benchmarks' entry point) the field is absent.
    let p = process(&bundle, &registry(), &cfg(), &enrichment()).unwrap();
    let letter: DeadLetter = from_compact_bytes(&p.records[0].payload).unwrap();
    assert_eq!(letter.request_id, None);
}
