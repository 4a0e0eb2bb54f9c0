//! The background task: cuts batches from the queue (count, bytes, linger), sends up to
//! `concurrency` of them at once, and retries each until every event in it is settled.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::client::{Attempt, Shared};
use crate::error::{DropReason, Error, Receipt, ShutdownReport};
use crate::metrics as m;
use crate::queue::Item;
use crate::response::{classify, Verdict};
use crate::retry::{self, RetryCause};

/// Answers bigger than this are cut (the gateway's are a few KiB at most).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Bundles at least this big are gzipped (when gzip is on).
const GZIP_MIN_BYTES: usize = 1024;
/// At most this many ids in a shutdown report.
const MAX_REPORTED_IDS: usize = 10_000;

enum Next {
    Batch(Vec<Item>),
    Wait(Option<Instant>),
    Done,
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut tasks: JoinSet<Vec<Item>> = JoinSet::new();
    let mut abort = shared.abort.subscribe();
    let mut drop_deadline: Option<Instant> = None;
    let cfg = &shared.cfg;
    // What aborted batches hand back (not settled): finalize spills or reports it.
    let mut leftover = Vec::new();
    loop {
        while let Some(r) = tasks.try_join_next() {
            leftover.extend(r.unwrap_or_default());
        }
        if *abort.borrow_and_update() {
            break;
        }
        if drop_deadline.is_some_and(|d| Instant::now() >= d) {
            shared.abort.send_replace(true);
            break;
        }
        let next = {
            let mut s = shared.lock();
            if s.closed && s.dropped && drop_deadline.is_none() {
                drop_deadline = Some(Instant::now() + cfg.drop_grace);
            }
            match s.queue.front().map(|i| i.enqueued_at) {
                // Done when nothing is left: with Spill, that includes what waits on disk.
                None if s.closed && tasks.is_empty() && s.outstanding.is_empty() => Next::Done,
                None => Next::Wait(None),
                Some(_) if tasks.len() >= cfg.concurrency => Next::Wait(None),
                Some(first) => {
                    let due = first + cfg.linger;
                    let full = s
                        .queue
                        .batch_full(cfg.batch_max_events, cfg.batch_max_bytes);
                    if s.closed || s.urgent > 0 || full || Instant::now() >= due {
                        let batch = s.queue.pop_batch(cfg.batch_max_events, cfg.batch_max_bytes);
                        s.in_flight += batch.len();
                        shared.gauges(&s);
                        Next::Batch(batch)
                    } else {
                        Next::Wait(Some(due))
                    }
                }
            }
        };
        match next {
            Next::Done => break,
            Next::Batch(batch) => {
                shared.space.notify_waiters();
                tasks.spawn(send_batch(shared.clone(), batch));
            }
            Next::Wait(until) => {
                let far = Instant::now() + Duration::from_secs(3600);
                let until = until.unwrap_or(far).min(drop_deadline.unwrap_or(far));
                tokio::select! {
                    _ = shared.work.notified() => {}
                    Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                        leftover.extend(r.unwrap_or_default());
                    }
                    _ = tokio::time::sleep_until(until) => {}
                    _ = abort.changed() => {}
                }
            }
        }
    }
    // Aborted batches hand back what they did not settle; finalize settles everything left.
    while let Some(r) = tasks.join_next().await {
        if let Ok(items) = r {
            leftover.extend(items);
        }
    }
    finalize(&shared, leftover).await;
}

