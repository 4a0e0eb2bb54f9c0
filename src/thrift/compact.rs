//! The hot path's encoder: an accepted event straight from `serde_json::Value` to the compact
//! protocol bytes of `Event`, with no intermediate `Token` list or generated struct.
//!
//! The output is byte for byte what the generated code writes for the same `Event` (tests below
//! compare the two on arbitrary JSON), so the IDL stays the contract and any Thrift library
//! decodes it. What this saves per event: one heap `Token` (plus key and string copies) per JSON
//! node, the `Event` and `Enrichment` structs' clones, and the generic protocol's per-call
//! bookkeeping. The request's `Enrichment` is encoded once (`EncodedEnrichment`) and copied
//! into each event.
//!
//! Compact protocol, as used here: a field header is one byte `(id delta << 4) | type` (every
//! delta here is 1..=14); integers are zigzag varints; doubles are 8 bytes little-endian; strings
//! are a varint length and the bytes; a list header is `(size << 4) | element type`, or `0xF0 |
//! type` followed by a varint size from 15 elements on; a struct ends with a 0 byte.

use serde_json::{Map, Value};

use super::generated::{Enrichment, TokenKind};

const T_DOUBLE: u8 = 7;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_STRUCT: u8 = 12;
const STOP: u8 = 0;

/// A request's `Enrichment`, encoded once and spliced into each of its events.
#[derive(Debug, Clone)]
pub struct EncodedEnrichment(Vec<u8>);

impl EncodedEnrichment {
    pub fn new(enrichment: &Enrichment) -> Self {
        // A nested struct's fields are encoded exactly as a top-level struct's: field ids restart
        // at 0 inside it, and it ends with its own stop byte.
        EncodedEnrichment(super::to_compact_bytes(enrichment))
    }

    /// Bytes it adds to each event (the output budget allows for them per event).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The fields of an `Event`, borrowed from the pipeline's stages.
pub struct EventFields<'a> {
    pub event_id: &'a str,
    pub schema_name: &'a str,
    pub schema_major: i32,
    pub ts: Option<&'a str>,
    /// The bundle's context; `event_context` overrides it key by key (see `merged_context`).
    pub batch_context: &'a Map<String, Value>,
    pub event_context: &'a Map<String, Value>,
    pub data: &'a Value,
    pub enrichment: &'a EncodedEnrichment,
}

/// Encodes an `Event`. `size_hint` is the event's JSON text length, to size the buffer once.
pub fn encode_event(ev: &EventFields<'_>, size_hint: usize) -> Vec<u8> {
    let mut w = Writer {
        buf: Vec::with_capacity(size_hint + size_hint / 4 + ev.enrichment.0.len() + 64),
    };
    w.header(1, T_BINARY);
    w.string(ev.event_id);
    w.header(1, T_BINARY);
    w.string(ev.schema_name);
    w.header(1, T_I32);
    w.varint(zigzag(i64::from(ev.schema_major)));
    let mut delta = 1;
    if let Some(ts) = ev.ts {
        w.header(1, T_BINARY);
        w.string(ts);
    } else {
        delta = 2;
    }
    // 5: context, as a Json struct.
    w.header(delta, T_STRUCT);
    let merged = MergedContext {
        batch: ev.batch_context,
        event: ev.event_context,
    };
    let (members, tokens) = merged.counts();
    w.json_struct(tokens, |w| merged.write(w, members));
    // 6: data.
    w.header(1, T_STRUCT);
    w.json_struct(nodes(ev.data), |w| w.value(ev.data, None));
    // 7: enrichment.
    w.header(1, T_STRUCT);
    w.buf.extend_from_slice(&ev.enrichment.0);
    w.buf.push(STOP);
    w.buf
}

/// The batch context with the event's context laid over it, as `Map::extend` would build it:
/// the batch's keys in their order (with the event's value where it has one), then the event's
/// other keys in theirs. Iterated in place, so no merged map is built per event.
struct MergedContext<'a> {
    batch: &'a Map<String, Value>,
    event: &'a Map<String, Value>,
}

