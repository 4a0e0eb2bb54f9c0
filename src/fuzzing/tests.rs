//! Replays the committed fuzz corpus (seeds and reproducers of past findings) through the fuzz
//! entry points on the stable toolchain, so a regression fails `cargo test`, not only a fuzz run.

use std::path::{Path, PathBuf};

use super::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file of `fuzz/corpus/<target>/` (at least one: an empty corpus would pass vacuously).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repo().join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read corpus file");
            (p, bytes)
        })
        .collect()
}

fn each(target: &str, run: impl Fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bytes)));
        assert!(result.is_ok(), "{} broke an invariant", path.display());
    }
}

#[test]
fn body_corpus_keeps_the_pipeline_invariants() {
    let fuzzer = BodyFuzzer::new(&repo().join("schemas"));
    each("body", |data| fuzzer.run(data));
}

#[test]
fn thrift_tail_corpus_decodes_and_round_trips() {
    each("thrift_tail", thrift_tail);
}

#[test]
fn spool_segment_corpus_keeps_the_scan_invariants() {
    each("spool_segment", spool_segment);
}

#[test]
fn spool_recover_corpus_recovers() {
    each("spool_recover", |data| {
        let dir = tempfile::tempdir().expect("tempdir");
        spool_recover(data, dir.path());
    });
}

/// The generator makes seeds for every target, and each body seed decompresses with the
/// encoding its first byte selects (else the body seeds would only exercise error paths).
#[test]
fn seed_generator_covers_every_target_and_encoding() {
    let out = tempfile::tempdir().expect("tempdir");
    let written = seeds::write_corpus(&repo(), out.path()).expect("write seeds");
    assert!(written > 0);
    for target in ["body", "thrift_tail", "spool_segment", "spool_recover"] {
        let dir: &Path = &out.path().join(target);
        assert!(
            std::fs::read_dir(dir).expect(target).count() > 0,
            "{target}"
        );
    }
    let fuzzer = BodyFuzzer::new(&repo().join("schemas"));
    for (selector, _) in ENCODINGS.iter().enumerate() {
        let input = seeds::encode_body(selector as u8, b"{\"events\":[]}");
        let decoded = decompress(
            Bytes::copy_from_slice(&input[1..]),
            ENCODINGS[selector],
            100,
        )
        .expect("a seed decompresses with its own encoding");
        assert_eq!(&decoded[..], b"{\"events\":[]}");
        fuzzer.run(&input);
    }
}
