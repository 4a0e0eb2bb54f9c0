//! Where an event becomes Thrift bytes, and back.
//!
//! `generated` is produced by `scripts/gen-thrift.sh` from `thrift/eventpipe.thrift` and committed;
//! `compact` is the hot path's direct encoder of `Event` (same bytes as the generated code);
//! `json` converts `serde_json::Value` to and from the flat token list the IDL describes.

#[allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
#[rustfmt::skip]
pub mod generated;
pub mod bounded;
pub mod compact;
pub mod json;

pub use generated::{DeadLetter, Enrichment, Event, Json, Token, TokenKind};

use thrift::protocol::{TCompactOutputProtocol, TSerializable};

/// Serializes any generated struct with the compact protocol.
pub fn to_compact_bytes<T: TSerializable>(value: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    {
        let mut proto = TCompactOutputProtocol::new(&mut buf);
        // Writing into a Vec cannot fail: the only errors the protocol raises come from the
        // transport, and a Vec transport accepts everything.
        value
            .write_to_out_protocol(&mut proto)
            .expect("compact encoding into a Vec is infallible");
    }
    buf
}

/// Decodes a compact-protocol struct from bytes. Length prefixes are checked against the bytes
/// left before anything is allocated (`bounded`): hostile bytes cannot make the decoder
/// allocate more than a small multiple of their size.
pub fn from_compact_bytes<T: TSerializable>(bytes: &[u8]) -> thrift::Result<T> {
    let mut proto = bounded::BoundedCompact::new(bytes);
    T::read_from_in_protocol(&mut proto)
}

/// Arbitrary JSON for property tests of the Thrift mappings: every scalar kind (i64, u64 past
/// i64::MAX, finite doubles, any Unicode), nested arrays and objects. Strings and keys are often
/// short and from a small alphabet, so objects merged with each other share keys.
#[cfg(test)]
pub(crate) fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let text = || prop_oneof!["[a-d]{1,2}", any::<String>()];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(8, 256, 20, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..20)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}