impl MergedContext<'_> {
    fn members(&self) -> impl Iterator<Item = (&String, &Value)> {
        let from_batch = self
            .batch
            .iter()
            .map(|(k, v)| (k, self.event.get(k).unwrap_or(v)));
        let event_only = self
            .event
            .iter()
            .filter(|(k, _)| self.batch.is_empty() || !self.batch.contains_key(k.as_str()));
        from_batch.chain(event_only)
    }

    /// (members, tokens) in one pass: the object's length and its whole token count.
    fn counts(&self) -> (usize, usize) {
        self.members().fold((0, 1), |(members, tokens), (_, v)| {
            (members + 1, tokens + nodes(v))
        })
    }

    fn write(&self, w: &mut Writer, members: usize) {
        w.token_container(TokenKind::OBJECT, None, members);
        for (k, v) in self.members() {
            w.value(v, Some(k));
        }
    }
}

/// Number of tokens a value becomes: one per JSON node.
fn nodes(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(nodes).sum::<usize>(),
        Value::Object(members) => 1 + members.values().map(nodes).sum::<usize>(),
        _ => 1,
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn len_i32(n: usize) -> i64 {
    // Bodies are capped at a few MiB, so no container or string reaches 2^31.
    i64::from(i32::try_from(n).unwrap_or(i32::MAX))
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn header(&mut self, delta: u8, ty: u8) {
        debug_assert!((1..15).contains(&delta));
        self.buf.push((delta << 4) | ty);
    }

    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.buf.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.buf.push(n as u8);
    }

    fn string(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A `Json` struct body: `1: list<Token> tokens` holding `count` tokens written by `body`.
    fn json_struct(&mut self, count: usize, body: impl FnOnce(&mut Writer)) {
        self.header(1, T_LIST);
        if count <= 14 {
            self.buf.push(((count as u8) << 4) | T_STRUCT);
        } else {
            self.buf.push(0xF0 | T_STRUCT);
            self.varint(count as u64);
        }
        body(self);
        self.buf.push(STOP);
    }

    /// Token fields 1 (kind) and 2 (key); returns the id of the last field written.
    fn token_start(&mut self, kind: TokenKind, key: Option<&str>) -> u8 {
        self.header(1, T_I32);
        self.varint(zigzag(i64::from(kind.0)));
        match key {
            Some(k) => {
                self.header(1, T_BINARY);
                self.string(k);
                2
            }
            None => 1,
        }
    }

    fn token_container(&mut self, kind: TokenKind, key: Option<&str>, len: usize) {
        let last = self.token_start(kind, key);
        self.header(6 - last, T_I32);
        self.varint(zigzag(len_i32(len)));
        self.buf.push(STOP);
    }

    /// One JSON value in pre-order, exactly as `json::to_thrift` lays it out.
    fn value(&mut self, v: &Value, key: Option<&str>) {
        match v {
            Value::Null => {
                self.token_start(TokenKind::NULL_VALUE, key);
                self.buf.push(STOP);
            }
            Value::Bool(b) => {
                let kind = if *b {
                    TokenKind::TRUE_VALUE
                } else {
                    TokenKind::FALSE_VALUE
                };
                self.token_start(kind, key);
                self.buf.push(STOP);
            }
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    let last = self.token_start(TokenKind::INT, key);
                    self.header(3 - last, T_I64);
                    self.varint(zigzag(i));
                } else if let Some(u) = n.as_u64() {
                    let last = self.token_start(TokenKind::UINT, key);
                    self.header(3 - last, T_I64);
                    self.varint(zigzag(u as i64));
                } else {
                    let last = self.token_start(TokenKind::DOUBLE, key);
                    self.header(4 - last, T_DOUBLE);
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    self.buf.extend_from_slice(&f.to_le_bytes());
                }
                self.buf.push(STOP);
            }
            Value::String(s) => {
                let last = self.token_start(TokenKind::STRING, key);
                self.header(5 - last, T_BINARY);
                self.string(s);
                self.buf.push(STOP);
            }
            Value::Array(items) => {
                self.token_container(TokenKind::ARRAY, key, items.len());
                for item in items {
                    self.value(item, None);
                }
            }
            Value::Object(members) => {
                self.token_container(TokenKind::OBJECT, key, members.len());
                for (k, v) in members {
                    self.value(v, Some(k));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thrift::json::to_thrift;
    use crate::thrift::{arb_json, to_compact_bytes, Event};
    use proptest::prelude::*;
    use serde_json::json;

    fn enrichment() -> Enrichment {
        Enrichment {
            received_at_ms: 1_763_800_000_123,
            client_ip: Some("203.0.113.9".into()),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0".into()),
            collector_host: "gw-1".into(),
            collector_version: "0.1.0".into(),
            sent_at: None,
            origin: Some("https://shop.example".into()),
        }
    }

    /// One event's inputs, encoded both ways.
    struct Case<'a> {
        ts: Option<&'a str>,
        batch: &'a Map<String, Value>,
        event: &'a Map<String, Value>,
        data: &'a Value,
        enrichment: Enrichment,
    }

    impl Case<'_> {
        const ID: &'static str = "0f8fad5b-d9cb-469f-a165-70867728950e";

        /// What the generated code writes for the same event (the reference).
        fn reference(&self) -> Vec<u8> {
            let mut merged = self.batch.clone();
            merged.extend(self.event.clone());
            to_compact_bytes(&Event {
                event_id: Self::ID.into(),
                schema_name: "page_view".into(),
                schema_major: 3,
                ts: self.ts.map(str::to_owned),
                context: to_thrift(&Value::Object(merged)),
                data: to_thrift(self.data),
                enrichment: self.enrichment.clone(),
            })
        }

        fn fast(&self) -> Vec<u8> {
            let enrichment = EncodedEnrichment::new(&self.enrichment);
            let fields = EventFields {
                event_id: Self::ID,
                schema_name: "page_view",
                schema_major: 3,
                ts: self.ts,
                batch_context: self.batch,
                event_context: self.event,
                data: self.data,
                enrichment: &enrichment,
            };
            encode_event(&fields, 0)
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn same_bytes_as_generated_code_for_a_typical_event() {
        let batch = obj(json!({"app": "web", "visitor_id": "v-1", "locale": "de-DE"}));
        let event = obj(json!({"visitor_id": "v-2", "page": 7}));
        let data = json!({"url": "https://shop.example/p/1", "ms": 12.5, "tags": ["a", null, true, false],
                          "big": u64::MAX, "neg": i64::MIN, "nested": {"x": {}}});
        for ts in [None, Some("2026-11-21T11:59:58.120Z")] {
            let case = Case {
                ts,
                batch: &batch,
                event: &event,
                data: &data,
                enrichment: enrichment(),
            };
            assert_eq!(case.fast(), case.reference());
        }
        let empty = Map::new();
        let case = Case {
            ts: None,
            batch: &empty,
            event: &empty,
            data: &json!({}),
            enrichment: enrichment(),
        };
        assert_eq!(case.fast(), case.reference());
    }

    #[test]
    fn large_containers_use_the_long_list_header() {
        // 15+ tokens switch the list header to its varint form; 64+ members push the container
        // length past one varint byte.
        let data = Value::Array((0..200).map(Value::from).collect());
        let batch = obj(json!({"k": 1}));
        let event: Map<String, Value> = (0..70).map(|i| (format!("c{i}"), json!(i))).collect();
        let case = Case {
            ts: None,
            batch: &batch,
            event: &event,
            data: &data,
            enrichment: Enrichment {
                client_ip: None,
                user_agent: None,
                origin: None,
                ..enrichment()
            },
        };
        assert_eq!(case.fast(), case.reference());
    }

    fn arb_map() -> impl Strategy<Value = Map<String, Value>> {
        // Short keys from a small alphabet, so batch and event contexts often share keys.
        prop::collection::vec(("[a-d]{1,2}", arb_json()), 0..6)
            .prop_map(|kv| kv.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The hand encoder and the generated code agree byte for byte on any event.
        #[test]
        fn identical_to_generated_encoding(
            batch in arb_map(),
            event in arb_map(),
            data in arb_json(),
            ts in prop::option::of("[0-9TZ:.-]{0,30}"),
        ) {
            let case = Case {
                ts: ts.as_deref(),
                batch: &batch,
                event: &event,
                data: &data,
                enrichment: enrichment(),
            };
            prop_assert_eq!(case.fast(), case.reference());
        }
    }
}
