//! Other trackers' wire formats, translated into native bundles so their events share every
//! stage of the pipeline (`crate::http::ingest::Translate`): limits, dedup, validation, dead
//! letters, Kafka and the spool. Each protocol shapes its own answer from the `Outcome`.

pub mod segment;
pub mod snowplow;
