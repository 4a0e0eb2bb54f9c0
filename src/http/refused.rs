//! Records Kafka refused for good (`Delivered::refused`): they were never spooled, since no retry
//! could succeed, so the request decides what becomes of their events here.
//!
//! An accepted event whose record is refused becomes a dead letter (reason
//! `kafka_rejected:<code>`, its original JSON cut to `limits.dead_letter_max_bytes`, the request's
//! enrichment) and a rejection in the response, exactly like an event the pipeline rejected.
//! When a dead letter is itself refused (the dead-letter topic is missing or not writable) or
//! cannot be stored at all, the event has no durable home: it is reported in `failed`, counted
//! in `eventpipe_dead_letter_failures_total`, logged (at most once a second), and the request is
//! answered 500 (see `ingest`) rather than claiming durability.

use std::sync::atomic::AtomicI64;

use serde::Serialize;
use tokio::time::Instant;

use super::AppState;
use crate::metrics as m;
use crate::pipeline::{dead_letter_for_refused, EventOrigin, Rejection};
use crate::sink::Delivered;
use crate::thrift::Enrichment;

static LAST_LOG: AtomicI64 = AtomicI64::new(0);

/// An event with no durable home: neither its record nor its dead letter was stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failed {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Why the event itself was not stored (`kafka_rejected:<code>`, or its pipeline reason).
    pub reason: &'static str,
    pub message: String,
}

/// What became of a request's refused records.
#[derive(Debug, Default)]
pub struct Settled {
    /// Accepted events whose record was refused and whose dead letter was stored: now rejected.
    pub rejected: Vec<Rejection>,
    /// Record indices (into the batch sent) of accepted events that were refused.
    pub refused_events: Vec<usize>,
    /// Positions in the request's `rejected` list whose dead letter was refused, and why.
    pub lost_rejections: Vec<(usize, &'static str)>,
    /// Events with no durable home.
    pub failed: Vec<Failed>,
    /// Dead letters spooled rather than acknowledged (the answer is then 202).
    pub spooled_letters: usize,
}

/// Turns the refused records of a batch into dead letters (sent now) or failures.
/// `origins` is aligned with the batch that was sent; `decoded` is the body it was parsed from.
pub async fn settle(
    gw: &AppState,
    refused: &[(usize, &'static str)],
    origins: &[Option<EventOrigin>],
    decoded: &[u8],
    enrichment: &Enrichment,
    request_id: Option<&str>,
) -> Settled {
    let mut out = Settled::default();
    let mut letters = Vec::new();
    for &(i, reason) in refused {
        match origins.get(i) {
            Some(Some(origin)) => {
                let text = decoded
                    .get(origin.span.clone())
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .unwrap_or_default();
                let (rejection, letter) = dead_letter_for_refused(
                    origin.index,
                    reason,
                    text,
                    &gw.pipeline,
                    enrichment,
                    request_id,
                );
                out.refused_events.push(i);
                out.rejected.push(rejection);
                letters.push(letter);
            }
            _ => {
                // The dead letter of an event the pipeline rejected: the n-th dead letter in
                // the batch belongs to the n-th rejection.
                let position = origins[..i.min(origins.len())]
                    .iter()
                    .filter(|o| o.is_none())
                    .count();
                dead_letter_lost(reason);
                out.lost_rejections.push((position, reason));
            }
        }
    }
    if letters.is_empty() {
        return out;
    }
    let deadline = Instant::now() + gw.ack_timeout;
    let sent = crate::audit::send(
        &gw.audit,
        gw.sink.as_ref(),
        letters,
        deadline,
        enrichment.received_at_ms,
    );
    let delivered = match sent.await {
        Ok(d) => d,
        Err(e) => {
            // Kafka late and the spool refusing: none of these dead letters is stored, so
            // their events are neither accepted nor remembered as durable (`refused_events`
            // stays: the caller takes them out of `accepted` and out of the dedup window).
            let failed = std::mem::take(&mut out.rejected);
            out.failed = failed
                .into_iter()
                .map(|r| {
                    dead_letter_lost(e.reason());
                    to_failed(r, e.reason())
                })
                .collect();
            return out;
        }
    };
    out.spooled_letters = delivered.spooled_records;
    move_refused_letters(&mut out, &delivered);
    out
}

/// Letters refused in their turn: their events go from `rejected` to `failed`.
fn move_refused_letters(out: &mut Settled, delivered: &Delivered) {
    if delivered.refused.is_empty() {
        return;
    }
    let mut kept = Vec::with_capacity(out.rejected.len());
    for (j, rejection) in std::mem::take(&mut out.rejected).into_iter().enumerate() {
        match delivered.refused.iter().find(|(k, _)| *k == j) {
            Some((_, letter_reason)) => {
                dead_letter_lost(letter_reason);
                out.failed.push(to_failed(rejection, letter_reason));
            }
            None => kept.push(rejection),
        }
    }
    out.rejected = kept;
}

/// The event of a rejection whose dead letter could not be stored.
pub fn to_failed(r: Rejection, letter_reason: &str) -> Failed {
    Failed {
        index: r.index,
        event_id: r.event_id,
        reason: r.reason.as_str(),
        message: format!(
            "{}; its dead letter could not be stored either ({letter_reason})",
            r.message
        ),
    }
}

/// Counts and logs (at most once a second) a dead letter that has nowhere to go.
pub fn dead_letter_lost(reason: &'static str) {
    metrics::counter!(m::DEAD_LETTER_FAILURES, "reason" => reason).increment(1);
    if m::log_allowed(&LAST_LOG) {
        tracing::error!(
            reason,
            "a dead letter was refused: check the dead-letter topic exists and may be written (logged at most once a second)"
        );
    }
}

#[cfg(test)]
mod tests;
