//! Segment files: paths, checkpoints, the torn-tail scan, and start-up recovery of a directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::{decode_record, Format, FrameKind, Item, SEGMENT_HEADER};
use super::Sealed;

/// What a scan of a segment found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Where the file must be cut: the end of its last frame, unless damage past the last
    /// commit marker (a torn tail) comes first. Everything before it is kept.
    pub valid_len: u64,
    /// Valid records at or after the scan start.
    pub records: u64,
    /// Append time of the first valid record at or after the scan start.
    pub first_ms: Option<i64>,
    /// Damaged byte ranges before `valid_len` (at or after the scan start): corrupt middles,
    /// for the replayer to quarantine.
    pub corrupt: Vec<(u64, u64)>,
}

/// Scans a whole segment file (`bytes`) and reports what it holds from `start` on; the cut point
/// depends on the whole file (where its last commit marker is), not on `start`.
pub fn scan(bytes: &[u8], start: usize) -> ScanResult {
    let (format, data) = Format::of(bytes);
    let items: Vec<Item> = format.items(bytes, data, bytes.len()).collect();
    // Only bytes past the last fsynced commit may be a torn tail. Legacy segments have no
    // markers: for them every damaged byte ends the valid prefix, as before.
    let committed = items
        .iter()
        .rev()
        .find_map(|i| match i {
            Item::Frame(f) if f.kind == FrameKind::Commit => Some(f.end),
            _ => None,
        })
        .unwrap_or(data);
    let mut result = ScanResult {
        valid_len: data.min(bytes.len()) as u64,
        ..Default::default()
    };
    for item in items {
        match item {
            Item::Frame(f) => {
                if f.start >= start && f.kind == FrameKind::Record {
                    if result.first_ms.is_none() {
                        result.first_ms = decode_record(f.body).map(|(_, ms)| ms);
                    }
                    result.records += 1;
                }
                result.valid_len = f.end as u64;
            }
            Item::Bad { start: from, .. } if from >= committed => break,
            Item::Bad { start: from, end } => {
                if from >= start {
                    result.corrupt.push((from as u64, end as u64));
                }
                result.valid_len = end as u64;
            }
        }
    }
    result
}

/// Moves a file nothing can be read from into the quarantine directory, whole, as
/// `<name>.unreadable` (never listed or replayed, never deleted): an operator decides. A crash
/// during a segment's very first write leaves such a file too (then nothing in it was
/// acknowledged); a damaged header leaves one holding acknowledged records. The caller counts
/// the `len` bytes as corrupt.
pub fn set_aside(path: &Path, len: usize, qdir: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(qdir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = qdir.join(format!("{name}.{}.unreadable", super::now_ms()));
    std::fs::rename(path, &target)?;
    fsync_dir(qdir)?;
    fsync_dir(dir)?;
    tracing::error!(
        file = %path.display(),
        moved_to = %target.display(),
        bytes = len,
        "spool: no valid frame in this file (damaged header, or a crash during its first write); \
         kept whole, aside, for an operator"
    );
    Ok(())
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
/// the rest oldest first. [`crate::Spool::open`] starts with this; it is public for tools and
/// fuzzing.
pub fn recover_dir(dir: &Path, names: &crate::MetricNames) -> std::io::Result<Recovered> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    // `eventpipe spool inspect` probes the lock with a shared flock for an instant: a start-up
    // that meets the probe tries again for up to 2 s before calling the directory taken.
    let mut tries = 0;
    let locked = loop {
        match lock.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => break other,
        }
    };
    locked.map_err(|e| {
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
        let (format, _) = Format::of(&bytes);
        let header = if format.is_legacy() {
            0
        } else {
            SEGMENT_HEADER
        };
        if bytes.len() > header && whole.valid_len as usize <= header {
            // Not one valid frame: a damaged header (magic or nonce) makes every frame look
            // bad, and cutting would delete acknowledged records. Keep the file whole, aside.
            drop(file);
            set_aside(&path, bytes.len(), &super::quarantine::quarantine_dir(dir))?;
            metrics::counter!(names.corrupt_bytes).increment(bytes.len() as u64);
            let _ = std::fs::remove_file(ack_path(dir, seq));
            continue;
        }
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
        let rest = scan(&bytes, acked as usize);
        if acked >= whole.valid_len || (rest.records == 0 && rest.corrupt.is_empty()) {
            // Empty, or every record acknowledged before the crash: nothing to replay.
            std::fs::remove_file(&path)?;
            let _ = std::fs::remove_file(ack_path(dir, seq));
            continue;
        }
        for (from, to) in &rest.corrupt {
            tracing::error!(
                segment = %path.display(),
                offset = from,
                bytes = to - from,
                "spool: damaged bytes in the middle of a segment; the records around them are \
                 kept, the damaged bytes will be quarantined by replay"
            );
        }
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
