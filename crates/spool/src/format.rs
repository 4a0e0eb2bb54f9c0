//! The byte format of spool and quarantine files: segment header, frames, record bodies,
//! quarantine entries, and a reader that resynchronises after damage. The rules are in the module
//! doc of `spool`; this file only implements them.

use std::sync::Arc;

use crate::record::{AsRecord, Record};

/// The largest frame body the writer accepts and the reader believes (16 MiB). One limit for
/// both: a record the reader would call corrupt is never written.
pub const MAX_RECORD: u32 = 16 << 20;
/// `EPSPOOL2`: a segment that starts with this has the checked frame format; anything else is a
/// legacy segment (8-byte frame headers, no kinds, no commit markers).
pub const MAGIC: [u8; 8] = *b"EPSPOOL2";
/// Magic + nonce.
pub const SEGMENT_HEADER: usize = 16;
/// Room for a quarantine entry's own fields around a record body of up to [`MAX_RECORD`].
const QUARANTINE_OVERHEAD: u32 = 512;
const FRAME_HEADER: usize = 12;
const LEGACY_FRAME_HEADER: usize = 8;
const KIND_SHIFT: u32 = 28;
const LEN_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A record for Kafka (the only kind in legacy segments).
    Record = 0,
    /// The end of one group commit: everything before it was fsynced together with it.
    Commit = 1,
    /// A quarantine entry (only in quarantine files).
    Quarantined = 2,
}

impl FrameKind {
    fn from_bits(bits: u32) -> Option<FrameKind> {
        match bits {
            0 => Some(FrameKind::Record),
            1 => Some(FrameKind::Commit),
            2 => Some(FrameKind::Quarantined),
            _ => None,
        }
    }
}

/// How the frames of one file are checked: with the file's nonce, or the legacy way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// None: a legacy segment (plain CRC of the body, no resynchronisation).
    nonce: Option<u64>,
}

impl Format {
    /// The checked format with a fresh random nonce (one per spool instance).
    pub fn fresh() -> Format {
        // SipHash keys are drawn from the OS's randomness: unpredictable to a client.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::UNIX_EPOCH
                .elapsed()
                .unwrap_or_default()
                .as_nanos(),
        );
        Format {
            nonce: Some(h.finish()),
        }
    }

    /// The legacy format (segments written before `EPSPOOL2`), for tests of the legacy reader.
    #[doc(hidden)]
    pub fn legacy() -> Format {
        Format { nonce: None }
    }

    /// The format of a file from its first bytes, and where its frames start.
    pub fn of(file: &[u8]) -> (Format, usize) {
        match file.get(..SEGMENT_HEADER) {
            Some(h) if h[..8] == MAGIC => {
                let nonce = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
                (Format { nonce: Some(nonce) }, SEGMENT_HEADER)
            }
            _ => (Format { nonce: None }, 0),
        }
    }

    pub fn is_legacy(&self) -> bool {
        self.nonce.is_none()
    }

    /// The file header (only for the checked format).
    pub fn header(&self) -> [u8; SEGMENT_HEADER] {
        let mut h = [0; SEGMENT_HEADER];
        h[..8].copy_from_slice(&MAGIC);
        h[8..].copy_from_slice(&self.nonce.unwrap_or(0).to_le_bytes());
        h
    }

    fn head_crc(nonce: u64, word: u32) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&nonce.to_le_bytes());
        h.update(&word.to_le_bytes());
        h.finalize()
    }

    fn body_crc(nonce: u64, word: u32, body: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&nonce.to_le_bytes());
        h.update(&word.to_le_bytes());
        h.update(body);
        h.finalize()
    }

    /// Appends one frame whose body `write_body` appends to `out`.
    pub fn push_frame(
        &self,
        kind: FrameKind,
        out: &mut Vec<u8>,
        write_body: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = out.len();
        let header = if self.nonce.is_some() {
            FRAME_HEADER
        } else {
            LEGACY_FRAME_HEADER
        };
        out.resize(start + header, 0);
        write_body(out);
        let len = (out.len() - start - header) as u32;
        match self.nonce {
            Some(nonce) => {
                let word = (kind as u32) << KIND_SHIFT | (len & LEN_MASK);
                let body_crc = Self::body_crc(nonce, word, &out[start + header..]);
                out[start..start + 4].copy_from_slice(&word.to_le_bytes());
                out[start + 4..start + 8]
                    .copy_from_slice(&Self::head_crc(nonce, word).to_le_bytes());
                out[start + 8..start + 12].copy_from_slice(&body_crc.to_le_bytes());
            }
            None => {
                let crc = crc32fast::hash(&out[start + header..]);
                out[start..start + 4].copy_from_slice(&len.to_le_bytes());
                out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }

    /// The frame at `pos`, if one is there whole with valid checksums and a body that decodes.
    pub fn frame_at<'a>(&self, buf: &'a [u8], pos: usize) -> Option<Frame<'a>> {
        let word = u32::from_le_bytes(buf.get(pos..pos.checked_add(4)?)?.try_into().ok()?);
        let (kind, len, header) = match self.nonce {
            Some(nonce) => {
                let head = u32::from_le_bytes(buf.get(pos + 4..pos + 8)?.try_into().ok()?);
                if head != Self::head_crc(nonce, word) {
                    return None;
                }
                (
                    FrameKind::from_bits(word >> KIND_SHIFT)?,
                    word & LEN_MASK,
                    FRAME_HEADER,
                )
            }
            None => (FrameKind::Record, word, LEGACY_FRAME_HEADER),
        };
        let limit = match kind {
            FrameKind::Quarantined => MAX_RECORD + QUARANTINE_OVERHEAD,
            _ => MAX_RECORD,
        };
        if len > limit {
            return None;
        }
        let end = pos + header + len as usize;
        let body = buf.get(pos + header..end)?;
        let ok = match self.nonce {
            Some(nonce) => {
                let crc = u32::from_le_bytes(buf.get(pos + 8..pos + 12)?.try_into().ok()?);
                crc == Self::body_crc(nonce, word, body)
            }
            None => {
                let crc = u32::from_le_bytes(buf.get(pos + 4..pos + 8)?.try_into().ok()?);
                crc == crc32fast::hash(body)
            }
        };
        if !ok {
            return None;
        }
        let decodes = match kind {
            FrameKind::Record => decode_record(body).is_some(),
            FrameKind::Commit => body.len() == 8 && body == (pos as u64).to_le_bytes(),
            FrameKind::Quarantined => decode_quarantined(body).is_some(),
        };
        decodes.then_some(Frame {
            kind,
            body,
            start: pos,
            end,
        })
    }

    /// Appends a commit marker for a frame starting at `offset` in the file.
    pub fn push_commit(&self, offset: u64, out: &mut Vec<u8>) {
        if self.nonce.is_some() {
            self.push_frame(FrameKind::Commit, out, |o| {
                o.extend_from_slice(&offset.to_le_bytes())
            });
        }
    }

    /// Bytes of a commit marker (0 in the legacy format, which has none).
    pub fn commit_len(&self) -> usize {
        if self.nonce.is_some() {
            FRAME_HEADER + 8
        } else {
            0
        }
    }

    /// Reads `buf[start..end]` frame by frame; damaged bytes come out as one `Bad` range up to
    /// the next valid frame (legacy format: up to `end`, it cannot resynchronise safely).
    pub fn items<'a>(&self, buf: &'a [u8], start: usize, end: usize) -> Items<'a> {
        Items {
            format: *self,
            buf: &buf[..end.min(buf.len())],
            pos: start,
        }
    }
}

