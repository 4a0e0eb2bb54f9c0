//! The books: what gateways reported (audit records) against what the topics hold (event ids),
//! per (window, topic, host). Pure bookkeeping, no Kafka: the reader feeds it, `rows` judges.
//!
//! Merge rules (the contract of `AuditRecord` in thrift/eventpipe.thrift): counts are cumulative
//! per (host, boot id, window, topic), so of several records for one key the highest `seq` wins;
//! a host's total is the sum over its boot ids.
//!
//! Pending events (spooled, not delivered yet) keep a window's books open. Only the latest boot
//! of a host (the one with the largest `published_at_ms`) speaks for its spool: a restarted
//! gateway first counts what its predecessor left in the spool as pending in those records' own
//! windows, under its own boot id, then as replayed once delivered; the predecessor's last
//! record keeps a stale pending count forever. So a row's pending is the latest boot's pending
//! for that key, and 0 when the latest boot has no record for it (nothing of it left in the
//! spool). Until the new boot publishes, the old one is the latest and its pending stands: the
//! safe direction (the publisher's contract, /work/helpers/audit-contract.md point 5).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::thrift::generated::AuditRecord;

/// Window size assumed for events when no audit record says one, unless told otherwise
/// (`Books::with_window`; the publisher's default).
pub const DEFAULT_WINDOW_MS: i64 = 60_000;

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub window_start_ms: i64,
    pub topic: String,
    pub host: String,
}

/// The latest record of one boot for one key.
#[derive(Debug, Clone)]
struct BootBooks {
    seq: i64,
    window_ms: i64,
    kafka: i64,
    replayed: i64,
    /// Acknowledged to clients, then refused for good on replay (never in the topic).
    quarantined: i64,
    pending: i64,
}

/// What the topic holds for one key.
#[derive(Debug, Default)]
struct Found {
    /// Distinct event ids.
    ids: HashSet<u128>,
    /// Records that carried an identity (duplicates = this - ids.len()).
    with_id: u64,
    /// Dead letters: counted by record, not deduplicated.
    anonymous: u64,
}

/// How a data record is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    Id(u128),
    /// A dead letter: counted by record (whole-request dead letters carry no event id).
    Anonymous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every reported event was found and no spooled event is outstanding.
    Complete,
    /// Reported events are missing from the topic (closed window).
    Incomplete,
    /// Window end + grace not passed yet: the books may still change.
    Open,
    /// Spooled events still undelivered after the grace: counts as incomplete.
    PendingPastGrace,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Complete,
        Status::Incomplete,
        Status::Open,
        Status::PendingPastGrace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Incomplete => "incomplete",
            Status::Open => "open",
            Status::PendingPastGrace => "pending-past-grace",
        }
    }

    /// Whether the row fails the check (exit code 1).
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Incomplete | Status::PendingPastGrace)
    }
}

/// One verdict: the table's row and `--json`'s object.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub window_start_ms: i64,
    pub window_ms: i64,
    pub topic: String,
    pub host: String,
    /// events_kafka + events_replayed + events_quarantined (acknowledged to clients, refused by
    /// Kafka on replay: never found, so missing until re-sent), summed over boot ids.
    pub reported: i64,
    /// Spooled events still undelivered, as the host's latest boot says (see the module doc).
    pub pending: i64,
    /// Distinct events found in the topic.
    pub found: i64,
    /// reported - found, when positive.
    pub missing: i64,
    /// Records found more than once (same identity).
    pub duplicates: i64,
    /// Found beyond reported + pending; all found events when no audit record covers the key.
    pub unreported: i64,
    /// Whether any audit record covers the key.
    pub audited: bool,
    pub status: Status,
    /// A hint for a row that is short by no more than its duplicates and was reported by more
    /// than one boot: a replay repeated after a crash may be counted by both boots (two reports,
    /// one distinct id). Still incomplete: the counts cannot prove it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// `Row::note` text.
pub const MAYBE_DOUBLE_REPORTED: &str = "may be double-reported after a restart";

pub struct Books {
    reported: BTreeMap<Key, BTreeMap<String, BootBooks>>,
    found: BTreeMap<Key, Found>,
    /// host -> (largest published_at_ms, boot id): the host's latest boot.
    latest_boot: HashMap<String, (i64, String)>,
    /// Window size per host, from its latest records.
    host_window_ms: HashMap<String, i64>,
    /// Window size of the latest record of any host: used for hosts without records.
    fleet_window_ms: Option<i64>,
    /// Used when no record says a window size.
    default_window_ms: i64,
}

impl Default for Books {
    fn default() -> Books {
        Books::new()
    }
}

impl Books {
    pub fn new() -> Books {
        Books::with_window(DEFAULT_WINDOW_MS)
    }

    /// Books whose events of hosts no record describes use `window_ms` windows.
    pub fn with_window(window_ms: i64) -> Books {
        Books {
            reported: BTreeMap::new(),
            found: BTreeMap::new(),
            latest_boot: HashMap::new(),
            host_window_ms: HashMap::new(),
            fleet_window_ms: None,
            default_window_ms: window_ms.max(1),
        }
    }

