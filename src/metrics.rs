//! Metric names and the Prometheus recorder. Names follow `eventpipe_<noun>_<unit>_total` for
//! counters and `_seconds` for histograms; labels are bounded (never ids or addresses). The hot
//! path counts per request or per batch, never per event.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by `status` (the numeric code).
pub const HTTP_REQUESTS: &str = "eventpipe_http_requests_total";
/// Events by `outcome` (`kafka`, `spool`, `deduplicated`, `rejected`, `refused`, `failed`) and
/// `reason` (`rejected` includes `kafka_rejected:<code>` for records Kafka refused for good;
/// `failed`/`dead_letter_refused`: neither the event nor its dead letter could be stored).
pub const EVENTS: &str = "eventpipe_events_total";
/// Answers of another protocol's routes (`crate::protocol`) by `protocol` (`segment`, ...) and
/// `status`: which wire formats a gateway serves, and how they fare.
pub const PROTOCOL_REQUESTS: &str = "eventpipe_protocol_requests_total";
/// Whole requests refused before their events were read, by `reason`.
pub const REQUESTS_REFUSED: &str = "eventpipe_requests_refused_total";
/// Dead letters that could not be written, by `reason` of the write failure (a sink error, or
/// `kafka_rejected:<code>` when Kafka refused the dead letter itself).
pub const DEAD_LETTER_FAILURES: &str = "eventpipe_dead_letter_failures_total";
/// Time from handing a request's records to the producer until all are acknowledged.
pub const PRODUCE_LATENCY: &str = "eventpipe_produce_latency_seconds";
/// Bytes received on the wire / after decompression.
pub const BODY_BYTES: &str = "eventpipe_request_body_bytes_total";
pub const DECOMPRESSED_BYTES: &str = "eventpipe_request_decompressed_bytes_total";
/// Messages and bytes waiting in the producer (librdkafka `msg_cnt`, `msg_size`).
pub const PRODUCER_QUEUE_MESSAGES: &str = "eventpipe_producer_queue_messages";
pub const PRODUCER_QUEUE_BYTES: &str = "eventpipe_producer_queue_bytes";
/// librdkafka totals: messages transmitted to brokers, and their bytes.
pub const PRODUCER_TX_MESSAGES: &str = "eventpipe_producer_tx_messages";
pub const PRODUCER_TX_BYTES: &str = "eventpipe_producer_tx_bytes";
/// Per-broker average round-trip time from librdkafka stats, labelled by `broker` (bounded: the
/// configured cluster).
pub const BROKER_RTT: &str = "eventpipe_broker_rtt_seconds";
/// Brokers librdkafka currently reports in state UP.
pub const BROKERS_UP: &str = "eventpipe_brokers_up";
/// Unix time (seconds) when this gateway process started serving: `eventpipe rollout` tells a
/// restarted process from the one before by it.
pub const START_TIME: &str = "eventpipe_start_time_seconds";
/// Schemas loaded at start-up.
pub const SCHEMAS_LOADED: &str = "eventpipe_schemas_loaded";