/// One checked frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    pub body: &'a [u8],
    pub start: usize,
    pub end: usize,
}

/// What a reader finds next.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    Frame(Frame<'a>),
    /// Bytes that are not a valid frame, up to the next valid frame or the end.
    Bad {
        start: usize,
        end: usize,
    },
}

pub struct Items<'a> {
    format: Format,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Items<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        if let Some(frame) = self.format.frame_at(self.buf, self.pos) {
            self.pos = frame.end;
            return Some(Item::Frame(frame));
        }
        let start = self.pos;
        let mut next = self.buf.len();
        if !self.format.is_legacy() {
            // A candidate must pass the 32-bit header check (keyed by the nonce) before its
            // body is checksummed: the search is linear in the damaged bytes.
            if let Some(p) =
                (start + 1..self.buf.len()).find(|&p| self.format.frame_at(self.buf, p).is_some())
            {
                next = p;
            }
        }
        self.pos = next;
        Some(Item::Bad { start, end: next })
    }
}

/// Bytes of a record's frame body, or why it can never be written (a field too long for its
/// length prefix, or the whole body over [`MAX_RECORD`]).
pub fn record_body_len(r: &impl AsRecord) -> Result<usize, String> {
    if r.topic().len() > u16::MAX as usize {
        return Err(format!("topic of {} bytes", r.topic().len()));
    }
    if r.header_count() > u8::MAX as usize {
        return Err(format!("{} headers", r.header_count()));
    }
    let key = r.key().map_or(0, |k| k.len());
    if key > i32::MAX as usize {
        return Err(format!("key of {key} bytes"));
    }
    let mut len = 8 + 2 + r.topic().len() + 4 + key + 1 + 4 + r.payload().len();
    for (k, v) in r.headers() {
        if k.len() > u8::MAX as usize {
            return Err(format!("header name of {} bytes", k.len()));
        }
        len = len.saturating_add(1 + k.len() + 4 + v.len());
    }
    if len > MAX_RECORD as usize {
        return Err(format!(
            "record of {len} bytes exceeds the spool's record limit of {MAX_RECORD} bytes"
        ));
    }
    Ok(len)
}

