//! The replayer: drains sealed segments to Kafka, oldest first, one bounded batch in flight at a
//! time so live traffic keeps most of the producer. A batch waits for a definite answer for every
//! record (acknowledged, or failed after librdkafka's own `message.timeout.ms`), so a record is
//! never queued in the producer twice by the replayer; failed records are retried with
//! exponential backoff until Kafka takes them, then the checkpoint moves past the batch. A
//! segment is deleted once its last batch is acknowledged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::segment::{ack_path, frame_at, read_ack, write_ack};
use super::{Sealed, Shared, Spool};
use crate::metrics as m;
use crate::sink::{BoxFuture, Record};

/// What became of one replay batch. Indices are into the batch; a record in neither list was
/// acknowledged by Kafka.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayResult {
    /// Not acknowledged for a reason that may pass (timeout, broker down, queue full): try again.
    pub retry: Vec<usize>,
    /// Refused for good by Kafka, with a bounded reason such as
    /// `kafka_rejected:msg_size_too_large`: trying again cannot help.
    pub refused: Vec<(usize, String)>,
}

impl ReplayResult {
    /// Everything acknowledged.
    pub fn is_clean(&self) -> bool {
        self.retry.is_empty() && self.refused.is_empty()
    }
}

/// Where replayed records go (the Kafka sink, through the fallback's health tracking).
pub trait ReplayTarget: Send + Sync + 'static {
    /// Produces `records`; resolves to what was not acknowledged by `deadline`, and why.
    fn produce<'a>(
        &'a self,
        records: &'a [Record],
        deadline: Instant,
    ) -> BoxFuture<'a, ReplayResult>;
}

/// Replay batch bounds and timings.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub batch_records: usize,
    pub batch_bytes: usize,
    /// How long to wait for a batch: longer than the producer's `message.timeout.ms`, so each
    /// record's fate is known before it is sent again.
    pub ack_timeout: Duration,
    pub max_backoff: Duration,
}

/// Starts the replayer task; it ends when the spool is closed.
pub fn spawn_replayer(
    spool: &Spool,
    target: Arc<dyn ReplayTarget>,
    opts: ReplayOptions,
) -> tokio::task::JoinHandle<()> {
    let shared = spool.shared().clone();
    tokio::spawn(async move { run(shared, target, opts).await })
}

async fn run(shared: Arc<Shared>, target: Arc<dyn ReplayTarget>, opts: ReplayOptions) {
    loop {
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        let next = shared
            .sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned();
        let Some(segment) = next else {
            // Woken by the writer sealing a segment; the timeout re-checks `closed`.
            let _ =
                tokio::time::timeout(Duration::from_millis(500), shared.sealed_notify.notified())
                    .await;
            continue;
        };
        if !replay_segment(&shared, &segment, target.as_ref(), &opts).await {
            return; // closed mid-segment; the checkpoint says where the next process resumes
        }
        let dir = shared.opts.dir.clone();
        let (path, seq) = (segment.path.clone(), segment.seq);
        let removed = tokio::task::spawn_blocking(move || {
            std::fs::remove_file(&path).and_then(|_| {
                let _ = std::fs::remove_file(ack_path(&dir, seq));
                super::segment::fsync_dir(&dir)
            })
        })
        .await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::error!(segment = %segment.path.display(), "spool: could not delete a replayed segment");
        }
        shared
            .sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let _ = shared
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(segment.len))
            });
    }
}

/// Replays one segment from its checkpoint. Returns false if the spool was closed first.
async fn replay_segment(
    shared: &Shared,
    segment: &Sealed,
    target: &dyn ReplayTarget,
    opts: &ReplayOptions,
) -> bool {
    let path = segment.path.clone();
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(b)) => b,
        other => {
            tracing::error!(segment = %segment.path.display(), ?other, "spool: cannot read segment; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return !shared.closed.load(Ordering::Relaxed)
                && Box::pin(replay_segment(shared, segment, target, opts)).await;
        }
    };
    let end = (segment.len as usize).min(bytes.len());
    let mut pos = (read_ack(&shared.opts.dir, segment.seq) as usize).min(end);
    let mut backoff = Duration::from_millis(50);
    while pos < end {
        let mut batch = Vec::new();
        let mut next = pos;
        let mut batch_bytes = 0;
        while next < end && batch.len() < opts.batch_records && batch_bytes < opts.batch_bytes {
            let Some((body, after)) = frame_at(&bytes[..end], next) else {
                break;
            };
            if let Some((record, _)) = super::decode_record(body) {
                batch.push(record);
            }
            batch_bytes += after - next;
            next = after;
        }
        if batch.is_empty() {
            // Only bytes that never passed an fsync can fail here (a write error left them);
            // their clients were refused, so skipping them loses nothing promised.
            tracing::error!(segment = %segment.path.display(), offset = pos, skipped = end - pos,
                "spool: unreadable bytes in a sealed segment; skipping the rest of it");
            metrics::counter!(m::SPOOL_CORRUPT_BYTES).increment((end - pos) as u64);
            break;
        }
        let started = Instant::now();
        let mut pending = batch;
        loop {
            let deadline = Instant::now() + opts.ack_timeout;
            // Until refused records have somewhere to go, they are retried with the rest.
            let result = target.produce(&pending, deadline).await;
            let mut unacked = result.retry;
            unacked.extend(result.refused.into_iter().map(|(i, _)| i));
            unacked.sort_unstable();
            let delivered = pending.len() - unacked.len();
            metrics::counter!(m::SPOOL_REPLAYED).increment(delivered as u64);
            let _ = shared
                .records
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                    Some(r.saturating_sub(delivered as u64))
                });
            if unacked.is_empty() {
                break;
            }
            pending = unacked
                .into_iter()
                .filter_map(|i| pending.get(i).cloned())
                .collect();
            if shared.closed.load(Ordering::Relaxed) {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(opts.max_backoff);
        }
        backoff = Duration::from_millis(50);
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        let instant_rate = batch_bytes as f64 / secs;
        let old = shared.drain_rate();
        let rate = if old == 0.0 {
            instant_rate
        } else {
            0.7 * old + 0.3 * instant_rate
        };
        shared
            .drain_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
        let (dir, seq) = (shared.opts.dir.clone(), segment.seq);
        let _ = tokio::task::spawn_blocking(move || write_ack(&dir, seq, next as u64)).await;
        pos = next;
        // The age bound looks at the oldest record still waiting: move it forward.
        if let Some((_, ms)) =
            frame_at(&bytes[..end], pos).and_then(|(body, _)| super::decode_record(body))
        {
            if let Some(front) = shared
                .sealed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front_mut()
            {
                if front.seq == segment.seq {
                    front.first_ms = ms;
                }
            }
        }
        if shared.closed.load(Ordering::Relaxed) {
            return false;
        }
    }
    true
}
