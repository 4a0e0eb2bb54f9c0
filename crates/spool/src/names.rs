//! The names of the spool's metrics, given by the user of the crate: the gateway reports
//! `eventpipe_spool_*`, the client library `eventpipe_client_spool_*`.

/// Metric names, one per metric the spool reports. Counters end in `_total`, the histograms
/// are seconds (`fsync_latency`) and a count (`group_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricNames {
    /// Gauge: bytes of segment files on disk (set by [`crate::Spool::publish_gauges`]).
    pub bytes: &'static str,
    /// Gauge: records waiting for replay.
    pub records: &'static str,
    /// Gauge: age of the oldest record waiting, seconds.
    pub oldest_age: &'static str,
    /// Gauge: bytes per second the replayer delivered recently.
    pub drain_rate: &'static str,
    /// Counter: records the replay target acknowledged.
    pub replayed: &'static str,
    /// Histogram: seconds per group commit (write + fdatasync).
    pub fsync_latency: &'static str,
    /// Histogram: appends per group commit.
    pub group_size: &'static str,
    /// Counter: disk errors while appending.
    pub io_errors: &'static str,
    /// Counter: damaged bytes found (quarantined by replay, or files set aside at start-up).
    pub corrupt_bytes: &'static str,
    /// Counter by `reason`: records and damaged byte ranges moved to the quarantine.
    pub quarantined: &'static str,
}

impl MetricNames {
    /// The gateway's names (`eventpipe_spool_*`).
    pub const GATEWAY: MetricNames = MetricNames {
        bytes: "eventpipe_spool_bytes",
        records: "eventpipe_spool_records",
        oldest_age: "eventpipe_spool_oldest_record_age_seconds",
        drain_rate: "eventpipe_spool_drain_bytes_per_second",
        replayed: "eventpipe_spool_replayed_records_total",
        fsync_latency: "eventpipe_spool_fsync_seconds",
        group_size: "eventpipe_spool_group_commit_appends",
        io_errors: "eventpipe_spool_io_errors_total",
        corrupt_bytes: "eventpipe_spool_corrupt_bytes_total",
        quarantined: "eventpipe_spool_quarantined_records_total",
    };

    /// The same names with `eventpipe_spool` replaced by `prefix` (e.g.
    /// `eventpipe_client_spool`). The strings are leaked: build it once per process (a
    /// `static` `OnceLock`), not per spool.
    pub fn with_prefix(prefix: &str) -> MetricNames {
        let g = MetricNames::GATEWAY;
        let name = |full: &'static str| -> &'static str {
            let rest = full.strip_prefix("eventpipe_spool").unwrap_or(full);
            Box::leak(format!("{prefix}{rest}").into_boxed_str())
        };
        MetricNames {
            bytes: name(g.bytes),
            records: name(g.records),
            oldest_age: name(g.oldest_age),
            drain_rate: name(g.drain_rate),
            replayed: name(g.replayed),
            fsync_latency: name(g.fsync_latency),
            group_size: name(g.group_size),
            io_errors: name(g.io_errors),
            corrupt_bytes: name(g.corrupt_bytes),
            quarantined: name(g.quarantined),
        }
    }
}

/// Rate limit for repetitive log lines: true at most once a second per `last` cell.
pub(crate) fn log_allowed(last: &std::sync::atomic::AtomicI64) -> bool {
    use std::sync::atomic::Ordering;
    let now = crate::now_ms();
    let prev = last.load(Ordering::Relaxed);
    now - prev >= 1000
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}