/// Appends a record body (no frame header). The caller checked [`record_body_len`].
pub fn encode_body(r: &impl AsRecord, appended_ms: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&appended_ms.to_le_bytes());
    let topic = r.topic().as_bytes();
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    match r.key() {
        Some(k) => {
            out.extend_from_slice(&(k.len() as i32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    out.push(r.header_count() as u8);
    for (k, v) in r.headers() {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&(r.payload().len() as u32).to_le_bytes());
    out.extend_from_slice(r.payload());
}

/// Appends one framed record to `out`. The caller checked [`record_body_len`].
pub fn encode_record(format: &Format, r: &impl AsRecord, appended_ms: i64, out: &mut Vec<u8>) {
    format.push_frame(FrameKind::Record, out, |o| encode_body(r, appended_ms, o));
}

/// A cursor over a frame body; every read is bounds-checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| v as i64)
    }
}

/// Decodes one record body (checksum already verified). Returns the record and its append time.
pub fn decode_record(body: &[u8]) -> Option<(Record, i64)> {
    let mut c = Cursor(body);
    let appended_ms = c.i64()?;
    let topic_len = c.u16()? as usize;
    let topic = std::str::from_utf8(c.take(topic_len)?).ok()?;
    let key_len = c.u32()? as i32;
    let key = if key_len < 0 {
        None
    } else {
        Some(c.take(key_len as usize)?.to_vec())
    };
    let n_headers = c.u8()?;
    let mut headers = Vec::with_capacity(n_headers as usize);
    for _ in 0..n_headers {
        let k_len = c.u8()? as usize;
        let k = std::str::from_utf8(c.take(k_len)?).ok()?;
        let v_len = c.u32()? as usize;
        let v = std::str::from_utf8(c.take(v_len)?).ok()?;
        headers.push((k.to_owned(), v.to_owned()));
    }
    let payload_len = c.u32()? as usize;
    let payload = c.take(payload_len)?.to_vec();
    if !c.0.is_empty() {
        return None;
    }
    let record = Record {
        topic: Arc::from(topic),
        key,
        payload,
        headers,
    };
    Some((record, appended_ms))
}

/// What a quarantine entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A record body Kafka refused ([`decode_record`] reads it).
    Record(Vec<u8>),
    /// Damaged bytes copied from a segment as they were (at most [`MAX_RECORD`] of them).
    Raw(Vec<u8>),
}

/// One quarantine entry: a record or damaged bytes moved out of replay's way, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub quarantined_ms: i64,
    /// Segment and byte offset it came from.
    pub source_seq: u64,
    pub source_offset: u64,
    /// Bytes it took in the segment (for `Raw`, may exceed the copied bytes).
    pub source_len: u64,
    /// Bounded: `corrupt` or the refusal reason (`kafka_rejected:<code>`).
    pub reason: String,
    pub content: Content,
}

/// Appends a quarantine entry's body.
pub fn encode_quarantined(q: &Quarantined, out: &mut Vec<u8>) {
    out.extend_from_slice(&q.quarantined_ms.to_le_bytes());
    out.extend_from_slice(&q.source_seq.to_le_bytes());
    out.extend_from_slice(&q.source_offset.to_le_bytes());
    out.extend_from_slice(&q.source_len.to_le_bytes());
    let reason = &q.reason.as_bytes()[..q.reason.len().min(255)];
    out.push(reason.len() as u8);
    out.extend_from_slice(reason);
    let (tag, bytes) = match &q.content {
        Content::Record(b) => (0u8, b),
        Content::Raw(b) => (1u8, b),
    };
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes a quarantine entry body (checksum already verified).
pub fn decode_quarantined(body: &[u8]) -> Option<Quarantined> {
    let mut c = Cursor(body);
    let quarantined_ms = c.i64()?;
    let source_seq = c.u64()?;
    let source_offset = c.u64()?;
    let source_len = c.u64()?;
    let reason_len = c.u8()? as usize;
    let reason = std::str::from_utf8(c.take(reason_len)?).ok()?.to_owned();
    let tag = c.u8()?;
    let len = c.u32()? as usize;
    let bytes = c.take(len)?.to_vec();
    if !c.0.is_empty() {
        return None;
    }
    let content = match tag {
        0 => {
            decode_record(&bytes)?;
            Content::Record(bytes)
        }
        1 => Content::Raw(bytes),
        _ => return None,
    };
    Some(Quarantined {
        quarantined_ms,
        source_seq,
        source_offset,
        source_len,
        reason,
        content,
    })
}
