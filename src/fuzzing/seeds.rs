//! The seed corpus of the fuzz targets, made by the real encoders: request bodies (the golden
//! request, the README's, one event per schema example) in every Content-Encoding, the Thrift
//! records the pipeline makes of them, and spool segments the segment encoder writes.
//! `cargo run --example fuzz_seeds` writes them to `fuzz/corpus/<target>/`.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use super::{BodyFuzzer, ENCODINGS};
use crate::http::body::Encoding;
use crate::pipeline::{self, Bundle};
use crate::sink::spool::{encode_record, Format};
use crate::sink::{Record, RecordKind};
use crate::thrift::{self, DeadLetter};

/// One accepted event and one dead letter, as the pipeline would make them (built by hand so
/// that a target can use them without a schema registry).
pub fn sample_records() -> &'static [Record] {
    static RECORDS: OnceLock<Vec<Record>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let event = thrift::Event {
            event_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            schema_name: "page_view".into(),
            schema_major: 1,
            ts: Some("2026-11-21T11:59:58.120Z".into()),
            context: thrift::json::to_thrift(&json!({"visitor_id": "v-123"})),
            data: thrift::json::to_thrift(&json!({"url": "https://example.com/a"})),
            enrichment: enrichment(),
        };
        let letter = DeadLetter {
            reason: "schema_violation".into(),
            path: Some("/data/url".into()),
            message: "\"ftp://x\" does not match \"^https?://\"".into(),
            original: br#"{"schema":"page_view/1","data":{"url":"ftp://x"}}"#.to_vec(),
            truncated: false,
            event_id: None,
            schema: Some("page_view/1".into()),
            index: Some(0),
            http_status: None,
            enrichment: enrichment(),
            request_id: None,
        };
        vec![
            Record {
                topic: Arc::from("events.page_view"),
                key: Some(b"v-123".to_vec()),
                payload: thrift::to_compact_bytes(&event),
                headers: vec![
                    ("schema", "page_view/1".into()),
                    ("event_id", event.event_id.clone()),
                ],
                kind: RecordKind::Event { client_id: None },
            },
            Record {
                topic: Arc::from("dead_letters"),
                key: None,
                payload: thrift::to_compact_bytes(&letter),
                headers: vec![("reason", "schema_violation".into())],
                kind: RecordKind::DeadLetter,
            },
        ]
    })
}

fn enrichment() -> thrift::Enrichment {
    thrift::Enrichment {
        received_at_ms: 1_700_000_000_000,
        client_ip: Some("203.0.113.9".into()),
        user_agent: Some("Mozilla/5.0".into()),
        collector_host: "gw-1".into(),
        collector_version: "0.1.0".into(),
        sent_at: None,
        origin: Some("https://example.com".into()),
    }
}

/// Request bodies (decompressed): the golden request, the README's, and small bundles built
/// from every schema's examples, with some of each rejection reason.
pub fn bodies(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let golden = repo.join("tests/golden/mixed_bundle.request.json");
    out.push((
        "golden".to_string(),
        std::fs::read(golden).expect("golden request"),
    ));
    out.push((
        "readme".to_string(),
        br#"{"context": {"visitor_id": "v-123"}, "events": [{"schema": "page_view/1", "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "data": {"url": "https://example.com/a"}}]}"#.to_vec(),
    ));
    let registry = crate::schema::Registry::load(&repo.join("schemas")).expect("schemas");
    for schema in registry.schemas() {
        let events: Vec<Value> = schema
            .examples()
            .iter()
            .enumerate()
            .map(|(i, data)| {
                // Fixed ids keep the generated seeds the same from one run to the next.
                let id = format!("00000000-0000-4000-8000-{:012}", out.len() * 100 + i);
                json!({"schema": schema.id.to_string(), "event_id": id, "data": data})
            })
            .collect();
        let body = json!({"context": {"session_id": "s-1"}, "events": events});
        let name = schema.id.replace('/', "_v");
        out.push((name, body.to_string().into_bytes()));
    }
    out.push((
        "rejections".to_string(),
        br#"{"sent_at":"x","events":[1,{"schema":"nope/1","event_id":"00000000-0000-4000-8000-000000000001"},{"schema":"click/1","event_id":"12"},{"schema":"click/1","event_id":"00000000-0000-4000-8000-000000000003","data":{"x":"y"}},{"schema":"page_view/1","extra":1},{"event_id":"00000000-0000-4000-8000-000000000005","data":[[[[[[[]]]]]]]}]}"#.to_vec(),
    ));
    out
}

