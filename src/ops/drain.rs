//! `eventpipe spool drain`: sends an orphaned spool (a dead host's disk, a PVC mounted on another
//! pod) to Kafka and exits once it is empty.
//!
//! It is the gateway's own machinery without the HTTP side: [`Spool::open`] takes the directory's
//! `LOCK` (`flock`, exclusive, not waiting: a directory a live gateway or another drain holds is
//! refused), cuts torn tails and sets aside unreadable files exactly as a gateway's start-up
//! would, and the gateway's replayer ([`spawn_replayer`], with [`crate::server::replay_options`])
//! sends the segments oldest first with the gateway's producer settings (idempotent, acks=all)
//! and quarantines what Kafka refuses for good under the same rules. Nothing here reads a
//! segment itself, so a drained spool ends exactly as if its gateway had come back.
//!
//! Interrupting is safe at any point (SIGINT, SIGTERM or kill -9): checkpoints move only after
//! Kafka acknowledged (or the quarantine fsynced) every record before them, so a rerun resumes
//! at the last checkpoint; records acknowledged after it are sent again (duplicates with the
//! same event id, never a loss). On SIGINT/SIGTERM the lock is released at once without waiting
//! for the batch in flight; the audit records counted so far get at most 5 s to be published.
//!
//! Giving up: when nothing was acknowledged or quarantined for `timeout` (default 10 minutes)
//! the drain exits non-zero, leaving the spool as it is. Ten minutes outlasts a broker restart
//! or a leader election (and a few of the replayer's 35-second batch waits), while a script or a
//! Kubernetes Job still fails visibly instead of hanging for ever on a wrong `--brokers` or a
//! cluster that is down; `--timeout 0` waits for ever.
//!
//! Audit: with [`Connection::audit`], the drain publishes the audit records a restarted gateway
//! on this spool would, under the dead host's identity (`crate::ops::drain_audit`), and flushes
//! them before returning a complete drain.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::sink::spool::{quarantine, spawn_replayer, Content, ReplayOptions, ReplayTarget};
use crate::sink::spool::{Spool, SpoolOptions};

pub use super::drain_audit::{AuditStatus, AuditSummary, DrainAudit};

/// What to drain and how.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    pub dir: PathBuf,
    pub replay: ReplayOptions,
    /// Give up when nothing was acknowledged or quarantined for this long (None: never).
    pub timeout: Option<Duration>,
    /// One progress line on stderr this often.
    pub progress_every: Duration,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every record was acknowledged or quarantined; the segments are deleted.
    Drained,
    /// There was nothing to replay.
    Empty,
    /// SIGINT/SIGTERM: stopped at the last checkpoint; run again to resume.
    Interrupted,
    /// Nothing was acknowledged or quarantined for the timeout.
    TimedOut,
}

/// The final summary (printed as text or JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dir: String,
    pub outcome: Outcome,
    /// Records waiting for replay when the drain started, and their bytes in the segments.
    pub records_total: u64,
    pub bytes_total: u64,
    /// Records acknowledged by Kafka during this run.
    pub replayed: u64,
    /// Quarantine entries this run added (records refused for good, damaged byte ranges).
    pub quarantined: u64,
    pub quarantined_by_reason: BTreeMap<String, u64>,
    /// Records still in the spool.
    pub remaining: u64,
    /// Files start-up found unreadable and set aside in `quarantine/` (kept for an operator).
    pub set_aside: Vec<String>,
    pub duration_secs: f64,
    /// The audit records of the drain (None: not audited, or nothing to drain).
    pub audit: Option<AuditSummary>,
}

impl Summary {
    /// One line for people: what happened, and what to do next if anything.
    pub fn text(&self) -> String {
        let mut line = match self.outcome {
            Outcome::Empty => format!("spool {} is empty: nothing to drain", self.dir),
            Outcome::Drained => format!("drained {}", self.dir),
            Outcome::Interrupted => format!("interrupted: {} not drained", self.dir),
            Outcome::TimedOut => format!("gave up: {} not drained", self.dir),
        };
        if self.outcome != Outcome::Empty || !self.set_aside.is_empty() {
            let reasons: Vec<String> = self
                .quarantined_by_reason
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            line.push_str(&format!(
                ": {} replayed, {} quarantined{}, {} left, in {:.1}s",
                self.replayed,
                self.quarantined,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                },
                self.remaining,
                self.duration_secs
            ));
        }
        if self.quarantined > 0 {
            line.push_str(&format!(
                "\nquarantined entries are kept: list them with `eventpipe spool quarantine --dir {}`",
                self.dir
            ));
        }
        if !self.set_aside.is_empty() {
            line.push_str(&format!(
                "\nunreadable files set aside (kept whole, for an operator): {}",
                self.set_aside.join(", ")
            ));
        }
        if let Some(a) = &self.audit {
            line.push('\n');
            line.push_str(&a.text());
        }
        if matches!(self.outcome, Outcome::Interrupted | Outcome::TimedOut) {
            line.push_str(
                "\nnothing was lost: run `eventpipe spool drain` again to resume \
                 (records sent since the last checkpoint are sent again, with the same event ids)",
            );
        }
        line
    }
}

