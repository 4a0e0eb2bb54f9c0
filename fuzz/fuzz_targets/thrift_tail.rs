//! A Kafka record value as `eventpipe tail` decodes it (Event, DeadLetter, JSON tokens).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| eventpipe::fuzzing::thrift_tail(data));
