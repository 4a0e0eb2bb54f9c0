//! Where an event becomes Thrift bytes, and back.
//!
//! `generated` is produced by `scripts/gen-thrift.sh` from `thrift/eventpipe.thrift` and committed;
//! `compact` is the hot path's direct encoder of `Event` (same bytes as the generated code);
//! `json` converts `serde_json::Value` to and from the flat token list the IDL describes.

#[allow(clippy::all, clippy::pedantic, dead_code, non_camel_case_types)]
#[rustfmt::skip]
pub mod generated;
pub mod compact;
pub mod json;

pub use generated::{DeadLetter, Enrichment, Event, Json, Token, TokenKind};

use thrift::protocol::{TCompactInputProtocol, TCompactOutputProtocol, TSerializable};

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

/// Decodes a compact-protocol struct from bytes.
pub fn from_compact_bytes<T: TSerializable>(mut bytes: &[u8]) -> thrift::Result<T> {
    let mut proto = TCompactInputProtocol::new(&mut bytes);
    T::read_from_in_protocol(&mut proto)
}
