//! A request body: first byte picks the Content-Encoding, the rest is the body on the wire;
//! decompression, bundle envelope, every event through the pipeline (see `eventpipe::fuzzing`).
#![no_main]

use std::sync::LazyLock;

use eventpipe::fuzzing::BodyFuzzer;
use libfuzzer_sys::fuzz_target;

static FUZZER: LazyLock<BodyFuzzer> = LazyLock::new(|| {
    BodyFuzzer::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../schemas"
    )))
});

fuzz_target!(|data: &[u8]| FUZZER.run(data));
