//! The compact protocol reader with every length prefix checked before it allocates.
//!
//! The thrift crate allocates what a length prefix claims before reading the bytes: a 6-byte
//! string header claiming 4 GiB allocates 4 GiB, and a list header's count goes straight to
//! `Vec::with_capacity` in the generated code (a count past `i32::MAX` wraps negative and aborts
//! the process). The generated readers also read each known field id with its IDL type whatever
//! type the wire says, so no structural check of the bytes done beforehand can predict what the
//! decoder will read. `tail` decodes records anyone who can write to the topic produced; so this
//! wrapper looks at each length prefix at the moment the decoder is about to read it, and
//! refuses one larger than the bytes left. Decoding then allocates a small multiple of the input.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use thrift::protocol::{
    TCompactInputProtocol, TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier,
    TMessageIdentifier, TSetIdentifier, TStructIdentifier,
};
use thrift::{ProtocolError, ProtocolErrorKind};

/// A byte slice as a transport, its position shared with the protocol wrapper.
struct Slice<'a> {
    bytes: &'a [u8],
    pos: Rc<Cell<usize>>,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.pos.get();
        let rest = &self.bytes[pos.min(self.bytes.len())..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos.set(pos + n);
        Ok(n)
    }
}

/// `TCompactInputProtocol` over a byte slice, refusing lengths and counts beyond the bytes left.
pub struct BoundedCompact<'a> {
    inner: TCompactInputProtocol<Slice<'a>>,
    bytes: &'a [u8],
    pos: Rc<Cell<usize>>,
    /// The decoder's last field id and the stack of enclosing structs' ones, mirrored: a
    /// field-id delta past `i16::MAX` overflows inside the thrift crate (a panic where overflow
    /// checks are on), so it is refused here first.
    last_field_id: i16,
    field_ids: Vec<i16>,
}

impl<'a> BoundedCompact<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        let pos = Rc::new(Cell::new(0));
        let transport = Slice {
            bytes,
            pos: pos.clone(),
        };
        BoundedCompact {
            inner: TCompactInputProtocol::new(transport),
            bytes,
            pos,
            last_field_id: 0,
            field_ids: Vec::new(),
        }
    }

    /// The unsigned varint at `at`, and where it ends (`None`: not one; the decoder will say why).
    fn varint_at(&self, at: usize) -> Option<(u64, usize)> {
        let mut value = 0u64;
        for (i, &b) in self.bytes.get(at..)?.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some((value, at + i + 1));
            }
        }
        None
    }

    /// Refuses a count or length `n` read before `end` that the bytes after `end` cannot hold
    /// (every element takes at least one byte).
    fn check(&self, n: u64, end: usize) -> thrift::Result<()> {
        let left = self.bytes.len().saturating_sub(end) as u64;
        if n > left || n > i32::MAX as u64 {
            return Err(thrift::Error::Protocol(ProtocolError::new(
                ProtocolErrorKind::SizeLimit,
                format!("length {n} at byte {end} but only {left} bytes follow"),
            )));
        }
        Ok(())
    }

    /// A length-prefixed string or binary at the current position.
    fn check_bytes(&self) -> thrift::Result<()> {
        match self.varint_at(self.pos.get()) {
            Some((n, end)) => self.check(n, end),
            None => Ok(()),
        }
    }

    /// A list or set header: `(count << 4) | type`, or `0xF? ` then a varint count.
    fn check_list(&self) -> thrift::Result<()> {
        let at = self.pos.get();
        let Some(&header) = self.bytes.get(at) else {
            return Ok(());
        };
        match header >> 4 {
            15 => match self.varint_at(at + 1) {
                Some((n, end)) => self.check(n, end),
                None => Ok(()),
            },
            n => self.check(u64::from(n), at + 1),
        }
    }
}