/// Quarantine entries of the spool by reason, and its `*.unreadable` files.
fn quarantine_state(dir: &Path) -> (BTreeMap<String, u64>, u64, Vec<String>) {
    let mut by_reason = BTreeMap::new();
    let mut records = 0;
    for l in quarantine::list(dir).unwrap_or_default() {
        *by_reason.entry(l.entry.reason.clone()).or_insert(0) += 1;
        if matches!(l.entry.content, Content::Record(_)) {
            records += 1;
        }
    }
    let unreadable = std::fs::read_dir(quarantine::quarantine_dir(dir))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".unreadable"))
                .collect()
        })
        .unwrap_or_default();
    (by_reason, records, unreadable)
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Where a drain sends records: the replay target and whether Kafka's metadata answers (shown
/// when nothing moves).
pub struct Connection {
    pub target: Arc<dyn ReplayTarget>,
    pub reachable: Box<dyn Fn() -> bool + Send + Sync>,
    /// The drain's audit (its replay audit must be the target's).
    pub audit: Option<DrainAudit>,
}

/// Drains the spool at `opts.dir` until it is empty, `interrupt` resolves, or nothing moves for
/// the timeout. `connect` is called once the spool is locked and known not to be empty (no
/// Kafka client for a directory that is refused or empty) with the opened spool, before the
/// replayer starts. Progress lines go to `progress`.
/// Errors: the directory is missing, not a directory, locked by a live process, or cannot be
/// opened; `connect` failed.
pub async fn drain(
    opts: &DrainOptions,
    connect: impl FnOnce(&Spool) -> anyhow::Result<Connection>,
    interrupt: impl Future<Output = ()>,
    progress: &mut impl Write,
) -> anyhow::Result<Summary> {
    let dir = &opts.dir;
    let shown = dir.display().to_string();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("{shown} is not a directory"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("spool directory {shown} does not exist")
        }
        Err(e) => return Err(e).with_context(|| format!("reading spool directory {shown}")),
    }
    let started = Instant::now();
    let (q_before, q_records_before, unreadable_before) = quarantine_state(dir);
    let spool = Spool::open(SpoolOptions {
        dir: dir.clone(),
        // Nothing is appended: the limits only matter to a gateway.
        max_bytes: u64::MAX,
        max_age: Duration::from_secs(u64::from(u32::MAX)),
        segment_bytes: 16 << 20,
        seal_after: Duration::from_millis(500),
        io_error_backoff: Duration::from_secs(1),
    })
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            anyhow::anyhow!(
                "spool directory {shown} is locked by a live process (a gateway or another \
                 `spool drain`): refusing to drain it. A running gateway replays its own spool; \
                 stop it first if this directory must be drained from here"
            )
        } else {
            anyhow::Error::new(e).context(format!("opening spool directory {shown}"))
        }
    })?;
    let records_total = spool.stats().records;
    let bytes_total = spool.pending_bytes();
    let segments = spool.stats().sealed_segments;
    let summary = |outcome: Outcome, spool: &Spool| {
        let (q_after, q_records_after, unreadable_after) = quarantine_state(dir);
        let mut by_reason = BTreeMap::new();
        for (reason, n) in &q_after {
            let added = n.saturating_sub(q_before.get(reason).copied().unwrap_or(0));
            if added > 0 {
                by_reason.insert(reason.clone(), added);
            }
        }
        let remaining = if outcome == Outcome::Drained {
            0
        } else {
            spool.stats().records
        };
        let done = records_total.saturating_sub(remaining);
        let quarantined_records = q_records_after.saturating_sub(q_records_before);
        Summary {
            dir: shown.clone(),
            outcome,
            records_total,
            bytes_total,
            replayed: done.saturating_sub(quarantined_records),
            quarantined: by_reason.values().sum(),
            quarantined_by_reason: by_reason,
            remaining,
            set_aside: unreadable_after
                .into_iter()
                .filter(|n| !unreadable_before.contains(n))
                .collect(),
            duration_secs: started.elapsed().as_secs_f64(),
            audit: None,
        }
    };
    if spool.is_empty() {
        spool.close().await;
        return Ok(summary(Outcome::Empty, &spool));
    }
    let Connection {
        target,
        reachable: kafka_reachable,
        audit,
    } = match connect(&spool) {
        Ok(c) => c,
        Err(e) => {
            spool.close().await;
            return Err(e);
        }
    };
    let _ = writeln!(
        progress,
        "draining {records_total} records ({}) in {segments} segment{} from {shown}",
        human_bytes(bytes_total as f64),
        if segments == 1 { "" } else { "s" }
    );
    if let Some(a) = &audit {
        let _ = writeln!(progress, "{}", a.started_line());
    }
    let replayer = spawn_replayer(&spool, target, opts.replay.clone());
    tokio::pin!(interrupt);
    let poll = opts.progress_every.min(Duration::from_millis(200));
    let mut last_print = Instant::now();
    let mut last_move = Instant::now();
    let mut last_seen = (records_total, bytes_total);
    let mut bytes_done = 0u64;
    let outcome = loop {
        tokio::select! {
            _ = &mut interrupt => break Outcome::Interrupted,
            _ = tokio::time::sleep(poll) => {}
        }
        if spool.is_empty() {
            break Outcome::Drained;
        }
        let left = (spool.stats().records, spool.pending_bytes());
        if left != last_seen {
            last_move = Instant::now();
            last_seen = left;
        }
        // Monotonic: a segment between deletion and dequeue must not look unread again.
        bytes_done = bytes_done.max(bytes_total.saturating_sub(left.1));
        if opts.timeout.is_some_and(|t| last_move.elapsed() >= t) {
            break Outcome::TimedOut;
        }
        if last_print.elapsed() >= opts.progress_every {
            last_print = Instant::now();
            let done = records_total.saturating_sub(left.0);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let rate = done as f64 / secs;
            let eta = if last_move.elapsed() >= opts.progress_every.max(Duration::from_secs(5)) {
                format!(
                    "ETA unknown: nothing acknowledged for {}, kafka {}",
                    human_duration(last_move.elapsed()),
                    if kafka_reachable() {
                        "reachable"
                    } else {
                        "unreachable"
                    }
                )
            } else if rate > 0.0 {
                format!(
                    "ETA {}",
                    human_duration(Duration::from_secs_f64(left.0 as f64 / rate))
                )
            } else {
                "ETA unknown".to_owned()
            };
            let _ = writeln!(
                progress,
                "drain: {done}/{records_total} records ({:.1}%), {}/{}, {rate:.0} records/s, {}/s, {eta}",
                100.0 * done as f64 / records_total.max(1) as f64,
                human_bytes(bytes_done as f64),
                human_bytes(bytes_total as f64),
                human_bytes(bytes_done as f64 / secs),
            );
        }
    };
    // Closing stops the replayer at its next checkpoint and releases the lock. When stopping
    // early, the batch in flight is abandoned: its checkpoint has not moved, so a rerun sends it
    // again.
    spool.close().await;
    if outcome == Outcome::Drained {
        let _ = tokio::time::timeout(Duration::from_secs(5), replayer).await;
    } else {
        replayer.abort();
    }
    let mut summary = summary(outcome, &spool);
    if let Some(a) = audit {
        use super::drain_audit::{FLUSH_BUDGET, INTERRUPT_FLUSH_BUDGET};
        let budget = match outcome {
            Outcome::Drained => Some(FLUSH_BUDGET),
            Outcome::Interrupted => Some(INTERRUPT_FLUSH_BUDGET),
            // Kafka acknowledged nothing for the timeout: the audit would not get through.
            Outcome::TimedOut | Outcome::Empty => None,
        };
        if budget.is_some() {
            let _ = writeln!(progress, "audit: publishing the last audit records");
        }
        summary.audit = Some(a.finish(outcome == Outcome::Drained, budget).await);
    }
    if outcome == Outcome::TimedOut {
        let _ = writeln!(
            progress,
            "kafka acknowledged nothing for {} (metadata {}): giving up",
            human_duration(opts.timeout.unwrap_or_default()),
            if kafka_reachable() {
                "reachable: records are being retried, check the broker logs"
            } else {
                "unreachable: check --brokers and the network"
            }
        );
    }
    Ok(summary)
}

/// Parses `--timeout`-style durations: `600`, `600s`, `10m`, `1h`, `500ms`; `0` means none.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 600, 90s, 10m, 1h)"))?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    match unit {
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "ms" => Some(Duration::from_millis(n)),
        _ => None,
    }
    .ok_or_else(|| format!("`{s}` is not a duration (e.g. 600, 90s, 10m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "m", "10x", "-1", "1.5m", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(7300)), "2h01m");
    }
}
