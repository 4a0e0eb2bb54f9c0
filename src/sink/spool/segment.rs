//! Segment files: the record codec, the torn-tail scan, and start-up recovery of a directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Sealed;
use crate::sink::{static_header_key, Record, RecordKind};

/// Records larger than this are treated as corruption.
pub const MAX_RECORD: u32 = 16 << 20;
const HEADER: usize = 8;

/// Appends one framed record to `out`.
pub fn encode_record(r: &Record, appended_ms: i64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.extend_from_slice(&appended_ms.to_le_bytes());
    let topic = r.topic.as_bytes();
    out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    out.extend_from_slice(topic);
    match &r.key {
        Some(k) => {
            out.extend_from_slice(&(k.len() as i32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    out.push(r.headers.len() as u8);
    for (k, v) in &r.headers {
        out.push(k.len() as u8);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&r.payload);
    let body_len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A cursor over a record body; every read is bounds-checked.
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
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
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
        // Only keys the gateway writes can be here; anything else means a bug, not data.
        headers.push((static_header_key(k)?, v.to_owned()));
    }
    let payload_len = c.u32()? as usize;
    let payload = c.take(payload_len)?.to_vec();
    if !c.0.is_empty() {
        return None;
    }
    let kind = if headers.iter().any(|(k, _)| *k == "reason") {
        RecordKind::DeadLetter
    } else {
        RecordKind::Event { client_id: None }
    };
    let record = Record {
        topic: Arc::from(topic),
        key,
        payload,
        headers,
        kind,
    };
    Some((record, appended_ms))
}

/// What a scan of a segment found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Length of the valid prefix: every record before it is complete and checksummed.
    pub valid_len: u64,
    pub records: u64,
    /// Append time of the first valid record at or after the scan start.
    pub first_ms: Option<i64>,
}

/// Reads one framed record from `buf` at `pos`. `None` means torn or corrupt at `pos`.
pub fn frame_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let header = buf.get(pos..pos + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return None;
    }
    let body = buf.get(pos + HEADER..pos + HEADER + len as usize)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    decode_record(body)?;
    Some((body, pos + HEADER + len as usize))
}

/// Scans `bytes` from `start` and reports the valid prefix.
pub fn scan(bytes: &[u8], start: usize) -> ScanResult {
    let mut result = ScanResult {
        valid_len: start as u64,
        ..Default::default()
    };
    let mut pos = start;
    while let Some((body, next)) = frame_at(bytes, pos) {
        if result.first_ms.is_none() {
            result.first_ms = decode_record(body).map(|(_, ms)| ms);
        }
        result.records += 1;
        pos = next;
        result.valid_len = pos as u64;
    }
    result
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

pub fn ack_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.ack"))
}

/// Reads a replay checkpoint; a missing or unreadable one means "from the start".
pub fn read_ack(dir: &Path, seq: u64) -> u64 {
    std::fs::read_to_string(ack_path(dir, seq))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes a replay checkpoint by write-then-rename. Not fsynced on purpose: losing it only
/// replays acknowledged records again (duplicates), it can never skip unacknowledged ones,
/// because the checkpoint only ever moves forward past acknowledged records.
pub fn write_ack(dir: &Path, seq: u64, offset: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{seq:020}.ack.tmp"));
    std::fs::write(&tmp, offset.to_string())?;
    std::fs::rename(tmp, ack_path(dir, seq))
}

pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The result of recovering a spool directory at start-up.
pub struct Recovered {
    pub segments: Vec<Sealed>,
    pub records: u64,
    pub lock: File,
}

/// Locks the directory, cuts torn tails, drops empty or fully acknowledged segments, and lists
/// the rest oldest first.
pub fn recover_dir(dir: &Path) -> std::io::Result<Recovered> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    lock.try_lock().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "spool directory {} is locked by another process: {e}",
                dir.display()
            ),
        )
    })?;
    let mut seqs: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        } else if name.ends_with(".ack.tmp") {
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
    seqs.sort_unstable();
    let mut segments = Vec::new();
    let mut records = 0;
    for seq in seqs {
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        let whole = scan(&bytes, 0);
        if whole.valid_len < bytes.len() as u64 {
            tracing::warn!(
                segment = %path.display(),
                cut_bytes = bytes.len() as u64 - whole.valid_len,
                "spool: cutting torn tail left by a crash"
            );
            file.set_len(whole.valid_len)?;
            file.sync_all()?;
        }
        let acked = read_ack(dir, seq).min(whole.valid_len);
        if acked >= whole.valid_len {
            // Empty, or every record acknowledged before the crash: nothing to replay.
            std::fs::remove_file(&path)?;
            let _ = std::fs::remove_file(ack_path(dir, seq));
            continue;
        }
        let rest = scan(&bytes, acked as usize);
        records += rest.records;
        segments.push(Sealed {
            seq,
            path,
            len: whole.valid_len,
            first_ms: rest.first_ms.unwrap_or_else(super::now_ms),
        });
    }
    // Checkpoints whose segment is gone are leftovers of a crash between the two deletes.
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(seq) = name
            .strip_suffix(".ack")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if !segments.iter().any(|s| s.seq == seq) {
                let _ = std::fs::remove_file(dir.join(&name));
            }
        }
    }
    fsync_dir(dir)?;
    Ok(Recovered {
        segments,
        records,
        lock,
    })
}
