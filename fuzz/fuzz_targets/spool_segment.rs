//! A spool segment file as the reader scans it (record framing, checksum, record codec).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| eventpipe::fuzzing::spool_segment(data));