impl TInputProtocol for BoundedCompact<'_> {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        self.inner.read_message_begin()
    }
    fn read_message_end(&mut self) -> thrift::Result<()> {
        self.inner.read_message_end()
    }
    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        self.field_ids.push(self.last_field_id);
        self.last_field_id = 0;
        self.inner.read_struct_begin()
    }
    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.last_field_id = self.field_ids.pop().unwrap_or(0);
        self.inner.read_struct_end()
    }
    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        // Header: (id delta << 4) | type; type 0 is the stop, delta 0 means an explicit id.
        if let Some(&header) = self.bytes.get(self.pos.get()) {
            let delta = i16::from(header >> 4);
            if header & 0x0f != 0 && self.last_field_id.checked_add(delta).is_none() {
                return Err(thrift::Error::Protocol(ProtocolError::new(
                    ProtocolErrorKind::InvalidData,
                    format!("field id past {} at byte {}", i16::MAX, self.pos.get()),
                )));
            }
        }
        let field = self.inner.read_field_begin()?;
        if let Some(id) = field.id {
            self.last_field_id = id;
        }
        Ok(field)
    }
    fn read_field_end(&mut self) -> thrift::Result<()> {
        self.inner.read_field_end()
    }
    fn read_bool(&mut self) -> thrift::Result<bool> {
        self.inner.read_bool()
    }
    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        self.check_bytes()?;
        self.inner.read_bytes()
    }
    fn read_i8(&mut self) -> thrift::Result<i8> {
        self.inner.read_i8()
    }
    fn read_i16(&mut self) -> thrift::Result<i16> {
        self.inner.read_i16()
    }
    fn read_i32(&mut self) -> thrift::Result<i32> {
        self.inner.read_i32()
    }
    fn read_i64(&mut self) -> thrift::Result<i64> {
        self.inner.read_i64()
    }
    fn read_double(&mut self) -> thrift::Result<f64> {
        self.inner.read_double()
    }
    fn read_string(&mut self) -> thrift::Result<String> {
        self.check_bytes()?;
        self.inner.read_string()
    }
    fn read_list_begin(&mut self) -> thrift::Result<TListIdentifier> {
        self.check_list()?;
        self.inner.read_list_begin()
    }
    fn read_list_end(&mut self) -> thrift::Result<()> {
        self.inner.read_list_end()
    }
    fn read_set_begin(&mut self) -> thrift::Result<TSetIdentifier> {
        self.check_list()?;
        self.inner.read_set_begin()
    }
    fn read_set_end(&mut self) -> thrift::Result<()> {
        self.inner.read_set_end()
    }
    fn read_map_begin(&mut self) -> thrift::Result<TMapIdentifier> {
        self.check_bytes()?; // a varint count, then (if not 0) one byte of key and value types
        self.inner.read_map_begin()
    }
    fn read_map_end(&mut self) -> thrift::Result<()> {
        self.inner.read_map_end()
    }
    fn read_byte(&mut self) -> thrift::Result<u8> {
        self.inner.read_byte()
    }
}

#[cfg(test)]
mod tests {
    use crate::thrift::{from_compact_bytes, Event, Json};
    use thrift::{Error, ProtocolErrorKind};

    /// The decoder refused a length prefix (rather than allocating, or failing later on).
    fn refused_length(err: Error) -> bool {
        matches!(err, Error::Protocol(e) if e.kind == ProtocolErrorKind::SizeLimit)
    }

    #[test]
    fn a_string_claiming_more_than_is_left_is_an_error() {
        // Json { tokens: [Token { kind: 5, string_value: <4 GiB> }] }
        let bytes = [
            0x19, 0x1c, 0x15, 0x0a, 0x48, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00,
        ];
        assert!(refused_length(
            from_compact_bytes::<Json>(&bytes).unwrap_err()
        ));
    }

    #[test]
    fn a_list_claiming_more_elements_than_bytes_is_an_error() {
        // Json { tokens: list of 2^31 - 1 structs } in 7 bytes: the generated code would
        // reserve 2^31 Tokens (about 200 GB, the process aborts) before reading the first.
        let bytes = [0x19, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07];
        assert!(refused_length(
            from_compact_bytes::<Json>(&bytes).unwrap_err()
        ));
    }

    /// Found by the `thrift_tail` fuzz target: an explicit field id near `i16::MAX`, then a
    /// delta; the thrift crate's `last_read_field_id += delta` overflowed (a panic in debug
    /// builds, a wrapped id in release).
    #[test]
    fn a_field_id_past_i16_max_is_an_error_not_an_overflow() {
        let bytes = include_bytes!("../../fuzz/corpus/thrift_tail/crash-field-id-overflow");
        let err = from_compact_bytes::<Json>(bytes).unwrap_err();
        assert!(
            matches!(&err, Error::Protocol(e) if e.kind == ProtocolErrorKind::InvalidData),
            "{err:?}"
        );
    }

    /// Found by the `thrift_tail` fuzz target: field 3 of `Event` (an i32) sent as a string; the
    /// generated reader reads it as an i32 regardless, and then takes the string's bytes for
    /// fields, down to a skipped string claiming 2.7 GB.
    #[test]
    fn a_field_of_the_wrong_type_cannot_make_the_decoder_allocate_gigabytes() {
        let bytes = include_bytes!("../../fuzz/corpus/thrift_tail/oom-field-type-mismatch");
        assert!(refused_length(
            from_compact_bytes::<Event>(bytes).unwrap_err()
        ));
    }
}
