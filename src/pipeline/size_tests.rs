//! Every size that reaches Kafka is bounded: record size, client strings, partition keys, the
//! inherited context, and the bytes one request may produce.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::bounds::{self, record_size, size_of};
use super::*;
use crate::config::Config;
use crate::sink::RecordKind;
use crate::thrift::{from_compact_bytes, DeadLetter};

const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn registry() -> Registry {
    Registry::from_values(vec![
        (
            "page_view",
            1,
            json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}),
        ),
        // Violations under client-chosen keys: long JSON pointers.
        (
            "kv",
            1,
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
        ),
    ])
    .unwrap()
}

use super::tests::enrichment;

fn cfg_with(max_record_bytes: usize, limits: Limits) -> PipelineConfig {
    PipelineConfig::new(limits, "events.", "events.invalid", &registry())
        .with_max_record_bytes(max_record_bytes)
}

fn cfg() -> PipelineConfig {
    cfg_with(bounds::DEFAULT_MESSAGE_MAX_BYTES, Config::default().limits)
}

fn run_with(body: &[u8], cfg: &PipelineConfig) -> Result<Processed, OutputTooLarge> {
    let bundle = Bundle::parse(body, 64).unwrap();
    process(&bundle, &registry(), cfg, &enrichment())
}

fn run(body: &Value) -> Processed {
    run_with(&serde_json::to_vec(body).unwrap(), &cfg()).unwrap()
}

fn letter(r: &crate::sink::Record) -> DeadLetter {
    assert_eq!(r.kind, RecordKind::DeadLetter);
    from_compact_bytes(&r.payload).unwrap()
}

/// The reported case: a 700 KB event id made a ~2 MB dead letter (key, header and field) that
/// Kafka refused and that then blocked the spool.
#[test]
fn a_huge_event_id_never_becomes_key_or_header() {
    let huge = "i".repeat(700_000);
    let p = run(&json!({"events": [{"event_id": huge}]}));
    assert_eq!(p.rejected[0].reason, RejectReason::TooLarge);
    let shown = p.rejected[0].event_id.as_deref().unwrap();
    assert!(shown.len() <= bounds::SHOWN_ID_MAX, "{}", shown.len());
    assert!(shown.ends_with(bounds::TRUNCATION_MARK));
    let r = &p.records[0];
    assert_eq!(r.key, None);
    assert_eq!(r.header("event_id"), None);
    assert!(size_of(r) < 70_000, "{}", size_of(r));
    let l = letter(r);
    assert!(l.truncated);
    assert_eq!(l.event_id.as_deref(), Some(shown));

    // Every other path that reports a client's id: bad_event_id, too_deep, invalid_envelope.
    let long = "j".repeat(5_000);
    let deep = (0..70).fold(json!(1), |v, _| json!([v]));
    let p = run(&json!({"events": [
        {"schema": "page_view/1", "event_id": long, "data": {"url": "u"}},
        {"schema": "page_view/1", "event_id": long, "data": {"d": deep}},
        {"schema": "page_view/1", "event_id": long, "data": {"url": "u"}, "extra": 1},
        {"schema": "page_view/1", "event_id": "12345", "data": {"url": "u"}},
    ]}));
    let reasons: Vec<_> = p.rejected.iter().map(|r| r.reason).collect();
    use RejectReason::*;
    assert_eq!(reasons, [BadEventId, TooDeep, InvalidEnvelope, BadEventId]);
    for (rejection, record) in p.rejected.iter().zip(&p.records) {
        let id = rejection.event_id.as_deref().unwrap();
        assert!(id.len() <= bounds::SHOWN_ID_MAX);
        assert_eq!(record.key, None, "{:?}", rejection.reason);
        assert_eq!(record.header("event_id"), None);
        assert_eq!(letter(record).event_id.as_deref(), Some(id));
    }
    // A short invalid id is shown as sent.
    assert_eq!(p.rejected[3].event_id.as_deref(), Some("12345"));
}

