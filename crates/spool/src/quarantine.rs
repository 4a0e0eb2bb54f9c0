//! The quarantine: records Kafka refused for good and damaged segment bytes, moved out of
//! replay's way into `DIR/quarantine/<seq>.seg` (same file format as a segment; see the module
//! doc of `spool`). Written only by the replayer, read by `eventpipe spool quarantine`.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::format::{decode_quarantined, encode_quarantined, Format, FrameKind, Item, Quarantined};
use super::segment::{fsync_dir, scan};

pub fn quarantine_dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join("quarantine")
}

pub fn quarantine_path(spool_dir: &Path, seq: u64) -> PathBuf {
    quarantine_dir(spool_dir).join(format!("{seq:020}.seg"))
}

/// Appends entries taken from segment `seq` to its quarantine file and fsyncs them (with a
/// commit marker, in one write). Returns the bytes added to the disk.
pub fn append(spool_dir: &Path, seq: u64, entries: &[Quarantined]) -> std::io::Result<u64> {
    append_counted(spool_dir, seq, entries, None)
}

/// [`append`], counting the bytes of a damaged quarantine file it sets aside under `corrupt`.
pub(crate) fn append_counted(
    spool_dir: &Path,
    seq: u64,
    entries: &[Quarantined],
    corrupt: Option<&'static str>,
) -> std::io::Result<u64> {
    let qdir = quarantine_dir(spool_dir);
    if !qdir.exists() {
        std::fs::create_dir_all(&qdir)?;
        fsync_dir(spool_dir)?;
    }
    let path = quarantine_path(spool_dir, seq);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let mut existing = Vec::new();
    file.read_to_end(&mut existing)?;
    let (mut format, data) = Format::of(&existing);
    if format.is_legacy() && !existing.is_empty() {
        // A quarantine file whose header is damaged: never truncate the only copy of what it
        // holds. Set it aside whole and start a new file.
        drop(file);
        super::segment::set_aside(&path, existing.len(), &qdir)?;
        if let Some(name) = corrupt {
            metrics::counter!(name).increment(existing.len() as u64);
        }
        existing.clear();
        file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
    }
    let mut out = Vec::new();
    let base = if format.is_legacy() || existing.len() < data {
        // New file, or one whose header never made it to disk: start it over.
        format = Format::fresh();
        out.extend_from_slice(&format.header());
        0
    } else {
        // A crash during an earlier append may have left a torn tail: cut it first.
        scan(&existing, 0).valid_len
    };
    if base < existing.len() as u64 {
        file.set_len(base)?;
    }
    for q in entries {
        format.push_frame(FrameKind::Quarantined, &mut out, |o| {
            encode_quarantined(q, o)
        });
    }
    format.push_commit(base + out.len() as u64, &mut out);
    file.seek(SeekFrom::Start(base))?;
    file.write_all(&out)?;
    file.sync_data()?;
    if existing.is_empty() {
        fsync_dir(&qdir)?;
    }
    Ok(out.len() as u64)
}

/// One entry as listed: the file it is in and its offset there.
#[derive(Debug, Clone)]
pub struct Listed {
    pub file: PathBuf,
    pub offset: u64,
    pub entry: Quarantined,
}

/// Every entry of every quarantine file under `spool_dir`, oldest file first. Read-only: safe
/// while a gateway runs (files are append-only; a half-written entry at the end is skipped).
pub fn list(spool_dir: &Path) -> std::io::Result<Vec<Listed>> {
    let qdir = quarantine_dir(spool_dir);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&qdir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file)?;
        let (format, data) = Format::of(&bytes);
        for item in format.items(&bytes, data, bytes.len()) {
            if let Item::Frame(f) = item {
                if f.kind != FrameKind::Quarantined {
                    continue;
                }
                if let Some(entry) = decode_quarantined(f.body) {
                    out.push(Listed {
                        file: file.clone(),
                        offset: f.start as u64,
                        entry,
                    });
                }
            }
        }
    }
    Ok(out)
}
