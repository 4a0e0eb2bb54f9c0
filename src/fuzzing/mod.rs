//! Entry points for the cargo-fuzz targets in `fuzz/` (not a stable API).
//!
//! Each function takes arbitrary bytes, runs one decoder that sees outside bytes exactly as the
//! gateway or a CLI tool does, and panics only when an invariant is broken: a panic here is a
//! finding. They live in the library (rather than in `fuzz/`) so that a change of the functions
//! they call breaks the main build, and so that `cargo test --lib fuzzing` replays every
//! committed corpus file on the stable toolchain.
//!
//! | target          | input                                   | decoders                       |
//! |-----------------|-----------------------------------------|--------------------------------|
//! | `body`          | 1 byte Content-Encoding, then the body  | decompress, bundle, pipeline   |
//! | `thrift_tail`   | Kafka record value                      | `tail`'s Event/DeadLetter/Json |
//! | `spool_segment` | segment file bytes                      | segment scan and record codec  |
//! | `spool_recover` | bytes cut into segment + checkpoint files | start-up recovery of a dir   |

pub mod seeds;
#[cfg(test)]
mod tests;

use std::path::Path;

use bytes::Bytes;
use serde_json::Value;

use crate::config::Limits;
use crate::http::body::{decompress, Encoding};
use crate::pipeline::{self, Bundle, PipelineConfig};
use crate::schema::Registry;
// The shared spool crate's own record decoder: the reader's frame check uses it, so "every
// frame the reader accepts as a record decodes" is a property of the crate. (The gateway's
// `sink::spool::decode_record` is stricter: only header names the gateway writes.)
use crate::sink::spool::{encode_record, segment, Format, FrameKind, Item};
use crate::sink::RecordKind;
use crate::thrift::{self, DeadLetter, Enrichment, Event, Json};
use eventpipe_spool::decode_record;

/// The Content-Encodings, in the order the body target's first byte selects them (mod 5).
pub const ENCODINGS: [Encoding; 5] = [
    Encoding::Identity,
    Encoding::Gzip,
    Encoding::Deflate,
    Encoding::Zstd,
    Encoding::Brotli,
];

/// Bytes one record (key + headers + payload) may take per byte of decompressed body, plus
/// `RECORD_SLACK`. Thrift tokens cost at most ~3 bytes per byte of JSON (`[1e0,1e0]`: 4 bytes
/// of text, a 12-byte DOUBLE token each), and a record is built from one event and the batch
/// context, both parts of the body; the slack covers the enrichment and schema-derived messages.
pub const RECORD_BYTES_PER_BODY_BYTE: usize = 4;
pub const RECORD_SLACK: usize = 16 << 10;

/// The request path from decompression to records, set up once per fuzzing process.
pub struct BodyFuzzer {
    registry: Registry,
    cfg: PipelineConfig,
    enrichment: Enrichment,
}

impl BodyFuzzer {
    /// Loads the schema registry from `schemas_dir` (the repo's `schemas/`), default limits.
    pub fn new(schemas_dir: &Path) -> Self {
        let registry = Registry::load(schemas_dir).expect("the repo's schemas load");
        let cfg = PipelineConfig::new(Limits::default(), "events.", "dead_letters", &registry);
        let enrichment = Enrichment {
            received_at_ms: 1_700_000_000_000,
            client_ip: Some("203.0.113.9".into()),
            user_agent: Some("fuzz".into()),
            collector_host: "fuzz-host".into(),
            collector_version: "0".into(),
            sent_at: None,
            origin: None,
        };
        BodyFuzzer {
            registry,
            cfg,
            enrichment,
        }
    }

    /// `data[0] % 5` picks the Content-Encoding, the rest is the body as received.
    pub fn run(&self, data: &[u8]) {
        let Some((&selector, wire)) = data.split_first() else {
            return;
        };
        let encoding = ENCODINGS[usize::from(selector) % ENCODINGS.len()];
        let limits = &self.cfg.limits;
        let Ok(decoded) = decompress(
            Bytes::copy_from_slice(wire),
            encoding,
            limits.max_decompressed_bytes,
        ) else {
            return;
        };
        assert!(decoded.len() <= limits.max_decompressed_bytes);
        let Ok(bundle) = Bundle::parse(&decoded, limits.max_depth) else {
            return;
        };
        if bundle.events.len() > limits.max_events {
            return;
        }
        let mut enrichment = self.enrichment.clone();
        enrichment.sent_at = bundle
            .sent_at
            .as_ref()
            .map(|s| s.chars().take(64).collect());
        // A request over its output budget is refused whole (413): nothing to check.
        let Ok(processed) = pipeline::process(&bundle, &self.registry, &self.cfg, &enrichment)
        else {
            return;
        };
        check_processed(&bundle, &processed, decoded.len(), &self.cfg);
    }
}