#[test]
fn a_rejected_event_with_a_uuid_keeps_it_as_key_and_header() {
    let p = run(&json!({"events": [{"schema": "nope/1", "event_id": ID}]}));
    let r = &p.records[0];
    assert_eq!(r.key.as_deref(), Some(ID.as_bytes()));
    assert_eq!(r.header("event_id"), Some(ID));
}

#[test]
fn schema_path_and_message_are_cut() {
    let schema = format!("{}/1", "s".repeat(50_000));
    let key = "k".repeat(50_000);
    let p = run(&json!({"events": [
        {"schema": schema, "data": {"url": "u"}},
        {"schema": "kv/1", "data": {key.clone(): 5}},
        {"schema": "page_view/1", "data": {"url": 5, key.clone(): 1}, key: 1},
    ]}));
    assert_eq!(p.rejected.len(), 3);
    for (rejection, record) in p.rejected.iter().zip(&p.records) {
        assert!(rejection.message.len() <= bounds::MESSAGE_MAX);
        assert!(rejection.path.len() <= bounds::PATH_MAX);
        let l = letter(record);
        assert!(l.message.len() <= bounds::MESSAGE_MAX);
        assert!(l.schema.as_deref().unwrap_or("").len() <= bounds::SCHEMA_MAX);
        assert!(record.header("schema").unwrap_or("").len() <= bounds::SCHEMA_MAX);
    }
    let l = letter(&p.records[0]);
    assert!(l.schema.unwrap().ends_with(bounds::TRUNCATION_MARK));
    assert_eq!(p.rejected[1].reason, RejectReason::SchemaViolation);
    assert!(p.rejected[1].path.ends_with(bounds::TRUNCATION_MARK));
}

/// An event within `max_event_bytes` whose Thrift record is over `message.max.bytes` (doubles
/// take 12 bytes for 4 of JSON) is rejected alone, and its dead letter is cut to fit.
#[test]
fn a_record_over_message_max_bytes_is_a_too_large_dead_letter_that_fits() {
    let max = 20_000;
    let cfg = cfg_with(max, Config::default().limits);
    let doubles = vec![json!(1.5); 7_000];
    let body = json!({"events": [
        {"schema": "page_view/1", "event_id": ID, "data": {"url": "u", "n": doubles}},
        {"schema": "page_view/1", "data": {"url": "small"}},
    ]});
    let body = serde_json::to_vec(&body).unwrap();
    let p = run_with(&body, &cfg).unwrap();
    assert_eq!(p.accepted, 1);
    let rejection = &p.rejected[0];
    assert_eq!(rejection.reason, RejectReason::TooLarge);
    assert!(
        rejection.message.contains("message.max.bytes is 20000"),
        "{}",
        rejection.message
    );
    let dl = &p.records[0];
    assert!(size_of(dl) <= max, "{}", size_of(dl));
    assert_eq!(dl.key.as_deref(), Some(ID.as_bytes()));
    let l = letter(dl);
    assert!(l.truncated);
    assert!(
        l.original.len() > 10_000,
        "kept what fits: {}",
        l.original.len()
    );
}

#[test]
fn the_inherited_context_counts_toward_the_event_limit() {
    let ctx = json!({"blob": "c".repeat(6_000)});
    let url = "u".repeat(60_000);
    let event = json!({"schema": "page_view/1", "data": {"url": url}});
    let p = run(&json!({"events": [event]}));
    assert_eq!(p.accepted, 1, "alone it fits");
    let p = run(
        &json!({"context": ctx, "events": [event, {"schema": "page_view/1", "data": {"url": "u"}}]}),
    );
    assert_eq!(p.accepted, 1);
    let r = &p.rejected[0];
    assert_eq!((r.index, r.reason), (0, RejectReason::TooLarge));
    assert!(
        r.message.contains("bytes of batch context"),
        "{}",
        r.message
    );
}

