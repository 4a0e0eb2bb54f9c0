//! A structural check of compact-protocol bytes before the generated code decodes them.
//!
//! The thrift crate allocates what a length prefix claims before reading the bytes: a 6-byte
//! string header claiming 4 GiB allocates 4 GiB, and a list header's count becomes
//! `Vec::with_capacity` (a negative count, `as usize`, aborts the process). `tail` decodes
//! records anyone who can write to the topic produced, so every length is checked here against
//! the bytes that are left: then decoding a record allocates a small multiple of its size.

/// Nesting (structs and collections) the check follows; the thrift crate skips unknown fields
/// to the same depth.
const MAX_DEPTH: usize = 64;

/// Why bytes are not a well-formed compact struct.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("malformed compact struct at byte {at}: {problem}")]
pub struct Malformed {
    pub at: usize,
    pub problem: &'static str,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn fail<T>(&self, problem: &'static str) -> Result<T, Malformed> {
        Err(Malformed {
            at: self.pos,
            problem,
        })
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, Malformed> {
        let Some(&b) = self.bytes.get(self.pos) else {
            return self.fail("truncated");
        };
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), Malformed> {
        if n > self.left() {
            return self.fail("length beyond the end");
        }
        self.pos += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift.min(63);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        self.fail("varint too long")
    }

    /// A count or length: at most the bytes left, since every element takes at least one.
    fn length(&mut self) -> Result<usize, Malformed> {
        let n = self.varint()?;
        if n > i32::MAX as u64 || n as usize > self.left() {
            return self.fail("length beyond the end");
        }
        Ok(n as usize)
    }

    /// One value of compact type `kind` (a collection element: booleans take a byte).
    fn value(&mut self, kind: u8, depth: usize) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return self.fail("nested too deep");
        }
        match kind {
            0x01..=0x03 => self.skip(1), // booleans and bytes
            0x04..=0x06 => self.varint().map(drop),
            0x07 => self.skip(8),
            0x08 => {
                let n = self.length()?;
                self.skip(n)
            }
            0x09 | 0x0A => {
                let header = self.byte()?;
                let n = match header >> 4 {
                    15 => self.length()?,
                    n if usize::from(n) > self.left() => return self.fail("length beyond the end"),
                    n => usize::from(n),
                };
                self.elements(n, &[header & 0x0f], depth + 1)
            }
            0x0B => {
                let n = self.length()?;
                if n == 0 {
                    return Ok(());
                }
                let types = self.byte()?;
                self.elements(n, &[types >> 4, types & 0x0f], depth + 1)
            }
            0x0C => self.structure(depth + 1),
            _ => self.fail("unknown type"),
        }
    }

    fn elements(&mut self, n: usize, kinds: &[u8], depth: usize) -> Result<(), Malformed> {
        for _ in 0..n {
            for &kind in kinds {
                self.value(kind, depth)?;
            }
        }
        Ok(())
    }

    fn structure(&mut self, depth: usize) -> Result<(), Malformed> {
        loop {
            let header = self.byte()?;
            if header == 0 {
                return Ok(());
            }
            if header >> 4 == 0 {
                self.varint()?; // the field id, when not a delta
            }
            match header & 0x0f {
                0x01 | 0x02 => {} // a boolean field's value is its type
                kind => self.value(kind, depth)?,
            }
        }
    }
}

/// Checks that `bytes` start with a well-formed compact struct whose every length and count
/// fits in the bytes that follow it.
pub fn check_struct(bytes: &[u8]) -> Result<(), Malformed> {
    Reader { bytes, pos: 0 }.structure(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thrift::{arb_json, from_compact_bytes, json::to_thrift, to_compact_bytes, Json};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn everything_the_encoder_writes_passes(v in arb_json()) {
            prop_assert_eq!(check_struct(&to_compact_bytes(&to_thrift(&v))), Ok(()));
        }
    }

    #[test]
    fn a_string_claiming_more_than_is_left_is_refused_before_allocating() {
        // Json { tokens: [Token { kind: STRING, string_value: <4 GiB> }] }
        let bytes = [
            0x19, 0x1c, 0x15, 0x0a, 0x48, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00,
        ];
        assert_eq!(
            check_struct(&bytes).unwrap_err().problem,
            "length beyond the end"
        );
        assert!(from_compact_bytes::<Json>(&bytes).is_err());
    }

    #[test]
    fn a_list_claiming_more_elements_than_bytes_is_refused() {
        // Json { tokens: list of 2^31 - 1 structs } in 7 bytes.
        let bytes = [0x19, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07];
        assert!(check_struct(&bytes).is_err());
        assert!(from_compact_bytes::<Json>(&bytes).is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let mut bytes = vec![0x1c; 100_000]; // field 1: struct, field 1: struct, ...
        bytes.push(0);
        assert_eq!(check_struct(&bytes).unwrap_err().problem, "nested too deep");
        // Lists of lists: field 1 is a list of one list of one list...
        let mut bytes = vec![0x19];
        bytes.extend(std::iter::repeat_n(0x19, 100_000));
        assert_eq!(check_struct(&bytes).unwrap_err().problem, "nested too deep");
    }
}
