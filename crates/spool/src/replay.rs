//! The replayer: drains sealed segments to a [`ReplayTarget`] (the gateway's: Kafka; the
//! client's: the gateway), oldest first, one bounded batch in flight at a time so live traffic
//! keeps most of the producer. A batch waits for a definite answer for every record
//! (acknowledged, or failed after the target's own timeout), so a record is never in flight
//! twice from the replayer; records that failed retryably are retried with exponential backoff
//! until the target takes them; records it refused for good (or could not even decode), and
//! damaged bytes, are moved to the quarantine (fsynced) first. Then the checkpoint moves past
//! the batch. A segment is deleted once its last batch is done.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::format::{decode_record, Content, Format, FrameKind, Item, Quarantined, MAX_RECORD};
use super::names::log_allowed;
use super::segment::{ack_path, read_ack, write_ack};
use super::{now_ms, quarantine, BoxFuture, Record, Sealed, Shared, Spool};

/// What became of one replay batch. Indices are into the batch; a record in neither list was
/// acknowledged (done: the replayer moves past it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayResult {
    /// Not acknowledged for a reason that may pass (timeout, broker down, queue full): try again.
    pub retry: Vec<usize>,
    /// Refused for good, with a bounded reason such as `kafka_rejected:msg_size_too_large`
    /// (the quarantine's metric label; lowercase ASCII, digits and `_:.-`, at most 64 bytes, or
    /// it is counted as `other`): trying again cannot help, the record goes to the quarantine.
    /// A reason containing `unknown_topic` or `unknown_partition` is doubtful (see
    /// [`ReplayOptions::doubtful_refusal_grace`]).
    pub refused: Vec<(usize, String)>,
}

impl ReplayResult {
    /// Everything acknowledged.
    pub fn is_clean(&self) -> bool {
        self.retry.is_empty() && self.refused.is_empty()
    }
}

/// Where replayed records go (the gateway: the Kafka sink, through the fallback's health
/// tracking; the client library: the gateway's HTTP API).
pub trait ReplayTarget: Send + Sync + 'static {
    /// What a spooled record is turned into before delivery: [`Record`] itself, or the user's
    /// own type (decoded once per record, not per attempt).
    type Item: Send + Sync + 'static;
    /// Turns a record read from a segment into an item. `Err(reason)` (bounded, like a refusal
    /// reason): the record can never be delivered and goes to the quarantine at once.
    fn decode(&self, record: Record) -> Result<Self::Item, String>;
    /// Delivers `items`; resolves to what was not acknowledged by `deadline`, and why. Every
    /// index in neither list of the result counts as acknowledged.
    fn produce<'a>(
        &'a self,
        items: &'a [Self::Item],
        deadline: Instant,
    ) -> BoxFuture<'a, ReplayResult>;
    /// The target acknowledged `item` (audit counts; nothing by default).
    fn acknowledged(&self, _item: &Self::Item) {}
    /// `item` was moved to the quarantine (audit counts; nothing by default).
    fn quarantined(&self, _item: &Self::Item) {}
}

/// Replay batch bounds and timings.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// At most this many records per delivery batch.
    pub batch_records: usize,
    /// A batch is closed once its frames reach this many bytes.
    pub batch_bytes: usize,
    /// How long to wait for a batch (the `deadline` given to [`ReplayTarget::produce`]): longer
    /// than the target's own timeout, so each record's fate is known before it is sent again.
    pub ack_timeout: Duration,
    /// Retries of a batch back off exponentially from 50 ms up to this.
    pub max_backoff: Duration,
    /// How long a refusal that can also be a passing metadata state (unknown topic or partition:
    /// librdkafka reports those for existing topics during broker restarts and leader changes)
    /// must persist in a batch before its records are quarantined; until then they are retried.
    /// Other refusals (too large, not authorised) are quarantined at once.
    pub doubtful_refusal_grace: Duration,
}

impl Default for ReplayOptions {
    /// 500 records or 4 MiB per batch, 35 s per batch, backoff up to 5 s, 30 s of grace for a
    /// doubtful refusal.
    fn default() -> Self {
        ReplayOptions {
            batch_records: 500,
            batch_bytes: 4 << 20,
            ack_timeout: Duration::from_secs(35),
            max_backoff: Duration::from_secs(5),
            doubtful_refusal_grace: Duration::from_secs(30),
        }
    }
}