/// The body target's input: the encoding selector, then the body as the client sends it.
pub fn encode_body(selector: u8, body: &[u8]) -> Vec<u8> {
    let encoding = ENCODINGS[usize::from(selector) % ENCODINGS.len()];
    let mut out = vec![selector];
    let io = "writing to a Vec";
    match encoding {
        Encoding::Identity => out.extend_from_slice(body),
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            e.write_all(body).expect(io);
            out = e.finish().expect(io);
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(out, flate2::Compression::default());
            e.write_all(body).expect(io);
            out = e.finish().expect(io);
        }
        Encoding::Zstd => out.extend(zstd::encode_all(body, 3).expect(io)),
        Encoding::Brotli => {
            brotli::BrotliCompress(&mut &body[..], &mut out, &Default::default()).expect(io);
        }
    }
    out
}

/// Writes every target's seeds under `corpus` (`corpus/<target>/<name>`). Returns files written.
pub fn write_corpus(repo: &Path, corpus: &Path) -> std::io::Result<usize> {
    let mut written = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        written += 1;
        Ok(())
    };
    let bodies = bodies(repo);
    let fuzzer = BodyFuzzer::new(&repo.join("schemas"));
    let mut records = sample_records().to_vec();
    for (name, body) in &bodies {
        for (selector, encoding) in ENCODINGS.iter().enumerate() {
            let input = encode_body(selector as u8, body);
            let enc = format!("{encoding:?}").to_lowercase();
            put("body", &format!("{name}.{enc}"), &input)?;
        }
        let bundle = Bundle::parse(body, fuzzer.cfg.limits.max_depth).expect("seed is a bundle");
        let processed =
            pipeline::process(&bundle, &fuzzer.registry, &fuzzer.cfg, &fuzzer.enrichment)
                .expect("a seed bundle fits its output budget");
        for (i, r) in processed.records.iter().enumerate() {
            let kind = match r.kind {
                RecordKind::Event { .. } => "event",
                RecordKind::DeadLetter => "dead_letter",
            };
            put("thrift_tail", &format!("{name}.{i}.{kind}"), &r.payload)?;
        }
        records.extend(processed.records);
    }
    let request_letter = pipeline::dead_letter_for_request(
        "undecodable_body",
        "body is not valid JSON",
        400,
        b"{not json",
        &fuzzer.cfg,
        &fuzzer.enrichment,
        None,
    );
    put(
        "thrift_tail",
        "request.dead_letter",
        &request_letter.payload,
    )?;
    let tokens = thrift::json::to_thrift(&json!({"a": [1, 2.5, u64::MAX, "s", null, true, {}]}));
    put(
        "thrift_tail",
        "json_tokens",
        &thrift::to_compact_bytes(&tokens),
    )?;

    // Segments as the writer makes them (header, records, a commit marker): all records in one
    // file, each record alone, and a torn tail (cut inside the last commit marker).
    let format = Format::fresh();
    let commit = |mut file: Vec<u8>| {
        let at = file.len() as u64;
        format.push_commit(at, &mut file);
        file
    };
    let mut all = format.header().to_vec();
    for (i, r) in records.iter().enumerate() {
        let ms = 1_700_000_000_000 + i as i64;
        let mut one = format.header().to_vec();
        encode_record(&format, r, ms, &mut one);
        if i < 4 || r.kind == RecordKind::DeadLetter && i % 3 == 0 {
            put("spool_segment", &format!("record.{i}"), &commit(one))?;
        }
        encode_record(&format, r, ms, &mut all);
    }
    let all = commit(all);
    put("spool_segment", "all", &all)?;
    let torn = &all[..all.len() - 5];
    put("spool_segment", "torn_tail", torn)?;
    for (selector, name) in [(0u8, "one"), (1, "two"), (2, "three"), (4 | 8, "acked")] {
        let mut input = vec![selector];
        input.extend_from_slice(torn);
        put("spool_recover", name, &input)?;
    }
    Ok(written)
}
