//! `eventpipe spool inspect`: what a spool holds, without changing it.
//!
//! Read-only by construction: files are opened for reading only, torn tails are reported (never
//! cut), nothing is set aside or created. The spool's `LOCK` is only probed: a shared `flock` is
//! tried and released at once, so a directory a live gateway (or a drain) holds is reported as
//! live and its figures as a snapshot that changes while it is read (a segment may be replayed
//! and deleted meanwhile; the active segment's last group may still be in flight). A gateway
//! starting in the very instant of the probe retries its lock for up to 2 s (`recover_dir`).
//!
//! Segments are read with the spool's own reader ([`scan`], [`Format::items`],
//! [`decode_record`]) and checkpoints with its own [`read_ack`], so "pending" means exactly what
//! the replayer would still send.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::quarantine::rfc3339;
use crate::sink::spool::segment::read_ack;
use crate::sink::spool::{decode_record, quarantine, scan, Content, Format, FrameKind, Item};

/// Whether a live process holds the spool's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    /// Held (exclusively) by a gateway or a drain: the figures are a snapshot.
    Live,
    /// Not held: no process owns the spool.
    Free,
    /// No `LOCK` file: no gateway ever opened this directory.
    NoLockFile,
}

/// One segment file.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub name: String,
    /// File size.
    pub bytes: u64,
    /// Valid records in the whole file.
    pub records: u64,
    /// Records past the checkpoint: what replay still has to send.
    pub pending_records: u64,
    pub pending_bytes: u64,
    /// The replay checkpoint (byte offset), None without a `.ack` file (replay starts at 0).
    pub checkpoint: Option<u64>,
    /// Append time of the oldest pending record (RFC 3339).
    pub oldest_pending: serde_json::Value,
    /// Bytes past the last valid frame, which the next gateway or drain start-up cuts (a crash
    /// left them; on a live spool, the group being written).
    pub torn_tail_bytes: u64,
    /// Damaged bytes before the end, which replay will quarantine.
    pub corrupt_bytes: u64,
}

/// A file nothing can be read from.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub file: String,
    pub bytes: u64,
    pub why: String,
}

/// What `DIR/quarantine` holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QuarantineSummary {
    pub entries: u64,
    /// Refused records that `spool quarantine --replay` can re-send.
    pub records: u64,
    /// Damaged byte ranges.
    pub corrupt: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub files: u64,
    pub bytes: u64,
}

/// Everything `inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dir: String,
    pub lock: LockState,
    pub segments: Vec<Segment>,
    pub pending_records: u64,
    pub pending_bytes: u64,
    pub oldest_pending: serde_json::Value,
    /// Age of the oldest pending record, seconds.
    pub oldest_age_secs: Option<f64>,
    /// Pending records per topic.
    pub topics: BTreeMap<String, u64>,
    pub quarantine: QuarantineSummary,
    pub unreadable: Vec<Unreadable>,
    /// Files that are not part of a spool.
    pub other_files: Vec<String>,
}

/// Probes the lock without keeping it: a shared `flock`, released at once (a gateway or drain
/// starting in that instant retries its exclusive lock for up to 2 s).
fn lock_state(dir: &Path) -> LockState {
    let Ok(file) = std::fs::File::open(dir.join("LOCK")) else {
        return LockState::NoLockFile;
    };
    match file.try_lock_shared() {
        Ok(()) => LockState::Free, // released when `file` closes, now
        Err(_) => LockState::Live,
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Reads one segment: its figures, and its pending records' topics and append times.
fn segment(
    dir: &Path,
    seq: u64,
    name: &str,
    bytes: &[u8],
    report: &mut Report,
) -> (Segment, Option<i64>) {
    let (format, data) = Format::of(bytes);
    let whole = scan(bytes, 0);
    let ack = std::fs::metadata(dir.join(format!("{seq:020}.ack")))
        .is_ok()
        .then(|| read_ack(dir, seq));
    let valid = whole.valid_len as usize;
    let start = (ack.unwrap_or(0) as usize).max(data).min(valid);
    let mut seg = Segment {
        name: name.to_owned(),
        bytes: bytes.len() as u64,
        records: whole.records,
        pending_records: 0,
        pending_bytes: (valid - start) as u64,
        checkpoint: ack,
        oldest_pending: serde_json::Value::Null,
        torn_tail_bytes: (bytes.len() - valid) as u64,
        corrupt_bytes: 0,
    };
    let mut oldest: Option<i64> = None;
    for item in format.items(bytes, start, valid) {
        match item {
            Item::Frame(f) if f.kind == FrameKind::Record => {
                if let Some((record, ms)) = decode_record(f.body) {
                    seg.pending_records += 1;
                    *report.topics.entry(record.topic.to_string()).or_insert(0) += 1;
                    oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
                }
            }
            Item::Frame(_) => {}
            Item::Bad { start, end } => seg.corrupt_bytes += (end - start) as u64,
        }
    }
    if let Some(ms) = oldest {
        seg.oldest_pending = rfc3339(ms);
    }
    (seg, oldest)
}

/// Inspects the spool at `dir`. Errors: the directory is missing or cannot be listed.
pub fn inspect(dir: &Path) -> anyhow::Result<Report> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("{shown} is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("spool directory {shown} does not exist")
        }
        Err(e) => anyhow::bail!("cannot read spool directory {shown}: {e}"),
    }
    let mut report = Report {
        dir: shown.clone(),
        lock: lock_state(dir),
        segments: Vec::new(),
        pending_records: 0,
        pending_bytes: 0,
        oldest_pending: serde_json::Value::Null,
        oldest_age_secs: None,
        topics: BTreeMap::new(),
        quarantine: QuarantineSummary::default(),
        unreadable: Vec::new(),
        other_files: Vec::new(),
    };
    let mut seqs: Vec<(u64, String)> = Vec::new();
    let names = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list spool directory {shown}: {e}"))?;
    for entry in names.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let seq = |suffix: &str| {
            name.strip_suffix(suffix)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
        };
        if let Some(seq) = seq(".seg") {
            seqs.push((seq, name));
        } else if seq(".ack").is_some()
            || name.ends_with(".ack.tmp")
            || name == "LOCK"
            || name == "quarantine"
        {
        } else {
            report.other_files.push(name);
        }
    }
    seqs.sort();
    let mut oldest_ms: Option<i64> = None;
    for (seq, name) in seqs {
        let path = dir.join(&name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Replayed and deleted by the live owner while we listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.unreadable.push(Unreadable {
                    file: name,
                    bytes: file_len(&path),
                    why: format!("cannot be read: {e}"),
                });
                continue;
            }
        };
        let (_, data) = Format::of(&bytes);
        if bytes.len() > data && scan(&bytes, 0).valid_len as usize <= data {
            report.unreadable.push(Unreadable {
                file: name,
                bytes: bytes.len() as u64,
                why: "no valid frame (a damaged header, or a crash during its first write): \
                      the next gateway or drain start-up sets it aside in quarantine/"
                    .into(),
            });
            continue;
        }
        let (seg, oldest) = segment(dir, seq, &name, &bytes, &mut report);
        report.pending_records += seg.pending_records;
        report.pending_bytes += seg.pending_bytes;
        if let Some(ms) = oldest {
            oldest_ms = Some(oldest_ms.map_or(ms, |o| o.min(ms)));
        }
        report.segments.push(seg);
    }
    if let Some(ms) = oldest_ms {
        report.oldest_pending = rfc3339(ms);
        report.oldest_age_secs = Some((crate::now_ms() - ms).max(0) as f64 / 1000.0);
    }
    quarantined(dir, &mut report);
    Ok(report)
}