/// Refusals that can be a broker's passing view of its metadata rather than a fact.
fn doubtful(reason: &str) -> bool {
    reason.contains("unknown_topic") || reason.contains("unknown_partition")
}

/// Starts the replayer task (on the current Tokio runtime); it ends when the spool is closed.
pub fn spawn_replayer<T: ReplayTarget + ?Sized>(
    spool: &Spool,
    target: Arc<T>,
    opts: ReplayOptions,
) -> tokio::task::JoinHandle<()> {
    let shared = spool.shared().clone();
    tokio::spawn(async move { run(shared, target, opts).await })
}

async fn run<T: ReplayTarget + ?Sized>(shared: Arc<Shared>, target: Arc<T>, opts: ReplayOptions) {
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

/// Waits `d` or until the spool is closed; false if it was closed.
async fn pause(shared: &Shared, d: Duration) -> bool {
    let closed = shared.closed_notify.notified();
    tokio::pin!(closed);
    closed.as_mut().enable();
    if shared.closed.load(Ordering::Relaxed) {
        return false;
    }
    tokio::select! {
        _ = closed => false,
        _ = tokio::time::sleep(d) => !shared.closed.load(Ordering::Relaxed),
    }
}

/// The metric label for a refusal reason: kept if it looks like one of ours, else `other`.
fn reason_label(reason: &str) -> String {
    let ok = !reason.is_empty()
        && reason.len() <= 64
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_:.-".contains(&b));
    if ok {
        reason.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Moves entries of segment `seq` to its quarantine file (fsynced). Logs and counts them.
async fn quarantine(shared: &Shared, segment: &Sealed, entries: Vec<Quarantined>) -> bool {
    let dir = shared.opts.dir.clone();
    let seq = segment.seq;
    let labels: Vec<String> = entries.iter().map(|q| reason_label(&q.reason)).collect();
    let first = entries.first().map(|q| (q.source_offset, q.reason.clone()));
    let n = entries.len();
    let corrupt = Some(shared.opts.metrics.corrupt_bytes);
    let written = tokio::task::spawn_blocking(move || {
        quarantine::append_counted(&dir, seq, &entries, corrupt)
    })
    .await;
    match written {
        Ok(Ok(_)) => {
            for label in labels {
                metrics::counter!(shared.opts.metrics.quarantined, "reason" => label).increment(1);
            }
            if let Some((offset, reason)) = first {
                tracing::error!(segment = %segment.path.display(), offset, %reason, records = n,
                    quarantine = %quarantine::quarantine_path(&shared.opts.dir, seq).display(),
                    "spool: moved records replay cannot deliver to the quarantine \
                     (the gateway lists them with `eventpipe spool quarantine`)");
            }
            true
        }
        other => {
            static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
            if log_allowed(&LAST) {
                tracing::error!(segment = %segment.path.display(), ?other,
                    "spool: cannot write the quarantine; keeping the records and retrying");
            }
            false
        }
    }
}

/// Reads a segment file, retrying (in a loop) until it can or the spool is closed.
async fn read_segment(shared: &Shared, segment: &Sealed) -> Option<Vec<u8>> {
    let mut backoff = Duration::from_millis(100);
    loop {
        if shared.closed.load(Ordering::Relaxed) {
            return None;
        }
        let path = segment.path.clone();
        match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
            Ok(Ok(b)) => return Some(b),
            other => {
                static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
                if log_allowed(&LAST) {
                    tracing::error!(segment = %segment.path.display(), ?other,
                        "spool: cannot read segment; retrying");
                }
            }
        }
        if !pause(shared, backoff).await {
            return None;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Where a record of the batch being replayed is in its segment, its body and topic.
struct Pending<'a> {
    offset: usize,
    len: usize,
    body: &'a [u8],
    topic: Arc<str>,
}

/// Replays one segment from its checkpoint. Returns false if the spool was closed first.
async fn replay_segment<T: ReplayTarget + ?Sized>(
    shared: &Shared,
    segment: &Sealed,
    target: &T,
    opts: &ReplayOptions,
) -> bool {
    let Some(bytes) = read_segment(shared, segment).await else {
        return false;
    };
    let (format, data) = Format::of(&bytes);
    let end = (segment.len as usize).min(bytes.len());
    let mut pos = (read_ack(&shared.opts.dir, segment.seq) as usize)
        .max(data)
        .min(end);
    let mut items = format.items(&bytes, pos, end).peekable();
    let mut backoff = Duration::from_millis(50);
    while pos < end {
        let mut batch = Vec::new();
        let mut meta = Vec::new();
        let mut next = pos;
        let mut batch_bytes = 0;
        let mut bad = None;
        while batch.len() < opts.batch_records && batch_bytes < opts.batch_bytes {
            match items.peek().copied() {
                None => break,
                Some(Item::Bad { start, end }) => {
                    if batch.is_empty() {
                        bad = Some((start, end));
                        items.next();
                    }
                    break;
                }
                Some(Item::Frame(f)) => {
                    items.next();
                    next = f.end;
                    if f.kind != FrameKind::Record {
                        continue;
                    }
                    if let Some((record, _)) = decode_record(f.body) {
                        let topic = record.topic.clone();
                        let item = target.decode(record);
                        batch.push(item);
                        meta.push(Pending {
                            offset: f.start,
                            len: f.end - f.start,
                            body: f.body,
                            topic,
                        });
                        batch_bytes += f.end - f.start;
                    }
                }
            }
        }
        if let Some((start, stop)) = bad {
            // Damaged bytes inside what was committed (or kept at start-up): copy them to the
            // quarantine and go on with the records after them.
            tracing::error!(segment = %segment.path.display(), offset = start, bytes = stop - start,
                "spool: corrupt bytes in a segment; quarantining them and replaying the rest");
            metrics::counter!(shared.opts.metrics.corrupt_bytes).increment((stop - start) as u64);
            let entry = Quarantined {
                quarantined_ms: now_ms(),
                source_seq: segment.seq,
                source_offset: start as u64,
                source_len: (stop - start) as u64,
                reason: "corrupt".into(),
                content: Content::Raw(bytes[start..stop.min(start + MAX_RECORD as usize)].to_vec()),
            };
            while !quarantine(shared, segment, vec![entry.clone()]).await {
                if !pause(shared, Duration::from_secs(1)).await {
                    return false;
                }
            }
            next = stop;
        }
        if !batch.is_empty() {
            let started = Instant::now();
            if !deliver(shared, segment, target, opts, batch, meta, &mut backoff).await {
                return false;
            }
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
        }
        if next == pos {
            break; // nothing more to read (cannot happen: the reader always moves on)
        }
        let (dir, seq) = (shared.opts.dir.clone(), segment.seq);
        let _ = tokio::task::spawn_blocking(move || write_ack(&dir, seq, next as u64)).await;
        pos = next;
        // The age bound looks at the oldest record still waiting: move it forward.
        let oldest = format
            .items(&bytes, pos, end)
            .find_map(|i| match i {
                Item::Frame(f) if f.kind == FrameKind::Record => decode_record(f.body),
                _ => None,
            })
            .map(|(_, ms)| ms);
        if let Some(ms) = oldest {
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

/// Records the target could not decode go to the quarantine first (with the reason it gave);
/// then the rest is delivered. False if the spool was closed first.
#[allow(clippy::too_many_arguments)]
async fn deliver<T: ReplayTarget + ?Sized>(
    shared: &Shared,
    segment: &Sealed,
    target: &T,
    opts: &ReplayOptions,
    decoded: Vec<Result<T::Item, String>>,
    meta: Vec<Pending<'_>>,
    backoff: &mut Duration,
) -> bool {
    let mut pending = Vec::with_capacity(decoded.len());
    let mut kept_meta = Vec::with_capacity(meta.len());
    let mut undecodable = Vec::new();
    for (item, m) in decoded.into_iter().zip(meta) {
        match item {
            Ok(item) => {
                pending.push(item);
                kept_meta.push(m);
            }
            Err(reason) => undecodable.push(Quarantined {
                quarantined_ms: now_ms(),
                source_seq: segment.seq,
                source_offset: m.offset as u64,
                source_len: m.len as u64,
                reason,
                content: Content::Record(m.body.to_vec()),
            }),
        }
    }
    if !undecodable.is_empty() {
        let n = undecodable.len() as u64;
        while !quarantine(shared, segment, undecodable.clone()).await {
            if !pause(shared, Duration::from_secs(1)).await {
                return false;
            }
        }
        let _ = shared
            .records
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(n))
            });
    }
    if pending.is_empty() {
        return true;
    }
    deliver_items(shared, segment, target, opts, pending, kept_meta, backoff).await
}

/// Produces a batch until every record is acknowledged or quarantined. False if closed first.
async fn deliver_items<T: ReplayTarget + ?Sized>(
    shared: &Shared,
    segment: &Sealed,
    target: &T,
    opts: &ReplayOptions,
    mut pending: Vec<T::Item>,
    mut meta: Vec<Pending<'_>>,
    backoff: &mut Duration,
) -> bool {
    loop {
        let deadline = Instant::now() + opts.ack_timeout;
        let result = target.produce(&pending, deadline).await;
        let mut keep = vec![false; pending.len()];
        for i in result.retry {
            if let Some(k) = keep.get_mut(i) {
                *k = true;
            }
        }
        let mut refused: Vec<(usize, String)> = result
            .refused
            .into_iter()
            .filter(|(i, _)| *i < pending.len())
            .collect();
        {
            // A doubtful refusal is a fact once its topic has been refused that way for the
            // grace (per topic, across batches and segments); until then it is retried.
            let mut doubts = shared.doubts.lock().unwrap_or_else(|p| p.into_inner());
            for (i, m) in meta.iter().enumerate() {
                let refused_here = refused.iter().any(|(j, _)| *j == i);
                if !keep[i] && !refused_here {
                    doubts.remove(&m.topic); // acknowledged: the topic is there
                }
            }
            let now = Instant::now();
            refused.retain(|(i, reason)| {
                if !doubtful(reason) {
                    return true;
                }
                let since = *doubts.entry(meta[*i].topic.clone()).or_insert(now);
                let settled = now.duration_since(since) >= opts.doubtful_refusal_grace;
                if !settled {
                    keep[*i] = true;
                }
                settled
            });
        }
        refused.sort_by_key(|(i, _)| *i);
        refused.dedup_by_key(|(i, _)| *i);
        let mut quarantined = 0;
        if !refused.is_empty() {
            let entries = refused
                .iter()
                .map(|(i, reason)| Quarantined {
                    quarantined_ms: now_ms(),
                    source_seq: segment.seq,
                    source_offset: meta[*i].offset as u64,
                    source_len: meta[*i].len as u64,
                    reason: reason.clone(),
                    content: Content::Record(meta[*i].body.to_vec()),
                })
                .collect();
            if quarantine(shared, segment, entries).await {
                quarantined = refused.len();
                for (i, _) in &refused {
                    keep[*i] = false;
                    target.quarantined(&pending[*i]);
                }
            } else {
                // Nowhere to put them: they stay in the batch (and the checkpoint stays).
                for (i, _) in &refused {
                    keep[*i] = true;
                }
            }
        }
        let kept = keep.iter().filter(|k| **k).count();
        let delivered = pending.len() - kept - quarantined;
        for (i, r) in pending.iter().enumerate() {
            if !keep[i] && !refused.iter().any(|(j, _)| *j == i) {
                target.acknowledged(r);
            }
        }
        metrics::counter!(shared.opts.metrics.replayed).increment(delivered as u64);
        let _ = shared
            .records
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub((delivered + quarantined) as u64))
            });
        if kept == 0 {
            *backoff = Duration::from_millis(50);
            return true;
        }
        let mut flags = keep.iter();
        pending.retain(|_| flags.next().copied().unwrap_or(false));
        let mut flags = keep.iter();
        meta.retain(|_| flags.next().copied().unwrap_or(false));
        if !pause(shared, *backoff).await {
            return false;
        }
        *backoff = (*backoff * 2).min(opts.max_backoff);
    }
}