/// Every event ends in exactly one outcome and one record, in order; no record outgrows the body
/// or `message.max.bytes`, and the request's records stay within its output budget.
fn check_processed(
    bundle: &Bundle<'_>,
    processed: &pipeline::Processed,
    body_len: usize,
    cfg: &PipelineConfig,
) {
    let limits = &cfg.limits;
    let n = bundle.events.len();
    let total: usize = processed
        .records
        .iter()
        .map(pipeline::bounds::size_of)
        .sum();
    assert_eq!(total, processed.output_bytes);
    // The enrichment (user agent, origin, ids) adds at most a few KiB per event.
    let budget = limits.max_output_ratio * body_len + n * (limits.output_bytes_per_event + 4096);
    assert!(
        total <= budget,
        "{n} events from a {body_len}-byte body produced {total} bytes"
    );
    assert_eq!(processed.accepted + processed.rejected.len(), n);
    assert_eq!(processed.records.len(), n);
    let by_schema: usize = processed.accepted_by_schema.iter().map(|(_, c)| c).sum();
    assert_eq!(by_schema, processed.accepted);
    let mut rejections = processed.rejected.iter().peekable();
    for (index, (record, raw)) in processed.records.iter().zip(&bundle.events).enumerate() {
        let size = pipeline::bounds::size_of(record);
        assert!(size <= cfg.max_record_bytes);
        assert!(
            size <= RECORD_BYTES_PER_BODY_BYTE * body_len + RECORD_SLACK,
            "event {index}: a {size}-byte record from a {body_len}-byte body"
        );
        let rejection = rejections.next_if(|r| r.index == index);
        match (record.kind, rejection) {
            (RecordKind::Event { .. }, None) => {
                // What `tail` shows is what the client sent.
                let shown = crate::ops::tail::event_json(&record.payload)
                    .expect("an accepted event's record decodes");
                let sent: Value = serde_json::from_str(raw.get()).expect("accepted => JSON");
                assert_eq!(shown["data"], sent["data"], "event {index}: data changed");
                if let Some(id) = sent.get("event_id").and_then(Value::as_str) {
                    assert_eq!(shown["event_id"], id);
                }
            }
            (RecordKind::DeadLetter, Some(rejection)) => {
                let dl: DeadLetter = thrift::from_compact_bytes(&record.payload)
                    .expect("a dead letter's record decodes");
                assert_eq!(dl.reason, rejection.reason.as_str());
                // The original is kept, cut to the cap (and to what fits in a record).
                let text = raw.get().as_bytes();
                assert!(dl.original.len() <= limits.dead_letter_max_bytes);
                assert!(
                    text.starts_with(&dl.original),
                    "event {index}: original changed"
                );
                assert_eq!(dl.truncated, text.len() > dl.original.len());
            }
            (kind, rejection) => {
                panic!("event {index}: record {kind:?} but rejection {rejection:?}")
            }
        }
    }
    assert!(rejections.next().is_none(), "rejections out of order");
}

/// The decoders `eventpipe tail` runs on a Kafka record value, plus the JSON token mapping.
/// What decodes must encode back to the same value.
pub fn thrift_tail(data: &[u8]) {
    let _ = crate::ops::tail::event_json(data);
    let _ = crate::ops::tail::dead_letter_json(data);
    if let Ok(event) = thrift::from_compact_bytes::<Event>(data) {
        let again: Event = thrift::from_compact_bytes(&thrift::to_compact_bytes(&event))
            .expect("a re-encoded Event decodes");
        assert_eq!(again, event);
    }
    if let Ok(dl) = thrift::from_compact_bytes::<DeadLetter>(data) {
        let again: DeadLetter = thrift::from_compact_bytes(&thrift::to_compact_bytes(&dl))
            .expect("a re-encoded DeadLetter decodes");
        assert_eq!(again, dl);
    }
    if let Ok(json) = thrift::from_compact_bytes::<Json>(data) {
        if let Ok(value) = thrift::json::from_thrift(&json) {
            let again = thrift::json::from_thrift(&thrift::json::to_thrift(&value))
                .expect("tokens of a value decode");
            assert_eq!(again, value);
        }
    }
}

