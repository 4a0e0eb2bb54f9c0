//! The load drivers: closed loop (N connections, each sends its next request when the previous
//! answer arrived) and open loop (requests are due at a fixed rate whatever the answers do).
//!
//! Open-loop latency is measured from the *intended* send time: request k is due at
//! `t0 + k / rate`; any free connection takes the next due request, and if every connection is
//! busy the request waits, and that wait is part of its latency. A slow gateway therefore cannot
//! hide its stalls by slowing the client down (coordinated omission). Requests due before the end
//! are all sent (the backlog is drained, up to a grace period), so a run never ends by silently
//! dropping the slowest part of the distribution.
//!
//! A warm-up period runs the same load without recording; its responses still count for the
//! Kafka check (every acknowledged event must be in Kafka).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::client::{Conn, Target};
use crate::gen::{gzip, Generator};

/// How long the open loop may run past its end to drain a backlog.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Closed,
    /// Requests per second.
    Open(f64),
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub connections: usize,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
    pub gzip: bool,
}

/// What the measured window saw, plus totals over the whole run for the Kafka check.
pub struct LoadResult {
    /// Latency in microseconds (from intended send time in open loop).
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Transport errors by kind (connect, io, bad answer).
    pub errors: BTreeMap<&'static str, u64>,
    /// Requests answered within the window.
    pub requests: u64,
    /// Events in 200 answers within the window (accepted + rejected).
    pub events: u64,
    /// Events in the requests answered 200 within the window, as sent.
    pub sent_events: u64,
    /// Request bytes on the wire (after gzip) and before compression, within the window.
    pub wire_bytes: u64,
    pub raw_bytes: u64,
    /// Rejections the generator did not plan (should be 0), within the window.
    pub unexpected_rejections: u64,
    /// The window's length: from its start to the last answer.
    pub elapsed: Duration,
    /// Whole run (warm-up included): accepted (spooled included) and rejected counts of every
    /// 200/202, and how many of the accepted were spooled.
    pub total_accepted: u64,
    pub total_rejected: u64,
    pub total_spooled: u64,
    /// Whole run: events in requests answered 200 (as sent; the http-only handler does not count).
    pub total_events_answered: u64,
    /// Open loop: requests that were due but never sent (drain grace ran out).
    pub unsent: u64,
    /// Open loop: the rate asked for.
    pub target_rate: Option<f64>,
    /// Per second of the window (by due time): requests and the slowest latency in µs, to tell
    /// a stall from a uniformly slow run.
    pub per_second: Vec<(u64, u64)>,
}

impl LoadResult {
    fn new() -> LoadResult {
        LoadResult {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            requests: 0,
            events: 0,
            sent_events: 0,
            wire_bytes: 0,
            raw_bytes: 0,
            unexpected_rejections: 0,
            elapsed: Duration::ZERO,
            total_accepted: 0,
            total_rejected: 0,
            total_spooled: 0,
            total_events_answered: 0,
            unsent: 0,
            target_rate: None,
            per_second: Vec::new(),
        }
    }

