//! `eventpipe audit`: balances the gateways' books (the audit topic) against what the data
//! topics hold, per (window, topic, host), as LinkedIn's Kafka audit and Uber's Chaperone do.
//!
//! One check: read the audit topic to its end (all partitions, from the beginning or from
//! `--since` by timestamp offsets) and merge its `AuditRecord`s (`books`); then read every topic
//! those records name (and those the config's schemas route to, when they load) to its end,
//! decode each record (Thrift `Event`, or `DeadLetter` on the dead-letter topic) and count its
//! identity in (window of `Enrichment.received_at_ms`, topic, `Enrichment.collector_host`). The audit topic is read first: a record is published after the
//! events it counts were acknowledged, so the data read afterwards holds them.
//!
//! Identity: an event's id (distinct ids are what is found; the same id again is a duplicate,
//! never completeness: one duplicate must not hide one loss). The dead-letter topic is balanced
//! by record count, as the gateways count it: whole-request dead letters carry no event id, and
//! a replayed letter cannot be told from a second one, so its duplicates show as unreported.
//! Known false alarms, both short by no more than their duplicates: a crash in the middle of a
//! replay can make two boots report the same record (two reports, one id: the row gets a
//! `note`), and a client's retry of a request answered 503/408 after part of it was acknowledged
//! is produced and reported again unless the host's dedup window caught it. Both still fail.
//!
//! Verdict per row: `open` until window end + `--grace`; then `pending-past-grace` while spooled
//! events are still undelivered, `incomplete` when reported events are missing, else `complete`.
//! Unreported events (found beyond reported + pending, or with no audit record at all: a host
//! that lost its counts to `kill -9`, an audit publish that failed) are shown and exported but
//! do not fail the check: nothing was lost. Exit 0: every closed window complete; 1: something
//! incomplete or pending past grace; 2: the check itself failed.
//!
//! Memory: one 16-byte identity per distinct event in the lookback (about 30 bytes with the hash
//! set), plus a few counters per (window, topic, host). `--watch` keeps its consumer positions
//! and reads only what is new each interval (see `watch`).

pub mod books;
pub mod read;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use books::{Books, Identity, Row, Status};
use read::Reader;

use crate::thrift::generated::AuditRecord;
use crate::thrift::{self, DeadLetter, Event};

/// `--since` / `--until`: a point in time, or a duration before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// Milliseconds since the Unix epoch (RFC 3339 given).
    At(i64),
    /// This long before the check (e.g. `15m`).
    Ago(Duration),
}

impl TimeArg {
    pub fn resolve(self, now_ms: i64) -> i64 {
        match self {
            TimeArg::At(ms) => ms,
            TimeArg::Ago(d) => now_ms.saturating_sub(d.as_millis() as i64),
        }
    }
}