/// Fills in the quarantine's figures and its set-aside (`*.unreadable`) files.
fn quarantined(dir: &Path, report: &mut Report) {
    let qdir = quarantine::quarantine_dir(dir);
    let Ok(entries) = std::fs::read_dir(&qdir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if name.ends_with(".unreadable") {
            report.unreadable.push(Unreadable {
                file: format!("quarantine/{name}"),
                bytes: len,
                why: "set aside whole by a start-up (no valid frame): for an operator".into(),
            });
        } else if name.ends_with(".seg") {
            report.quarantine.files += 1;
            report.quarantine.bytes += len;
        }
    }
    match quarantine::list(dir) {
        Ok(listed) => {
            let q = &mut report.quarantine;
            for l in listed {
                q.entries += 1;
                match l.entry.content {
                    Content::Record(_) => q.records += 1,
                    Content::Raw(_) => q.corrupt += 1,
                }
                *q.by_reason.entry(l.entry.reason).or_insert(0) += 1;
            }
        }
        Err(e) => report.unreadable.push(Unreadable {
            file: "quarantine/".into(),
            bytes: 0,
            why: format!("cannot be read: {e}"),
        }),
    }
}

/// Prints the report as a text table or one JSON object.
pub fn print(dir: &Path, as_json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let r = inspect(dir)?;
    if as_json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        return Ok(());
    }
    let lock = match r.lock {
        LockState::Live => "locked by a live process (gateway or drain): a snapshot, it changes",
        LockState::Free => "not locked: no process owns it",
        LockState::NoLockFile => "no LOCK file: no gateway has opened it",
    };
    writeln!(out, "spool {} ({lock})", r.dir)?;
    if !r.segments.is_empty() {
        writeln!(
            out,
            "{:<26} {:>12} {:>9} {:>9} {:>12} {:>12}  oldest pending",
            "segment", "bytes", "records", "pending", "pending_b", "checkpoint"
        )?;
        for s in &r.segments {
            let mut notes = String::new();
            if s.torn_tail_bytes > 0 {
                notes.push_str(&format!("  torn tail {} B", s.torn_tail_bytes));
            }
            if s.corrupt_bytes > 0 {
                notes.push_str(&format!("  corrupt {} B", s.corrupt_bytes));
            }
            writeln!(
                out,
                "{:<26} {:>12} {:>9} {:>9} {:>12} {:>12}  {}{notes}",
                s.name,
                s.bytes,
                s.records,
                s.pending_records,
                s.pending_bytes,
                s.checkpoint.map_or("-".into(), |c| c.to_string()),
                s.oldest_pending.as_str().unwrap_or("-"),
            )?;
        }
    }
    let age = r
        .oldest_age_secs
        .map_or(String::new(), |a| format!(", oldest {a:.0}s old"));
    writeln!(
        out,
        "pending: {} records, {} bytes in {} segments{age}",
        r.pending_records,
        r.pending_bytes,
        r.segments.len()
    )?;
    for (topic, n) in &r.topics {
        writeln!(out, "  topic {topic}: {n}")?;
    }
    let q = &r.quarantine;
    let reasons: Vec<String> = q
        .by_reason
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    writeln!(
        out,
        "quarantined: {} entries ({} records, {} corrupt ranges) in {} files{}",
        q.entries,
        q.records,
        q.corrupt,
        q.files,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" - {}", reasons.join(", "))
        }
    )?;
    for u in &r.unreadable {
        writeln!(out, "unreadable: {} ({} bytes): {}", u.file, u.bytes, u.why)?;
    }
    if !r.other_files.is_empty() {
        writeln!(out, "not spool files: {}", r.other_files.join(", "))?;
    }
    Ok(())
}