    fn merge(&mut self, other: LoadResult) {
        self.latency.add(&other.latency).expect("same bounds");
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.requests += other.requests;
        self.events += other.events;
        self.sent_events += other.sent_events;
        self.wire_bytes += other.wire_bytes;
        self.raw_bytes += other.raw_bytes;
        self.unexpected_rejections += other.unexpected_rejections;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.total_accepted += other.total_accepted;
        self.total_rejected += other.total_rejected;
        self.total_spooled += other.total_spooled;
        self.total_events_answered += other.total_events_answered;
        self.unsent += other.unsent;
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), (0, 0));
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(other.per_second) {
            mine.0 += theirs.0;
            mine.1 = mine.1.max(theirs.1);
        }
    }

    /// The slowest answer of each second, in ms, as one line.
    pub fn max_per_second(&self) -> String {
        self.per_second
            .iter()
            .map(|(_, max)| format!("{:.0}", *max as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.secs()
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.secs()
    }

    /// Megabytes (10^6) of request bodies per second, as sent on the wire.
    pub fn wire_mb_per_sec(&self) -> f64 {
        self.wire_bytes as f64 / 1e6 / self.secs()
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Requests answered neither 200 nor 202, and transport errors.
    pub fn failures(&self) -> u64 {
        let failed: u64 = self
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200 && **s != 202)
            .map(|(_, n)| n)
            .sum();
        failed + self.errors.values().sum::<u64>()
    }
}

struct Shared {
    target: Arc<Target>,
    gen: Arc<Generator>,
    cfg: LoadConfig,
    /// Next request number (closed loop: template choice; open loop: its due time).
    next: AtomicU64,
    t0: Instant,
}

/// Opens every connection, then runs the load.
pub async fn run(
    target: Arc<Target>,
    gen: Arc<Generator>,
    cfg: LoadConfig,
) -> anyhow::Result<LoadResult> {
    let mut conns = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections {
        conns.push(target.connect().await?);
    }
    let shared = Arc::new(Shared {
        target,
        gen,
        cfg: cfg.clone(),
        next: AtomicU64::new(0),
        t0: Instant::now() + Duration::from_millis(20),
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(worker(shared.clone(), conn)))
        .collect();
    let mut result = LoadResult::new();
    for t in tasks {
        result.merge(t.await?);
    }
    if let Mode::Open(rate) = cfg.mode {
        result.target_rate = Some(rate);
    }
    Ok(result)
}

async fn worker(shared: Arc<Shared>, mut conn: Conn) -> LoadResult {
    let mut out = LoadResult::new();
    let cfg = &shared.cfg;
    let window_start = shared.t0 + cfg.warmup;
    let end = window_start + cfg.duration;
    tokio::time::sleep_until(shared.t0).await;
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let due = match cfg.mode {
            Mode::Closed => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
            Mode::Open(rate) => {
                let due = shared.t0 + Duration::from_secs_f64(n as f64 / rate);
                if due >= end {
                    break;
                }
                if Instant::now() > end + DRAIN_GRACE {
                    out.unsent += 1;
                    continue;
                }
                tokio::time::sleep_until(due).await;
                due
            }
        };
        let template = shared.gen.template(n);
        let raw = template.fresh_body();
        let raw_len = raw.len() as u64;
        let body = if cfg.gzip { gzip(&raw) } else { raw };
        let wire_len = body.len() as u64;
        if !conn.is_open() {
            match shared.target.connect().await {
                Ok(c) => conn = c,
                Err(_) => {
                    *out.errors.entry("connect").or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let reply = conn.post(Bytes::from(body), cfg.gzip).await;
        let done = Instant::now();
        let measured = due >= window_start;
        match reply {
            Ok(reply) => {
                if let Some(a) = &reply.answer {
                    out.total_accepted += a.accepted;
                    out.total_rejected += a.rejected.len() as u64;
                    out.total_spooled += a.spooled;
                    out.total_events_answered += template.events as u64;
                }
                if measured {
                    *out.statuses.entry(reply.status).or_default() += 1;
                    out.requests += 1;
                    out.wire_bytes += wire_len;
                    out.raw_bytes += raw_len;
                    let micros = (done - due).as_micros() as u64;
                    let _ = out.latency.record(micros.max(1));
                    let second = (due - window_start).as_secs() as usize;
                    if out.per_second.len() <= second {
                        out.per_second.resize(second + 1, (0, 0));
                    }
                    out.per_second[second].0 += 1;
                    out.per_second[second].1 = out.per_second[second].1.max(micros);
                    out.elapsed = out.elapsed.max(done - window_start);
                    if let Some(a) = reply.answer {
                        out.sent_events += template.events as u64;
                        out.events += a.accepted + a.rejected.len() as u64;
                        let rejected = a.rejected.len() as u64;
                        out.unexpected_rejections +=
                            rejected.saturating_sub(template.invalid as u64);
                    }
                }
            }
            Err(e) => {
                let kind = if e.downcast_ref::<hyper::Error>().is_some() {
                    "io"
                } else {
                    "bad_answer"
                };
                *out.errors.entry(kind).or_default() += 1;
            }
        }
    }
    out
}

/// Opens `count` connections and proves each works with a one-event request; returns the open
/// connections and how many failed. Used to measure the memory cost of idle keep-alive
/// connections.
pub async fn open_idle(
    target: Arc<Target>,
    gen: Arc<Generator>,
    count: usize,
    parallel: usize,
) -> (Vec<Conn>, usize) {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (target, gen, sem) = (target.clone(), gen.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                let mut conn = target.connect().await.ok()?;
                let body = Bytes::from(gen.template(i as u64).fresh_body());
                let reply = conn.post(body, false).await.ok()?;
                (reply.status == 200).then_some(conn)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    let mut failed = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(c) => conns.push(c),
            None => failed += 1,
        }
    }
    (conns, failed)
}

/// Sends one more request on every connection; returns how many still answered 200.
pub async fn still_usable(conns: Vec<Conn>, gen: Arc<Generator>, parallel: usize) -> usize {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (gen, sem) = (gen.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                let body = Bytes::from(gen.template(i as u64).fresh_body());
                let reply = conn.post(body, false).await.ok()?;
                (reply.status == 200).then_some(())
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.ok().flatten().is_some() {
            ok += 1;
        }
    }
    ok
}
