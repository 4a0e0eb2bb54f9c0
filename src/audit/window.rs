//! The books: cumulative counts per (window, topic) cell, under one short lock.
//!
//! A cell is created by the first count for its key, changed by every later one (a slow
//! request, a replayed or quarantined spooled record), and carries a `version` bumped on every
//! change and the version last published. The publisher takes snapshots of closed cells whose
//! version is ahead (`due`) and marks them published when Kafka acknowledged them (`published`).
//! A cell is dropped only when nothing can change it from this boot's side any more in the usual
//! course: closed, published at its latest version, nothing pending, unchanged for `keep`.
//! Memory is bounded by `max_cells`: at the cap the oldest droppable cell makes room; if none is
//! droppable the count is lost to the audit and counted in `eventpipe_audit_overflow_total`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::metrics as m;

/// Distinct dead-letter reasons kept per cell; further ones are counted under `other`.
const MAX_REASONS: usize = 64;

/// One (window, topic) cell's cumulative counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records acknowledged by Kafka within their request's deadline.
    pub events_kafka: i64,
    /// Spooled records the replayer has since had acknowledged.
    pub events_replayed: i64,
    /// Spooled records of this boot not yet acknowledged nor quarantined.
    pub events_pending: i64,
    /// Payload bytes of the records in `events_kafka` + `events_replayed`.
    pub bytes: i64,
    /// Dead-letter topic only: dead letters acknowledged (directly or by replay), by reason.
    pub dead_letters: BTreeMap<String, i64>,
    /// Dead-letter topic only: whole requests refused, by reason.
    pub requests_refused: BTreeMap<&'static str, i64>,
    /// Spooled records moved to the quarantine by replay (never in their topic).
    pub quarantined: i64,
}

struct Cell {
    counts: Counts,
    version: u64,
    published: u64,
    changed_ms: i64,
}

/// A cell's counts at one version, to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub window_start_ms: i64,
    pub topic: Arc<str>,
    pub counts: Counts,
    pub version: u64,
}

/// What one group of a request's records (same topic, same dead-letter reason) added up to.
#[derive(Debug, Clone, Default)]
pub struct Delta<'a> {
    pub kafka: i64,
    pub pending: i64,
    pub bytes: i64,
    /// Set for dead letters: `kafka` of them are added to `dead_letters[reason]`.
    pub reason: Option<&'a str>,
}

/// The cumulative counts of this boot, by (window start, topic).
pub struct Books {
    enabled: bool,
    window_ms: i64,
    max_cells: usize,
    keep_ms: i64,
    dead_letter_topic: Arc<str>,
    cells: Mutex<BTreeMap<(i64, Arc<str>), Cell>>,
}

impl Books {
    pub fn new(
        enabled: bool,
        window_ms: i64,
        max_cells: usize,
        keep_ms: i64,
        dead_letter_topic: &str,
    ) -> Books {
        Books {
            enabled,
            window_ms: window_ms.max(1),
            max_cells: max_cells.max(1),
            keep_ms,
            dead_letter_topic: dead_letter_topic.into(),
            cells: Mutex::new(BTreeMap::new()),
        }
    }

    /// Books that count nothing (audit off).
    pub fn disabled() -> Books {
        Books::new(false, 60_000, 1, 0, "")
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    pub fn dead_letter_topic(&self) -> &Arc<str> {
        &self.dead_letter_topic
    }

    /// The start of the window `ms` falls in.
    pub fn window_of(&self, ms: i64) -> i64 {
        ms.div_euclid(self.window_ms) * self.window_ms
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(i64, Arc<str>), Cell>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to the cell of (`window of at_ms`, `topic`), creating it if there is
    /// room. False if the count was lost to the cap.
    fn change(
        &self,
        cells: &mut BTreeMap<(i64, Arc<str>), Cell>,
        at_ms: i64,
        topic: &Arc<str>,
        now_ms: i64,
        change: impl FnOnce(&mut Counts),
    ) -> bool {
        let key = (self.window_of(at_ms), topic.clone());
        if !cells.contains_key(&key) {
            if cells.len() >= self.max_cells && !self.make_room(cells, now_ms) {
                return false;
            }
            cells.insert(
                key.clone(),
                Cell {
                    counts: Counts::default(),
                    version: 0,
                    published: 0,
                    changed_ms: now_ms,
                },
            );
        }
        let Some(cell) = cells.get_mut(&key) else {
            return false;
        };
        change(&mut cell.counts);
        cell.version += 1;
        cell.changed_ms = now_ms;
        true
    }

    /// Drops the oldest droppable cell; false if none is.
    fn make_room(&self, cells: &mut BTreeMap<(i64, Arc<str>), Cell>, now_ms: i64) -> bool {
        let victim = cells
            .iter()
            .find(|(k, c)| self.settled(k.0, c, now_ms, 0))
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => {
                cells.remove(&k);
                true
            }
            None => false,
        }
    }

    /// Closed, published at its latest version, nothing pending, unchanged for `keep_ms`.
    fn settled(&self, window_start: i64, c: &Cell, now_ms: i64, keep_ms: i64) -> bool {
        window_start + self.window_ms <= now_ms
            && c.published == c.version
            && c.counts.events_pending == 0
            && c.changed_ms + keep_ms <= now_ms
    }

    /// One request's records, all received at `received_at_ms`: one lock for all its groups.
    pub fn request<'a>(
        &self,
        received_at_ms: i64,
        groups: impl Iterator<Item = (&'a Arc<str>, Delta<'a>)>,
    ) {
        if !self.enabled {
            return;
        }
        let now = crate::now_ms();
        let mut lost = 0;
        let mut cells = self.lock();
        for (topic, d) in groups {
            if d.kafka == 0 && d.pending == 0 {
                continue;
            }
            let ok = self.change(&mut cells, received_at_ms, topic, now, |c| {
                c.events_kafka += d.kafka;
                c.events_pending += d.pending;
                c.bytes += d.bytes;
                if let Some(reason) = d.reason {
                    if d.kafka > 0 {
                        add_reason(&mut c.dead_letters, reason, d.kafka);
                    }
                }
            });
            if !ok {
                lost += d.kafka + d.pending;
            }
        }
        drop(cells);
        if lost > 0 {
            metrics::counter!(m::AUDIT_OVERFLOW, "kind" => "events").increment(lost as u64);
        }
    }