/// Settles whatever is still outstanding and writes the report: with `Spill`, what is in memory
/// goes to disk and everything on disk is answered `Spilled`; the rest is `Dropped(Shutdown)`.
async fn finalize(shared: &Arc<Shared>, leftover: Vec<Item>) {
    let c = &shared.counters;
    let dropped_before = c.dropped.load(Ordering::Relaxed);
    let mut memory = leftover;
    memory.extend(shared.lock().queue.drain());
    let mut spilled_seqs = Vec::new();
    if let Some(spool) = &shared.spill {
        // Items read back from disk are still there; the others are appended now.
        let (on_disk, to_write): (Vec<Item>, Vec<Item>) =
            memory.into_iter().partition(|i| i.from_disk);
        spilled_seqs.extend(on_disk.iter().map(|i| i.seq));
        if !to_write.is_empty() {
            let records: Vec<eventpipe_spool::Record> =
                to_write.iter().map(crate::spill::record).collect();
            match spool.append(&records).await {
                Ok(()) => {
                    metrics::counter!(m::SPILLED).increment(to_write.len() as u64);
                    spilled_seqs.extend(to_write.iter().map(|i| i.seq));
                }
                Err(e) => tracing::warn!(
                    reason = e.reason(),
                    "eventpipe client could not spill at shutdown"
                ),
            }
        }
        let waiting: Vec<u64> = shared.lock().spilled_ids.values().copied().collect();
        spilled_seqs.extend(waiting);
    }
    settle_the_rest(shared, spilled_seqs, dropped_before);
    if let Some(spool) = &shared.spill {
        spool.close().await;
        let replayer = shared
            .replayer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = replayer {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
    }
    shared.finished.send_replace(true);
    shared.space.notify_waiters();
}

/// Answers what is on disk `Spilled` and the rest `Dropped(Shutdown)`; writes the report.
fn settle_the_rest(shared: &Shared, spilled_seqs: Vec<u64>, dropped_before: u64) {
    let c = &shared.counters;
    let mut s = shared.lock();
    let mut spilled = 0u64;
    for seq in spilled_seqs {
        if s.outstanding.contains_key(&seq) {
            spilled += 1;
            shared.settle(&mut s, seq, Err(Error::Spilled));
        }
    }
    s.spilled_ids.clear();
    let unsent: Vec<(u64, crate::EventId)> = s.outstanding.iter().map(|(k, v)| (*k, *v)).collect();
    for (seq, _) in &unsent {
        shared.settle(&mut s, *seq, Err(Error::Dropped(DropReason::Shutdown)));
    }
    for (_, w) in s.replay_waiters.drain() {
        let _ = w.send(false);
    }
    s.in_flight = 0;
    shared.gauges(&s);
    let report = ShutdownReport {
        delivered: c.kafka.load(Ordering::Relaxed) + c.spool.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        dropped: dropped_before,
        unsent: unsent.len() as u64,
        unsent_ids: unsent
            .iter()
            .take(MAX_REPORTED_IDS)
            .map(|(_, id)| *id)
            .collect(),
        spilled,
    };
    if report.unsent > 0 {
        tracing::warn!(
            unsent = report.unsent,
            "eventpipe client stopped with events unsent"
        );
    }
    s.report = Some(report);
}

async fn aborted(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sends one batch until every event in it is settled; on abort returns what is not.
async fn send_batch(shared: Arc<Shared>, items: Vec<Item>) -> Vec<Item> {
    let started = Instant::now();
    let mut abort = shared.abort.subscribe();
    let cfg = &shared.cfg;
    let mut work = vec![(items, 0u32)];
    while let Some((mut items, mut attempt)) = work.pop() {
        loop {
            attempt += 1;
            let verdict = tokio::select! {
                v = attempt_once(&shared, &items, attempt) => v,
                _ = aborted(&mut abort) => {
                    work.push((items, attempt));
                    return work.into_iter().flat_map(|(i, _)| i).collect();
                }
            };
            let (cause, retry_after) = match verdict {
                Verdict::PerEvent(results) => {
                    shared
                        .budget
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .success(std::time::Instant::now());
                    let mut keep = Vec::new();
                    {
                        let mut s = shared.lock();
                        for (item, result) in items.into_iter().zip(results) {
                            match result {
                                Some(receipt) => {
                                    s.in_flight = s.in_flight.saturating_sub(1);
                                    shared.settle(&mut s, item.seq, Ok(receipt));
                                }
                                None => keep.push(item),
                            }
                        }
                        shared.gauges(&s);
                    }
                    items = keep;
                    if items.is_empty() {
                        break;
                    }
                    (RetryCause::ServerError, None)
                }
                Verdict::RetryAll { cause, retry_after } => (cause, retry_after),
                Verdict::Split { reason, message } => {
                    if items.len() == 1 {
                        settle_all(&shared, &items, |_| {
                            Ok(Receipt::Rejected {
                                reason: reason.clone(),
                                path: None,
                                message: message.clone(),
                            })
                        });
                    } else {
                        metrics::counter!(m::SPLITS).increment(1);
                        let second = items.split_off(items.len() / 2);
                        work.push((second, 0));
                        work.push((items, 0));
                    }
                    break;
                }
                Verdict::RejectAll { reason, message } => {
                    tracing::warn!(%reason, %message, events = items.len(), "eventpipe gateway refused a batch");
                    settle_all(&shared, &items, |_| {
                        Ok(Receipt::Rejected {
                            reason: reason.clone(),
                            path: None,
                            message: message.clone(),
                        })
                    });
                    break;
                }
            };
            if cfg.retry.max_attempts.is_some_and(|max| attempt >= max) {
                settle_all(&shared, &items, |_| {
                    Err(Error::Dropped(DropReason::RetriesExhausted))
                });
                break;
            }
            shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::RETRIES, "cause" => cause.as_str()).increment(1);
            let wait = retry::delay(&cfg.retry, attempt, retry_after, &mut rand::rng());
            tracing::debug!(
                attempt,
                cause = cause.as_str(),
                wait_ms = wait.as_millis() as u64,
                "eventpipe batch will be retried"
            );
            let mut until = Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = aborted(&mut abort) => {
                        work.push((items, attempt));
                        return work.into_iter().flat_map(|(i, _)| i).collect();
                    }
                }
                let taken = shared
                    .budget
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(std::time::Instant::now());
                match taken {
                    Ok(()) => break,
                    Err(more) => until = Instant::now() + more,
                }
            }
        }
    }
    metrics::histogram!(m::BATCH_LATENCY).record(started.elapsed().as_secs_f64());
    Vec::new()
}