/// Parses `15m`, `2h`, `30s`, `500ms`, `1d` (or a bare `0`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: a unit is needed (ms, s, m, h, d)"))?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a number followed by ms, s, m, h or d"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Parses an RFC 3339 time (`2026-11-23T17:00:00Z`) or a duration before now (`15m`).
pub fn parse_time(s: &str) -> Result<TimeArg, String> {
    if let Ok(d) = parse_duration(s) {
        return Ok(TimeArg::Ago(d));
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?}: neither RFC 3339 ({e}) nor a duration like 15m"))?;
    Ok(TimeArg::At((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

#[derive(Clone)]
pub struct AuditOptions {
    pub brokers: String,
    /// The config's `kafka.librdkafka` (its security and network settings are used).
    pub librdkafka: BTreeMap<String, String>,
    pub audit_topic: String,
    /// Decoded as `DeadLetter` (so are topics whose audit records carry `dead_letters`).
    pub dead_letter_topic: String,
    pub since: Option<TimeArg>,
    pub until: Option<TimeArg>,
    pub grace: Duration,
    /// Reading a topic to its end offsets must finish within this.
    pub read_timeout: Duration,
    /// Data topics read even when no audit record names them (the config's routing), so that
    /// events of a gateway that publishes nothing show up as unreported.
    pub extra_topics: Vec<String>,
    /// Window size for events when no audit record says one (the config's audit.window_secs).
    pub default_window: Duration,
}

/// What one check saw besides the rows.
#[derive(Debug, Default)]
pub struct Notes {
    /// Topics the audit records name that do not exist (all their events are missing).
    pub absent_topics: Vec<String>,
    pub undecodable_audit: u64,
    pub undecodable_data: u64,
}

/// The state of a check: the books and the reader's positions (kept across `--watch` rounds).
pub struct Auditor {
    opts: AuditOptions,
    books: Books,
    reader: Reader,
    dead_letter_topics: BTreeSet<String>,
    data_topics: BTreeSet<String>,
    /// Lookback start fixed when the auditor was made (the reader starts there).
    start_ms: Option<i64>,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Auditor {
    pub fn new(opts: AuditOptions) -> anyhow::Result<Auditor> {
        let start_ms = opts.since.map(|s| s.resolve(now_ms()));
        let reader = Reader::new(&opts.brokers, &opts.librdkafka, start_ms, opts.read_timeout)?;
        let dead_letter_topics = BTreeSet::from([opts.dead_letter_topic.clone()]);
        Ok(Auditor {
            books: Books::with_window(opts.default_window.as_millis() as i64),
            data_topics: opts.extra_topics.iter().cloned().collect(),
            opts,
            reader,
            dead_letter_topics,
            start_ms,
        })
    }

    /// Reads what is new in the audit topic, then in the data topics it names, and judges.
    pub fn check(&mut self) -> anyhow::Result<(Vec<Row>, Notes)> {
        let mut notes = Notes::default();
        let books = &mut self.books;
        let dead_letter_topics = &mut self.dead_letter_topics;
        let absent = self
            .reader
            .catch_up(
                std::slice::from_ref(&self.opts.audit_topic),
                |_, payload| match thrift::from_compact_bytes::<AuditRecord>(payload) {
                    Ok(r) => {
                        if r.dead_letters.is_some() {
                            dead_letter_topics.insert(r.topic.clone());
                        }
                        books.add_record(&r);
                    }
                    Err(_) => notes.undecodable_audit += 1,
                },
            )
            .context("reading the audit topic")?;
        if !absent.is_empty() {
            anyhow::bail!("the audit topic {} does not exist", self.opts.audit_topic);
        }
        self.data_topics.extend(self.books.topics());
        let topics: Vec<String> = self.data_topics.iter().cloned().collect();
        let books = &mut self.books;
        let dead_letter_topics = &self.dead_letter_topics;
        notes.absent_topics = self
            .reader
            .catch_up(&topics, |topic, payload| {
                match identify(payload, dead_letter_topics.contains(topic)) {
                    Some((host, at, id)) => books.add_found(topic, &host, at, id),
                    None => notes.undecodable_data += 1,
                }
            })
            .context("reading the data topics")?;
        for topic in &notes.absent_topics {
            self.books.forget_found(topic);
        }
        // Only a topic audit records name is expected to exist (the config may route to more).
        let named = self.books.topics();
        notes.absent_topics.retain(|t| named.contains(t));
        let now = now_ms();
        let since = self.since_ms(now);
        if let Some(since) = since {
            self.books.prune(since);
        }
        let until = self.opts.until.map_or(i64::MAX, |u| u.resolve(now));
        let rows = self.books.rows(
            now,
            self.opts.grace.as_millis() as i64,
            since.unwrap_or(i64::MIN),
            until,
        );
        Ok((rows, notes))
    }

    /// Windows starting before this are not judged (nor kept): the later of the start the
    /// reader began at and the sliding lookback.
    fn since_ms(&self, now: i64) -> Option<i64> {
        match (self.start_ms, self.opts.since.map(|s| s.resolve(now))) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Distinct identities held (memory of the lookback).
    pub fn ids_held(&self) -> usize {
        self.books.ids_held()
    }
}

/// (collector host, receive time, identity) of a data record; None when undecodable.
fn identify(payload: &[u8], dead_letter: bool) -> Option<(String, i64, Identity)> {
    if dead_letter {
        let e = thrift::from_compact_bytes::<DeadLetter>(payload)
            .ok()?
            .enrichment;
        return Some((e.collector_host, e.received_at_ms, Identity::Anonymous));
    }
    let event: Event = thrift::from_compact_bytes(payload).ok()?;
    let id = match uuid::Uuid::try_parse(&event.event_id) {
        Ok(u) => u.as_u128(),
        Err(_) => digest(event.event_id.as_bytes()),
    };
    let e = event.enrichment;
    Some((e.collector_host, e.received_at_ms, Identity::Id(id)))
}

fn digest(bytes: &[u8]) -> u128 {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&d.as_ref()[..16]);
    u128::from_be_bytes(first)
}

pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Exit code of a set of rows: 1 when any closed window failed, else 0.
pub fn exit_code(rows: &[Row]) -> u8 {
    u8::from(rows.iter().any(|r| r.status.is_failure()))
}

/// Prints the rows: a table, or one JSON object per row.
pub fn print(rows: &[Row], json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        for r in rows {
            let mut v = serde_json::to_value(r).map_err(std::io::Error::other)?;
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("window".into(), format_ms(r.window_start_ms).into());
            }
            writeln!(out, "{v}")?;
        }
        return out.flush();
    }
    let topic_w = rows.iter().map(|r| r.topic.len()).max().unwrap_or(5).max(5);
    let host_w = rows.iter().map(|r| r.host.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<20}  {:<topic_w$}  {:<host_w$}  {:>9}  {:>9}  {:>8}  {:>10}  {:>10}  {:>8}  STATUS",
        "WINDOW",
        "TOPIC",
        "HOST",
        "REPORTED",
        "FOUND",
        "MISSING",
        "DUPLICATES",
        "UNREPORTED",
        "PENDING"
    )?;
    let mut last_window = None;
    for r in rows {
        if last_window.is_some_and(|w| w != r.window_start_ms) {
            writeln!(out)?;
        }
        last_window = Some(r.window_start_ms);
        let window = format_ms(r.window_start_ms);
        writeln!(
            out,
            "{window:<20}  {:<topic_w$}  {:<host_w$}  {:>9}  {:>9}  {:>8}  {:>10}  {:>10}  {:>8}  {}{}{}",
            r.topic,
            r.host,
            r.reported,
            r.found,
            r.missing,
            r.duplicates,
            r.unreported,
            r.pending,
            r.status.as_str(),
            if r.audited { "" } else { " (no audit record)" },
            r.note.map(|n| format!(" ({n})")).unwrap_or_default(),
        )?;
    }
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    writeln!(
        out,
        "\n{} rows: {} complete, {} incomplete, {} open, {} pending-past-grace; missing {}, duplicates {}, unreported {}",
        rows.len(),
        count(Status::Complete),
        count(Status::Incomplete),
        count(Status::Open),
        count(Status::PendingPastGrace),
        rows.iter().map(|r| r.missing).sum::<i64>(),
        rows.iter().map(|r| r.duplicates).sum::<i64>(),
        rows.iter().map(|r| r.unreported).sum::<i64>(),
    )?;
    out.flush()
}

/// Warnings a check's notes call for, on stderr.
pub fn warn(notes: &Notes) {
    for t in &notes.absent_topics {
        eprintln!(
            "warning: topic {t} named by audit records does not exist: its events count as missing"
        );
    }
    if notes.undecodable_audit > 0 {
        eprintln!(
            "warning: {} undecodable audit record(s) ignored",
            notes.undecodable_audit
        );
    }
    if notes.undecodable_data > 0 {
        eprintln!(
            "warning: {} undecodable data record(s) not counted",
            notes.undecodable_data
        );
    }
}

/// One check, printed; returns the exit code (0 complete, 1 incomplete, 2 error).
pub fn run_once(opts: AuditOptions, json: bool) -> u8 {
    let result = Auditor::new(opts).and_then(|mut a| a.check());
    match result {
        Ok((rows, notes)) => {
            warn(&notes);
            if let Err(e) = print(&rows, json, &mut std::io::stdout().lock()) {
                eprintln!("error: writing the report: {e}");
                return 2;
            }
            exit_code(&rows)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("15w").is_err());
        assert_eq!(
            parse_time("1h"),
            Ok(TimeArg::Ago(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_time("2026-11-23T17:00:00Z"),
            Ok(TimeArg::At(1_795_453_200_000))
        );
        assert_eq!(
            parse_time("2026-11-23T18:00:00+01:00"),
            Ok(TimeArg::At(1_795_453_200_000))
        );
        assert!(parse_time("yesterday").is_err());
        assert_eq!(TimeArg::Ago(Duration::from_secs(1)).resolve(5_000), 4_000);
    }
}