#[test]
fn context_size_is_measured_once_as_compact_json() {
    let body = br#"{"context": {"a" :  [1, 2]}, "events": []}"#;
    assert_eq!(
        Bundle::parse(body, 64).unwrap().context_bytes,
        r#"{"a":[1,2]}"#.len()
    );
    assert_eq!(
        Bundle::parse(br#"{"events": []}"#, 64)
            .unwrap()
            .context_bytes,
        0
    );
}

/// A context just under its limit copied into 500 events would produce ~5 MB from a ~30 KB
/// body: refused whole, having built no more than the budget.
#[test]
fn a_request_that_would_amplify_itself_is_refused() {
    let limits = Config::default().limits;
    let ctx = json!({"blob": "c".repeat(limits.max_context_bytes - 20)});
    let events: Vec<Value> = (0..500)
        .map(|_| json!({"schema": "page_view/1", "data": {"url": "u"}}))
        .collect();
    let body = serde_json::to_vec(&json!({"context": ctx, "events": events})).unwrap();
    let bundle = Bundle::parse(&body, 64).unwrap();
    assert!(bundle.context_bytes < limits.max_context_bytes);
    let err = process(&bundle, &registry(), &cfg(), &enrichment())
        .err()
        .expect("over the output budget");
    assert!(err.limit < 2 * 1024 * 1024, "{err}");
    assert!(err.to_string().contains("max_output_ratio"), "{err}");

    // The same context with a few events, or a typical 1 KB context with 500, is accepted.
    for (ctx, n) in [(ctx, 3), (json!({"blob": "c".repeat(1_000)}), 500)] {
        let events: Vec<Value> = events.iter().take(n).cloned().collect();
        let body = serde_json::to_vec(&json!({"context": ctx, "events": events})).unwrap();
        let p = run_with(&body, &cfg()).unwrap();
        assert_eq!(p.accepted, n);
        let produced: usize = p.records.iter().map(size_of).sum();
        assert!(produced <= budget_of(&body, n, &cfg()));
    }
}

/// A partition key over 256 bytes rejects its event as `invalid_envelope`; at 256 it is the key.
#[test]
fn long_partition_keys_reject_their_event() {
    let at = "v".repeat(bounds::PARTITION_KEY_MAX);
    let over = "v".repeat(bounds::PARTITION_KEY_MAX + 1);
    let ev = || json!({"schema": "page_view/1", "data": {"url": "u"}});
    let p = run(&json!({"context": {"visitor_id": at}, "events": [ev()]}));
    assert_eq!(p.records[0].key.as_deref(), Some(at.as_bytes()));
    let mut own = ev();
    own["context"] = json!({"session_id": over});
    let p = run(&json!({"context": {"visitor_id": over}, "events": [ev(), own]}));
    assert_eq!(p.accepted, 0);
    let got: Vec<_> = p
        .rejected
        .iter()
        .map(|r| (r.reason, r.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (RejectReason::InvalidEnvelope, "/context/visitor_id"),
            (RejectReason::InvalidEnvelope, "/context/visitor_id")
        ]
    );
    // The event's own short visitor id wins over a long batch one.
    let mut short = ev();
    short["context"] = json!({"visitor_id": "v-1"});
    let p = run(&json!({"context": {"visitor_id": over}, "events": [short]}));
    assert_eq!(p.records[0].key.as_deref(), Some(&b"v-1"[..]));
}

#[test]
fn record_size_counts_what_librdkafka_counts() {
    // 36 framing + key 3 + value 10 + header (1 + 6 "schema" + 1 + 11 "page_view/1").
    let headers = vec![("schema", "page_view/1".to_string())];
    assert_eq!(record_size(Some(b"k-1"), &headers, 10), 36 + 3 + 10 + 19);
    // Header lengths are zigzag varints: 64 takes two bytes.
    let headers = vec![("schema", "x".repeat(64))];
    assert_eq!(record_size(None, &headers, 0), 36 + 1 + 6 + 2 + 64);
}

#[test]
fn cut_keeps_char_boundaries_and_the_bound() {
    let s = "é".repeat(100);
    for max in [64, 65] {
        let c = bounds::cut(&s, max);
        assert!(c.len() <= max && c.ends_with(bounds::TRUNCATION_MARK));
    }
    assert_eq!(bounds::cut("short", 64), "short");
}

/// The bound the pipeline promises, computed independently of `OutputBudget`.
fn budget_of(body: &[u8], events: usize, cfg: &PipelineConfig) -> usize {
    let enrichment = crate::thrift::to_compact_bytes(&enrichment()).len();
    cfg.limits.max_output_ratio * body.len()
        + events * (cfg.limits.output_bytes_per_event + enrichment)
}

fn arb_map() -> impl Strategy<Value = Map<String, Value>> {
    // Sometimes a large blob (up to past the context limit) or a long visitor id.
    let blob = prop_oneof![
        3 => Just(None),
        1 => (0usize..10_000).prop_map(|n| Some(("blob".to_string(), json!("b".repeat(n))))),
        1 => (200usize..300).prop_map(|n| Some(("visitor_id".to_string(), json!("v".repeat(n))))),
    ];
    (
        prop::collection::vec(("[a-d]{1,2}|visitor_id", crate::thrift::arb_json()), 0..4),
        blob,
    )
        .prop_map(|(kv, blob)| kv.into_iter().chain(blob).collect())
}

fn arb_event() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        2 => Just(Value::Null),
        2 => Just(json!(ID)),
        1 => "[a-z0-9-]{0,80}".prop_map(Value::String),
        1 => (1usize..3000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    let schema = prop_oneof![
        4 => Just(json!("page_view/1")),
        1 => Just(json!("nope/1")),
        1 => any::<String>().prop_map(Value::String),
    ];
    // Payloads that pass the schema, with sizes up to past the event and record limits
    // (doubles take three times their JSON size in Thrift).
    let data = prop_oneof![
        3 => crate::thrift::arb_json().prop_map(|v| json!({"url": "u", "v": v})),
        1 => crate::thrift::arb_json(),
        1 => (0usize..8_000).prop_map(|n| json!({"url": "u", "n": vec![1.5; n]})),
        1 => (0usize..20_000).prop_map(|n| json!({"url": "x".repeat(n)})),
    ];
    (schema, id, arb_map(), data).prop_map(|(schema, id, context, data)| {
        json!({"schema": schema, "event_id": id, "context": context, "data": data})
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// For any bundle: every record fits the record limit, no invalid id is a key or header,
    /// and the request produces no more than its bound (or is refused).
    #[test]
    fn every_record_fits_and_output_is_bounded(
        context in arb_map(),
        events in prop::collection::vec(arb_event(), 0..8),
        max_record_bytes in 6_000usize..60_000,
        max_event_bytes in 2_000usize..30_000,
        copies in 1usize..8,
    ) {
        let mut limits = Config::default().limits;
        limits.max_event_bytes = max_event_bytes;
        let cfg = cfg_with(max_record_bytes, limits);
        // Repeat the events so the context is copied many times.
        let events: Vec<Value> = events.iter().cycle().take(events.len() * copies).cloned().collect();
        let body = serde_json::to_vec(&json!({"context": context, "events": events})).unwrap();
        let bundle = Bundle::parse(&body, 64).unwrap();
        if let Ok(p) = process(&bundle, &registry(), &cfg, &enrichment()) {
            let mut produced = 0;
            for r in &p.records {
                prop_assert!(size_of(r) <= max_record_bytes, "{} > {}", size_of(r), max_record_bytes);
                if let Some(key) = &r.key {
                    prop_assert!(key.len() <= bounds::PARTITION_KEY_MAX.max(45));
                }
                if let (RecordKind::DeadLetter, Some(id)) = (r.kind, r.header("event_id")) {
                    prop_assert!(uuid::Uuid::try_parse(id).is_ok(), "{}", id);
                }
                produced += size_of(r);
            }
            prop_assert_eq!(p.records.len(), events.len());
            prop_assert!(produced <= budget_of(&body, events.len(), &cfg));
        }
    }
}