fn settle_all(shared: &Shared, items: &[Item], result: impl Fn(&Item) -> Result<Receipt, Error>) {
    let mut s = shared.lock();
    for item in items {
        s.in_flight = s.in_flight.saturating_sub(1);
        shared.settle(&mut s, item.seq, result(item));
    }
    shared.gauges(&s);
}

/// The bundle's JSON: the client's context and the events' fixed JSON, nothing re-encoded.
fn bundle(shared: &Shared, items: &[Item]) -> Vec<u8> {
    let size: usize = items.iter().map(|i| i.size() + 1).sum();
    let mut body = Vec::with_capacity(size + 128);
    body.extend_from_slice(b"{\"sent_at\":\"");
    body.extend_from_slice(crate::event::rfc3339(std::time::SystemTime::now()).as_bytes());
    body.extend_from_slice(b"\",");
    if let Some(ctx) = &shared.cfg.context {
        body.extend_from_slice(b"\"context\":");
        body.extend_from_slice(&serde_json::to_vec(ctx).unwrap_or_else(|_| b"{}".to_vec()));
        body.push(b',');
    }
    body.extend_from_slice(b"\"events\":[");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&item.json);
    }
    body.extend_from_slice(b"]}");
    body
}

fn gzip(body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

async fn post(shared: &Shared, items: &[Item], attempt: u32) -> Result<Answer, reqwest::Error> {
    let body = bundle(shared, items);
    let mut req = shared
        .http
        .post(&shared.endpoint)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(crate::ATTEMPT_HEADER, attempt.to_string());
    let body = match (shared.cfg.gzip && body.len() >= GZIP_MIN_BYTES)
        .then(|| gzip(&body))
        .flatten()
    {
        Some(zipped) => {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
            zipped
        }
        None => body,
    };
    if let Some(key) = &shared.cfg.write_key {
        req = req.basic_auth(key, None::<&str>);
    }
    let mut resp = req.body(body).send().await?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()));
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// One HTTP attempt, traced, timed, counted and shown to the observer.
async fn attempt_once(shared: &Shared, items: &[Item], attempt: u32) -> Verdict {
    let span = tracing::info_span!(
        "eventpipe_client.batch",
        attempt,
        events = items.len(),
        status = tracing::field::Empty
    );
    metrics::counter!(m::SENT).increment(items.len() as u64);
    let started = Instant::now();
    let answer = post(shared, items, attempt).instrument(span.clone()).await;
    let finished = Instant::now();
    let (verdict, status, retry_after, label) = match answer {
        Ok(a) => {
            span.record("status", a.status);
            let label = match a.status {
                413 => "413",
                429 => "429",
                503 => "503",
                200..=299 => "2xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            (
                classify(a.status, a.retry_after, &a.body, items.len()),
                Some(a.status),
                a.retry_after,
                label,
            )
        }
        Err(e) => {
            let cause = if e.is_timeout() {
                RetryCause::Timeout
            } else {
                RetryCause::Connection
            };
            span.record("status", cause.as_str());
            tracing::debug!(parent: &span, error = %e, "eventpipe request failed");
            (
                Verdict::RetryAll {
                    cause,
                    retry_after: None,
                },
                None,
                None,
                "error",
            )
        }
    };
    metrics::histogram!(m::REQUEST_DURATION, "status" => label)
        .record((finished - started).as_secs_f64());
    if let Some(observe) = &shared.observer {
        observe(&Attempt {
            attempt,
            ids: items.iter().map(|i| i.id).collect(),
            started,
            finished,
            status,
            retry_after,
        });
    }
    verdict
}
