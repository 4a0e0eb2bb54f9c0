//! eventpipe: a beacon ingestion gateway. HTTP(S) bundles of JSON events are validated against
//! versioned JSON Schemas, enriched, encoded as Thrift and produced to Kafka; invalid input goes
//! to a dead-letter topic. A client gets 200 only when Kafka acknowledged its events.
//!
//! Where things are: `http` (routes, body limits, errors), `pipeline` (envelope -> valid event ->
//! record), `schema` (registry), `thrift` (generated code, JSON mapping), `sink` (Kafka and
//! in-memory), `server` (listeners, TLS, shutdown), `admin` (metrics and health), `ops` (CLI
//! tools: topics, tail), `config`.

pub mod admin;
pub mod audit;
pub mod config;
pub mod dedup;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod pipeline;
pub mod protocol;
pub mod schema;
pub mod server;
pub mod sink;
pub mod thrift;
pub mod tls;

/// True at most once per `interval` across threads: the caller that moves `last` (wall-clock ms of
/// the previous true) wins. For log lines repeated during an outage and for the breaker's probes.
pub fn at_most_every(last: &std::sync::atomic::AtomicI64, interval: std::time::Duration) -> bool {
    use std::sync::atomic::Ordering;
    let now = now_ms();
    let prev = last.load(Ordering::Relaxed);
    now - prev >= interval.as_millis() as i64
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Wall-clock milliseconds since the Unix epoch (receive times, spool record ages, rate limits).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-11-21T11:59:58.120Z`.
pub fn rfc3339_ms(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}
