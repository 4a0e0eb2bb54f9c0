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
