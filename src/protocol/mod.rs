//! Other trackers' wire formats, translated into native bundles at the ingest seam
//! (`http::ingest::Translate`), so their events share every stage of `POST /v1/events`.

pub mod snowplow;
