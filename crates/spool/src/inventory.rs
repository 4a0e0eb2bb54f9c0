//! What the spool held when this process opened it: records a predecessor spooled and did not
//! replay. The gateway's audit counts them as pending in their (old) windows before the
//! replayer starts delivering them, so a restarted gateway reports its predecessor's open books.

use std::path::PathBuf;

use super::format::{decode_record, Format, FrameKind, Item};
use super::segment::read_ack;
use super::{Record, Sealed, Spool};

/// The sealed segments at one instant (at start-up: everything inherited).
pub struct Inventory {
    dir: PathBuf,
    segments: Vec<Sealed>,
}

impl Spool {
    /// The sealed segments now. Taken before the first request, they are exactly what an
    /// earlier process left.
    pub fn inventory(&self) -> Inventory {
        let shared = self.shared();
        let segments = shared
            .sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        Inventory {
            dir: shared.opts.dir.clone(),
            segments,
        }
    }
}

impl Inventory {
    /// Calls `f` with every record not yet replayed (after each segment's checkpoint). Blocking
    /// file reads, one segment in memory at a time; an unreadable segment is skipped.
    pub fn for_each_record(&self, mut f: impl FnMut(Record)) {
        for seg in &self.segments {
            let Ok(bytes) = std::fs::read(&seg.path) else {
                continue;
            };
            let (format, data) = Format::of(&bytes);
            let end = (seg.len as usize).min(bytes.len());
            let pos = (read_ack(&self.dir, seg.seq) as usize).max(data).min(end);
            for item in format.items(&bytes, pos, end) {
                if let Item::Frame(frame) = item {
                    if frame.kind == FrameKind::Record {
                        if let Some((record, _)) = decode_record(frame.body) {
                            f(record);
                        }
                    }
                }
            }
        }
    }
}
