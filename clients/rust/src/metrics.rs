//! Metric names (the `metrics` crate: install any recorder, e.g. a Prometheus exporter, and they
//! appear). Labels are bounded: `durability` kafka|spool, `reason` from a fixed list, `cause` from
//! a fixed list.

/// Counter: events accepted into the client (queue or disk).
pub const ENQUEUED: &str = "eventpipe_client_enqueued_total";
/// Counter: events put on the wire, counting every attempt.
pub const SENT: &str = "eventpipe_client_sent_total";
/// Counter: events made durable; label `durability` = kafka | spool.
pub const ACCEPTED: &str = "eventpipe_client_accepted_total";
/// Counter: events the gateway rejected; label `reason` (the gateway's reasons, `other` beyond
/// the known list; `kafka_rejected:<code>` counts as `kafka_rejected`).
pub const REJECTED: &str = "eventpipe_client_rejected_total";
/// Counter: events the client gave up on; label `reason` (see `DropReason::as_str`).
pub const DROPPED: &str = "eventpipe_client_dropped_total";
/// Counter: batch attempts after the first; label `cause` (see `RetryCause`).
pub const RETRIES: &str = "eventpipe_client_retries_total";
/// Counter: batches split in two after a 413.
pub const SPLITS: &str = "eventpipe_client_batch_splits_total";
/// Counter: events written to the disk queue (Spill).
pub const SPILLED: &str = "eventpipe_client_spilled_total";
/// Gauge: events waiting in memory.
pub const QUEUE_EVENTS: &str = "eventpipe_client_queue_events";
/// Gauge: bytes of events waiting in memory.
pub const QUEUE_BYTES: &str = "eventpipe_client_queue_bytes";
/// Gauge: events in the disk queue.
pub const SPILL_EVENTS: &str = "eventpipe_client_spill_events";
/// Gauge: events in batches being sent or waiting to be retried.
pub const IN_FLIGHT: &str = "eventpipe_client_in_flight_events";
/// Histogram: seconds from a batch's first attempt until every event in it is settled.
pub const BATCH_LATENCY: &str = "eventpipe_client_batch_latency_seconds";
/// Histogram: seconds one HTTP attempt took; label `status` (the code class: 2xx, 4xx, 413,
/// 429, 5xx, 503, error).
pub const REQUEST_DURATION: &str = "eventpipe_client_request_duration_seconds";

const KNOWN_REASONS: &[&str] = &[
    "schema_violation",
    "unknown_schema",
    "bad_event_id",
    "invalid_envelope",
    "too_large",
    "too_deep",
    "schema_not_allowed",
    "kafka_rejected",
    "undecodable_body",
    "not_a_bundle",
    "unauthorized",
    "forbidden_origin",
    "body_too_large",
    "decompressed_too_large",
    "too_many_events",
    "context_too_large",
    "output_too_large",
    "unsupported_media_type",
    "unsupported_encoding",
];

/// A rejection reason as a bounded label.
pub fn reason_label(reason: &str) -> &'static str {
    let base = reason.split(':').next().unwrap_or(reason);
    KNOWN_REASONS
        .iter()
        .find(|r| **r == base)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    #[test]
    fn reason_labels_are_bounded() {
        assert_eq!(
            super::reason_label("kafka_rejected:MSG_SIZE_TOO_LARGE"),
            "kafka_rejected"
        );
        assert_eq!(super::reason_label("schema_violation"), "schema_violation");
        assert_eq!(
            super::reason_label("anything else the gateway invents"),
            "other"
        );
    }
}