/// A segment file as the spool reader sees it. Scanning is idempotent on the prefix it keeps;
/// every frame the reader accepts as a record decodes, and re-encodes (in a fresh segment) to a
/// record that decodes the same; a segment the writer made (header, records, commit marker)
/// followed by these bytes keeps every record it committed, whatever follows.
pub fn spool_segment(data: &[u8]) {
    let scanned = segment::scan(data, 0);
    assert!(scanned.valid_len <= data.len() as u64);
    let prefix = &data[..scanned.valid_len as usize];
    let again = segment::scan(prefix, 0);
    assert_eq!(again.valid_len, scanned.valid_len);
    let (format, start) = Format::of(data);
    for item in format.items(data, start.min(data.len()), data.len()) {
        let Item::Frame(frame) = item else { continue };
        if frame.kind != FrameKind::Record {
            continue;
        }
        let (record, ms) = decode_record(frame.body).expect("an accepted record frame decodes");
        let fresh = Format::fresh();
        let mut out = fresh.header().to_vec();
        encode_record(&fresh, &record, ms, &mut out);
        let at = out.len() as u64;
        fresh.push_commit(at, &mut out);
        let (f, s) = Format::of(&out);
        let frames: Vec<_> = f
            .items(&out, s, out.len())
            .filter_map(|i| match i {
                Item::Frame(fr) if fr.kind == FrameKind::Record => decode_record(fr.body),
                _ => None,
            })
            .collect();
        assert_eq!(frames, vec![(record, ms)]);
        assert_eq!(segment::scan(&out, 0).records, 1);
    }
    // The same bytes after the last commit of a segment the writer made: a torn tail at worst.
    let fresh = Format::fresh();
    let mut file = fresh.header().to_vec();
    let written = seeds::sample_records();
    for (i, r) in written.iter().enumerate() {
        encode_record(&fresh, r, i as i64, &mut file);
    }
    let at = file.len() as u64;
    fresh.push_commit(at, &mut file);
    let committed_len = file.len() as u64;
    file.extend_from_slice(data);
    let scanned = segment::scan(&file, 0);
    assert!(scanned.records >= written.len() as u64);
    assert!(scanned.valid_len >= committed_len);
}

/// Start-up recovery of a spool directory holding these bytes: `data[0]` picks how many
/// segment files (1..=3) the rest is cut into and whether the first has a checkpoint. Recovery
/// never fails on file contents, keeps only whole records, and a second recovery finds the
/// same records (the first left nothing to cut).
pub fn spool_recover(data: &[u8], dir: &Path) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let files = 1 + usize::from(selector & 3) % 3;
    let chunk = rest.len() / files + 1;
    for (i, bytes) in rest.chunks(chunk).enumerate() {
        std::fs::write(segment::segment_path(dir, i as u64 + 1), bytes).expect("write segment");
    }
    if selector & 4 != 0 {
        let ack = u64::from(selector >> 3) * 16;
        segment::write_ack(dir, 1, ack).expect("write checkpoint");
    }
    let first = segment::recover_dir(dir, &crate::sink::spool::METRIC_NAMES)
        .expect("recovery does not fail on file contents");
    let lens: Vec<u64> = first.segments.iter().map(|s| s.len).collect();
    for s in &first.segments {
        let bytes = std::fs::read(&s.path).expect("a listed segment exists");
        assert_eq!(bytes.len() as u64, s.len, "{}", s.path.display());
        assert_eq!(segment::scan(&bytes, 0).valid_len, s.len);
    }
    let records = first.records;
    drop(first);
    let second =
        segment::recover_dir(dir, &crate::sink::spool::METRIC_NAMES).expect("second recovery");
    assert_eq!(second.records, records);
    assert_eq!(
        second.segments.iter().map(|s| s.len).collect::<Vec<_>>(),
        lens
    );
}