/// Installs the global recorder once per process and returns its handle (tests start several
/// gateways in one process; they share it).
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(PRODUCE_LATENCY.into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(CLIENT_CLOCK_SKEW.into()),
                    &[
                        0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
                        86400.0, 604800.0,
                    ],
                )
                .expect("bucket list is not empty")
                .set_buckets_for_metric(
                    Matcher::Full(DELIVERY_LATENCY.into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        300.0, 900.0, 3600.0, 21600.0, 86400.0,
                    ],
                )
                .expect("bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (embedding application): keep ours unattached.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Producers replaced after a fatal librdkafka error.
pub const PRODUCER_REPLACED: &str = "eventpipe_producer_replaced_total";
/// Spool: bytes on disk, records waiting, age of the oldest record.
pub const SPOOL_BYTES: &str = "eventpipe_spool_bytes";
pub const SPOOL_RECORDS: &str = "eventpipe_spool_records";
pub const SPOOL_OLDEST_AGE: &str = "eventpipe_spool_oldest_record_age_seconds";
/// Spool: bytes per second the replayer delivered recently.
pub const SPOOL_DRAIN_RATE: &str = "eventpipe_spool_drain_bytes_per_second";
/// Spool: records replayed to Kafka and acknowledged.
pub const SPOOL_REPLAYED: &str = "eventpipe_spool_replayed_records_total";
/// Spool: fsync latency of one group commit, and how many appends shared it.
pub const SPOOL_FSYNC_LATENCY: &str = "eventpipe_spool_fsync_seconds";
pub const SPOOL_GROUP_SIZE: &str = "eventpipe_spool_group_commit_appends";
/// Spool: disk errors (ENOSPC, EIO, ...) on write or fsync.
pub const SPOOL_IO_ERRORS: &str = "eventpipe_spool_io_errors_total";
/// Spool: damaged bytes the replayer found in segments (each range is quarantined as `corrupt`).
pub const SPOOL_CORRUPT_BYTES: &str = "eventpipe_spool_corrupt_bytes_total";
/// Work in flight (set when `/metrics` is scraped): requests being processed, bytes they hold
/// against `limits.max_inflight_bytes`, open client connections.
pub const INFLIGHT_REQUESTS: &str = "eventpipe_inflight_requests";
pub const INFLIGHT_BYTES: &str = "eventpipe_inflight_bytes";
pub const HTTP_CONNECTIONS: &str = "eventpipe_http_connections";
/// Early error answers after which the rest of the request body was read and discarded
/// (lingering close), by `outcome`: `drained` (all of it) or `cut` (bound reached, closed).
pub const LINGER: &str = "eventpipe_http_linger_total";
/// Spool: records (or damaged byte ranges) the replayer moved to the quarantine, by `reason`
/// (`corrupt`, or the bounded refusal reason such as `kafka_rejected:msg_size_too_large`).
pub const SPOOL_QUARANTINED: &str = "eventpipe_spool_quarantined_records_total";
/// Retried events answered from the dedup window without producing them again.
pub const DEDUP_HITS: &str = "eventpipe_dedup_hits_total";

/// Rate limit for repetitive log lines: true at most once a second per `last` cell.
pub fn log_allowed(last: &std::sync::atomic::AtomicI64) -> bool {
    crate::at_most_every(last, std::time::Duration::from_secs(1))
}

/// Keys-file reloads by `result` (`ok`, `error`; a failed one keeps the previous keys).
pub const AUTH_RELOADS: &str = "eventpipe_auth_reloads_total";
/// Write keys in force.
pub const AUTH_KEYS: &str = "eventpipe_auth_keys";
/// Requests admitted per write key, by `key` (the key's name from the keys file, never the key).
pub const KEY_REQUESTS: &str = "eventpipe_key_requests_total";
/// Requests answered 429, by `limit` (`client_ip` before the body, `write_key` after parsing).
pub const RATE_LIMITED: &str = "eventpipe_rate_limited_requests_total";
/// Client IPs with a token bucket of their own (bounded by `rate_limit.max_tracked_ips`).
pub const RATE_LIMIT_TRACKED_IPS: &str = "eventpipe_rate_limit_tracked_ips";
/// Requests checked against the shared overflow buckets because the per-IP map was full.
pub const RATE_LIMIT_OVERFLOW: &str = "eventpipe_rate_limit_overflow_total";
/// TLS certificate reloads (file change or SIGHUP) by `result`: `ok`, or `error` (the previous
/// certificate stays in use).
pub const TLS_RELOADS: &str = "eventpipe_tls_reloads_total";

/// 1 while `/readyz` would answer 200 (schemas loaded, events can be made durable, not
/// draining), else 0; set when `/metrics` is scraped.
pub const READY: &str = "eventpipe_ready";
/// How far a bundle's `sent_at` is from its receive time, in seconds (absolute), by `direction`:
/// `behind` when `sent_at` is earlier than the receive time (the client's clock is behind, or the
/// request spent that long in transit), `ahead` when it is later (the client's clock is ahead).
/// One observation per request that carries a parsable `sent_at`.
pub const CLIENT_CLOCK_SKEW: &str = "eventpipe_client_clock_skew_seconds";

/// Creates every series that dashboards and alerts read, at zero, so they render from the first
/// scrape instead of after their first event: `rate()` over a counter that appears mid-incident
/// misses its first increments, and an alert on a series that does not exist yet never fires.
/// Only registers: a series that already has a value (several gateways in one test process) keeps it.
pub fn register() {
    use metrics::{counter, gauge, histogram};
    for status in [
        "200", "202", "400", "401", "403", "408", "413", "415", "429", "500", "503",
    ] {
        counter!(HTTP_REQUESTS, "status" => status).increment(0);
    }
    counter!(EVENTS, "outcome" => "kafka", "reason" => "accepted", "schema" => "_mixed")
        .increment(0);
    counter!(EVENTS, "outcome" => "spool", "reason" => "kafka_unavailable").increment(0);
    counter!(EVENTS, "outcome" => "deduplicated", "reason" => "retry").increment(0);
    counter!(EVENTS, "outcome" => "failed", "reason" => "dead_letter_refused").increment(0);
    for reason in [
        "invalid_envelope",
        "bad_event_id",
        "unknown_schema",
        "schema_violation",
        "too_large",
        "too_deep",
        "schema_not_allowed",
    ] {
        counter!(EVENTS, "outcome" => "rejected", "reason" => reason).increment(0);
    }
    for reason in [
        "unavailable",
        "overloaded",
        "rate_limited",
        "request_timeout",
    ] {
        counter!(REQUESTS_REFUSED, "reason" => reason).increment(0);
    }
    counter!(DEAD_LETTER_FAILURES, "reason" => "backlog").increment(0);
    counter!(SPOOL_QUARANTINED, "reason" => "corrupt").increment(0);
    for outcome in ["drained", "cut"] {
        counter!(LINGER, "outcome" => outcome).increment(0);
    }
    for limit in ["client_ip", "write_key"] {
        counter!(RATE_LIMITED, "limit" => limit).increment(0);
    }
    for kind in ["events", "refusals"] {
        counter!(AUDIT_OVERFLOW, "kind" => kind).increment(0);
    }
    for kind in ["event", "dead_letter"] {
        counter!(AUDIT_QUARANTINED, "kind" => kind).increment(0);
    }
    for path in ["kafka", "spool"] {
        let _ = histogram!(DELIVERY_LATENCY, "path" => path);
    }
    for name in [
        BODY_BYTES,
        DECOMPRESSED_BYTES,
        PRODUCER_REPLACED,
        SPOOL_REPLAYED,
        SPOOL_IO_ERRORS,
        SPOOL_CORRUPT_BYTES,
        DEDUP_HITS,
        AUDIT_PUBLISHED,
        AUDIT_PUBLISH_FAILURES,
    ] {
        counter!(name).increment(0);
    }
    for name in [
        PRODUCER_QUEUE_MESSAGES,
        PRODUCER_QUEUE_BYTES,
        PRODUCER_TX_MESSAGES,
        PRODUCER_TX_BYTES,
        BROKERS_UP,
        SPOOL_BYTES,
        SPOOL_RECORDS,
        SPOOL_OLDEST_AGE,
        SPOOL_DRAIN_RATE,
        INFLIGHT_REQUESTS,
        INFLIGHT_BYTES,
        HTTP_CONNECTIONS,
        READY,
        AUDIT_UNPUBLISHED,
    ] {
        let _ = gauge!(name);
    }
    for name in [PRODUCE_LATENCY, SPOOL_FSYNC_LATENCY, SPOOL_GROUP_SIZE] {
        let _ = histogram!(name);
    }
    for direction in ["ahead", "behind"] {
        let _ = histogram!(CLIENT_CLOCK_SKEW, "direction" => direction);
    }
}

/// Records the bundle's `sent_at` against its receive time (see [`CLIENT_CLOCK_SKEW`]); a
/// missing or unparsable `sent_at` is not observed.
pub fn observe_clock_skew(sent_at: Option<&str>, received_at_ms: i64) {
    use time::format_description::well_known::Rfc3339;
    let Some(sent) = sent_at.and_then(|s| time::OffsetDateTime::parse(s, &Rfc3339).ok()) else {
        return;
    };
    let sent_ms = (sent.unix_timestamp_nanos() / 1_000_000) as i64;
    let skew = received_at_ms.saturating_sub(sent_ms) as f64 / 1000.0;
    let direction = if skew >= 0.0 { "behind" } else { "ahead" };
    metrics::histogram!(CLIENT_CLOCK_SKEW, "direction" => direction).record(skew.abs());
}

/// Tests: waits (up to a second) until the Prometheus text contains `needle`, for counts that
/// background tasks record after the answer (e.g. a refused request's dead letter).
#[cfg(test)]
pub async fn eventually_rendered(needle: &str) -> bool {
    for _ in 0..100 {
        if recorder().render().contains(needle) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// `eventpipe audit --watch` (its own listener, not the gateway's): events reported by gateways
/// and not found in their topic, summed over the closed windows of the lookback, per topic and
/// collector host.
pub const AUDIT_MISSING: &str = "eventpipe_audit_missing_events";
/// Same, for events found more than once (same id).
pub const AUDIT_DUPLICATES: &str = "eventpipe_audit_duplicate_events";
/// Same, for events found beyond what was reported (or with no audit record at all).
pub const AUDIT_UNREPORTED: &str = "eventpipe_audit_unreported_events";
/// Rows of the last check per `status` (complete, incomplete, open, pending-past-grace).
pub const AUDIT_WINDOWS: &str = "eventpipe_audit_windows";
/// Unix time of the last check that completed.
pub const AUDIT_LAST_CHECK: &str = "eventpipe_audit_last_check_timestamp_seconds";
/// Checks that failed (broker unreachable, audit topic missing, read timeout).
pub const AUDIT_CHECK_ERRORS: &str = "eventpipe_audit_check_errors_total";

/// Audit records the publisher had Kafka acknowledge.
pub const AUDIT_PUBLISHED: &str = "eventpipe_audit_records_published_total";
/// Audit records whose publish failed (they stay pending and are retried).
pub const AUDIT_PUBLISH_FAILURES: &str = "eventpipe_audit_publish_failures_total";
/// (window, topic) cells of closed windows whose latest counts are not yet published.
pub const AUDIT_UNPUBLISHED: &str = "eventpipe_audit_unpublished_records";
/// Counts the audit could not keep (`audit.max_cells` reached with no cell to drop), by `kind`
/// (`events`, `refusals`): the audit under-reports them.
pub const AUDIT_OVERFLOW: &str = "eventpipe_audit_overflow_total";
/// Spooled records that replay moved to the quarantine (acknowledged to clients, never in their
/// topic: `eventpipe audit` reports them missing), by `kind` (`event`, `dead_letter`).
pub const AUDIT_QUARANTINED: &str = "eventpipe_audit_quarantined_records_total";
/// Receive time to Kafka's acknowledgement, by `path`: `kafka` (within the request) or `spool`
/// (delivered by the replayer). Events only, not dead letters.
pub const DELIVERY_LATENCY: &str = "eventpipe_event_delivery_latency_seconds";

#[cfg(test)]
mod tests {
    use super::*;

    /// The `_count` of the clock-skew histogram for `direction`.
    fn skew_count(direction: &str) -> f64 {
        let prefix = format!("{CLIENT_CLOCK_SKEW}_count{{direction=\"{direction}\"}} ");
        recorder()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
            .unwrap_or(0.0)
    }

    #[test]
    fn clock_skew_is_observed_once_per_parsable_sent_at_by_direction() {
        recorder();
        register();
        let received = 1_795_000_000_000; // 2026-11-18T11:06:40Z
        let (behind, ahead) = (skew_count("behind"), skew_count("ahead"));
        // 90 s behind, 2 h ahead (other tests may observe concurrently: at least one each).
        observe_clock_skew(Some("2026-11-18T11:05:10Z"), received);
        observe_clock_skew(Some("2026-11-18T13:06:40+00:00"), received);
        observe_clock_skew(None, received);
        observe_clock_skew(Some("yesterday"), received);
        assert!(skew_count("behind") > behind);
        assert!(skew_count("ahead") > ahead);
        let text = recorder().render();
        let bucket = |dir: &str, le: &str| {
            let prefix = format!("{CLIENT_CLOCK_SKEW}_bucket{{direction=\"{dir}\",le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse::<f64>().ok()))
                .unwrap()
        };
        // 90 s lands above 60 and within 300; 2 h above 3600 and within 21600.
        assert!(bucket("behind", "300") > bucket("behind", "60"));
        assert!(bucket("ahead", "21600") > bucket("ahead", "3600"));
    }
}