    /// Merges one audit record (the highest seq per host, boot, window and topic wins).
    pub fn add_record(&mut self, r: &AuditRecord) {
        if r.window_ms <= 0 {
            return;
        }
        let candidate = (r.published_at_ms, r.boot_id.clone());
        match self.latest_boot.get_mut(&r.collector_host) {
            Some(latest) if *latest >= candidate => {}
            Some(latest) => *latest = candidate,
            None => {
                self.latest_boot.insert(r.collector_host.clone(), candidate);
            }
        }
        self.host_window_ms
            .insert(r.collector_host.clone(), r.window_ms);
        self.fleet_window_ms = Some(r.window_ms);
        let key = Key {
            window_start_ms: r.window_start_ms,
            topic: r.topic.clone(),
            host: r.collector_host.clone(),
        };
        let boots = self.reported.entry(key).or_default();
        let new = BootBooks {
            seq: r.seq,
            window_ms: r.window_ms,
            kafka: r.events_kafka,
            replayed: r.events_replayed,
            quarantined: r.events_quarantined.unwrap_or(0).max(0),
            pending: r.events_pending,
        };
        match boots.get_mut(&r.boot_id) {
            Some(old) if old.seq >= r.seq => {}
            Some(old) => *old = new,
            None => {
                boots.insert(r.boot_id.clone(), new);
            }
        }
    }

    /// The window an event received at `received_at_ms` on `host` belongs to.
    pub fn window_start(&self, host: &str, received_at_ms: i64) -> i64 {
        let w = self.window_ms(host);
        received_at_ms.div_euclid(w) * w
    }

    fn window_ms(&self, host: &str) -> i64 {
        self.host_window_ms
            .get(host)
            .copied()
            .or(self.fleet_window_ms)
            .unwrap_or(self.default_window_ms)
    }

    /// Counts one record found in `topic`.
    pub fn add_found(&mut self, topic: &str, host: &str, received_at_ms: i64, id: Identity) {
        let key = Key {
            window_start_ms: self.window_start(host, received_at_ms),
            topic: topic.to_string(),
            host: host.to_string(),
        };
        let found = self.found.entry(key).or_default();
        match id {
            Identity::Id(id) => {
                found.ids.insert(id);
                found.with_id += 1;
            }
            Identity::Anonymous => found.anonymous += 1,
        }
    }

    /// Forgets everything before `before_ms` (windows starting earlier): the lookback bound.
    pub fn prune(&mut self, before_ms: i64) {
        self.reported.retain(|k, _| k.window_start_ms >= before_ms);
        self.found.retain(|k, _| k.window_start_ms >= before_ms);
    }

    /// Forgets what was found in `topic` (it is about to be read again from the start).
    pub fn forget_found(&mut self, topic: &str) {
        self.found.retain(|k, _| k.topic != topic);
    }

    /// Topics the audit records name.
    pub fn topics(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> =
            self.reported.keys().map(|k| &k.topic).collect();
        set.into_iter().cloned().collect()
    }

    /// Distinct identities held (the memory the lookback costs).
    pub fn ids_held(&self) -> usize {
        self.found.values().map(|f| f.ids.len()).sum()
    }

    /// The verdicts for windows starting in `[since_ms, until_ms)`, judged at `now_ms`; rows
    /// with nothing reported, pending or found are left out.
    pub fn rows(&self, now_ms: i64, grace_ms: i64, since_ms: i64, until_ms: i64) -> Vec<Row> {
        let keys: std::collections::BTreeSet<&Key> =
            self.reported.keys().chain(self.found.keys()).collect();
        keys.into_iter()
            .filter(|k| k.window_start_ms >= since_ms && k.window_start_ms < until_ms)
            .map(|k| self.row(k, now_ms, grace_ms))
            // A record with nothing to balance (a dead-letter record with only refusals).
            .filter(|r| r.reported != 0 || r.found != 0 || r.pending != 0)
            .collect()
    }

    fn row(&self, key: &Key, now_ms: i64, grace_ms: i64) -> Row {
        let boots = self.reported.get(key);
        let (reported, pending, window_ms) = match boots {
            Some(boots) => {
                let reported = boots.values().fold(0i64, |sum, b| {
                    sum.saturating_add(
                        b.kafka
                            .saturating_add(b.replayed)
                            .saturating_add(b.quarantined),
                    )
                });
                let pending = self
                    .latest_boot
                    .get(&key.host)
                    .and_then(|(_, boot)| boots.get(boot))
                    .map_or(0, |b| b.pending.max(0));
                let window_ms = boots.values().map(|b| b.window_ms).max().unwrap_or(0);
                (reported, pending, window_ms)
            }
            None => (0, 0, self.window_ms(&key.host)),
        };
        let (found, duplicates) = match self.found.get(&key.clone()) {
            Some(f) => {
                let distinct = f.ids.len() as i64;
                (distinct + f.anonymous as i64, f.with_id as i64 - distinct)
            }
            None => (0, 0),
        };
        let missing = (reported - found).max(0);
        let unreported = if boots.is_some() {
            (found - reported - pending).max(0)
        } else {
            found
        };
        let boot_count = boots.map_or(0, |b| b.len());
        let closes_at = key
            .window_start_ms
            .saturating_add(window_ms)
            .saturating_add(grace_ms);
        let status = if now_ms < closes_at {
            Status::Open
        } else if pending > 0 {
            Status::PendingPastGrace
        } else if missing > 0 {
            Status::Incomplete
        } else {
            Status::Complete
        };
        Row {
            window_start_ms: key.window_start_ms,
            window_ms,
            topic: key.topic.clone(),
            host: key.host.clone(),
            reported,
            pending,
            found,
            missing,
            duplicates,
            unreported,
            audited: boots.is_some(),
            status,
            note: (status == Status::Incomplete && missing <= duplicates && boot_count > 1)
                .then_some(MAYBE_DOUBLE_REPORTED),
        }
    }
}

#[cfg(test)]
#[path = "books_tests.rs"]
mod tests;