    /// A whole request refused with `reason`, now (on the dead-letter topic's record).
    pub fn refused(&self, reason: &'static str) {
        if !self.enabled {
            return;
        }
        let now = crate::now_ms();
        let topic = self.dead_letter_topic.clone();
        let ok = self.change(&mut self.lock(), now, &topic, now, |c| {
            *c.requests_refused.entry(reason).or_default() += 1;
        });
        if !ok {
            metrics::counter!(m::AUDIT_OVERFLOW, "kind" => "refusals").increment(1);
        }
    }

    /// A record inherited from an earlier process's spool, to be replayed by this one.
    pub fn pending(&self, received_at_ms: i64, topic: &Arc<str>) {
        if !self.enabled {
            return;
        }
        let now = crate::now_ms();
        let ok = self.change(&mut self.lock(), received_at_ms, topic, now, |c| {
            c.events_pending += 1;
        });
        if !ok {
            metrics::counter!(m::AUDIT_OVERFLOW, "kind" => "events").increment(1);
        }
    }

    /// A spooled record (this process's or an inherited one) acknowledged by Kafka through
    /// the replayer: from pending to replayed.
    pub fn replayed(
        &self,
        received_at_ms: i64,
        topic: &Arc<str>,
        bytes: usize,
        dead_letter_reason: Option<&str>,
    ) {
        if !self.enabled {
            return;
        }
        let now = crate::now_ms();
        let ok = self.change(&mut self.lock(), received_at_ms, topic, now, |c| {
            c.events_replayed += 1;
            c.bytes += bytes as i64;
            if c.events_pending > 0 {
                c.events_pending -= 1;
            }
            if let Some(reason) = dead_letter_reason {
                add_reason(&mut c.dead_letters, reason, 1);
            }
        });
        if !ok {
            metrics::counter!(m::AUDIT_OVERFLOW, "kind" => "events").increment(1);
        }
    }

    /// A spooled record moved to the quarantine by replay: no longer pending, never delivered.
    pub fn quarantined(&self, received_at_ms: i64, topic: &Arc<str>) {
        if !self.enabled {
            return;
        }
        let now = crate::now_ms();
        let ok = self.change(&mut self.lock(), received_at_ms, topic, now, |c| {
            c.quarantined += 1;
            if c.events_pending > 0 {
                c.events_pending -= 1;
            }
        });
        if !ok {
            metrics::counter!(m::AUDIT_OVERFLOW, "kind" => "events").increment(1);
        }
    }

    /// Snapshots of the cells whose latest counts are not published yet: those of windows that
    /// ended at least `delay_ms` ago, or every one when `all` (shutdown: no request is left).
    /// Also drops settled cells.
    pub fn due(&self, now_ms: i64, delay_ms: i64, all: bool) -> Vec<Snapshot> {
        let mut cells = self.lock();
        let keep = self.keep_ms;
        cells.retain(|k, c| !self.settled(k.0, c, now_ms, keep));
        cells
            .iter()
            .filter(|(k, c)| {
                c.version != c.published && (all || k.0 + self.window_ms + delay_ms <= now_ms)
            })
            .map(|(k, c)| Snapshot {
                window_start_ms: k.0,
                topic: k.1.clone(),
                counts: c.counts.clone(),
                version: c.version,
            })
            .collect()
    }

    /// Kafka acknowledged `snap`: its cell is published up to its version.
    pub fn published(&self, snap: &Snapshot) {
        let mut cells = self.lock();
        if let Some(c) = cells.get_mut(&(snap.window_start_ms, snap.topic.clone())) {
            c.published = c.published.max(snap.version);
        }
    }

    /// Cells of windows past their publish delay whose latest counts are not published.
    pub fn unpublished(&self, now_ms: i64, delay_ms: i64) -> usize {
        self.lock()
            .iter()
            .filter(|(k, c)| c.version != c.published && k.0 + self.window_ms + delay_ms <= now_ms)
            .count()
    }

    /// Cells held (tests, and the bound).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counts of one cell (tests).
    pub fn counts(&self, window_start_ms: i64, topic: &str) -> Option<Counts> {
        self.lock()
            .iter()
            .find(|(k, _)| k.0 == window_start_ms && &*k.1 == topic)
            .map(|(_, c)| c.counts.clone())
    }
}

fn add_reason(map: &mut BTreeMap<String, i64>, reason: &str, n: i64) {
    if let Some(v) = map.get_mut(reason) {
        *v += n;
    } else if map.len() < MAX_REASONS {
        map.insert(reason.to_owned(), n);
    } else {
        *map.entry("other".to_owned()).or_default() += n;
    }
}
