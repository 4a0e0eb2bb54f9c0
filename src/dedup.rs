//! A bounded, per-host window of recently acknowledged client event ids.
//!
//! A client that retries a bundle after a timeout or a dropped connection resends event ids the
//! gateway may already have made durable. Ids found here are answered as accepted without being
//! produced again. Limits, by design: the window is per host (a retry that the load balancer
//! sends to another host is not caught; no sticky sessions are assumed), it forgets the oldest
//! ids first, and it starts empty after a restart. It reduces duplicates; consumers still
//! deduplicate on the event id for exactness.
//!
//! A hit reports the durability its original was answered with: an id whose request was answered
//! 202 (some of it only in this host's spool) is answered 202 again, never 200. Those ids sit in a
//! second, usually empty, set per shard, so the common case costs one `is_empty` check.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

const SHARDS: usize = 16;

/// foldhash with a random seed per window (foldhash is only minimally resistant to flooding, but
/// ids are client-chosen, so the hash must at least not be predictable; SipHash cost ~4% of the
/// gateway's CPU for 16-byte keys). Shards are bounded, so a flood degrades one shard at worst.
type Hasher = foldhash::fast::RandomState;

struct Shard {
    set: HashSet<u128, Hasher>,
    /// The subset of `set` whose original was only known to be spooled.
    spooled: HashSet<u128, Hasher>,
    order: VecDeque<u128>,
}

/// What the window knows of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not in the window: produce it.
    New,
    /// Its original was acknowledged by Kafka.
    InKafka,
    /// Its original was made durable in the spool (answered 202).
    Spooled,
}

/// The window: sharded so concurrent requests rarely share a lock.
pub struct DedupWindow {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl DedupWindow {
    /// Remembers about `capacity` ids (rounded to the shard count); 0 remembers nothing.
    pub fn new(capacity: usize) -> DedupWindow {
        let per_shard = capacity.div_ceil(SHARDS);
        DedupWindow {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        set: HashSet::with_capacity_and_hasher(
                            per_shard.min(1 << 16),
                            Hasher::default(),
                        ),
                        spooled: HashSet::with_hasher(Hasher::default()),
                        order: VecDeque::with_capacity(per_shard.min(1 << 16)),
                    })
                })
                .collect(),
            per_shard,
        }
    }

    #[cfg(test)]
    fn contains(&self, id: u128) -> bool {
        self.per_shard > 0
            // UUID v4 bits are random; the low bits spread ids evenly.
            && self.shards[(id as usize) % SHARDS]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set
                .contains(&id)
    }

    /// Which of a request's ids are in the window, and how durable their originals were,
    /// taking each shard's lock once.
    pub fn seen(&self, ids: &[u128]) -> Vec<Seen> {
        let mut seen = vec![Seen::New; ids.len()];
        if self.per_shard == 0 || ids.is_empty() {
            return seen;
        }
        for (s, shard) in self.shards.iter().enumerate() {
            let mut guard = None;
            for (i, &id) in ids.iter().enumerate() {
                if (id as usize) % SHARDS == s {
                    let shard = guard
                        .get_or_insert_with(|| shard.lock().unwrap_or_else(|p| p.into_inner()));
                    seen[i] = if !shard.set.contains(&id) {
                        Seen::New
                    } else if !shard.spooled.is_empty() && shard.spooled.contains(&id) {
                        Seen::Spooled
                    } else {
                        Seen::InKafka
                    };
                }
            }
        }
        seen
    }

    /// Records ids as durable (`spooled`: their request was answered 202), evicting the oldest
    /// beyond capacity; each shard's lock is taken once per call.
    pub fn insert_all(&self, ids: impl IntoIterator<Item = u128>, spooled: bool) {
        if self.per_shard == 0 {
            return;
        }
        let mut by_shard: [Vec<u128>; SHARDS] = Default::default();
        for id in ids {
            by_shard[(id as usize) % SHARDS].push(id);
        }
        for (ids, shard) in by_shard.iter().zip(&self.shards) {
            if ids.is_empty() {
                continue;
            }
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for &id in ids {
                if shard.set.insert(id) {
                    shard.order.push_back(id);
                    if spooled {
                        shard.spooled.insert(id);
                    }
                    if shard.order.len() > self.per_shard {
                        if let Some(old) = shard.order.pop_front() {
                            shard.set.remove(&old);
                            if !shard.spooled.is_empty() {
                                shard.spooled.remove(&old);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_ids_and_forgets_the_oldest() {
        let w = DedupWindow::new(32);
        w.insert_all((0..32u128).map(|i| i * 16), false); // all in shard 0, 2 per shard capacity
        assert!(!w.contains(0));
        assert!(w.contains(31 * 16) && w.contains(30 * 16));
        w.insert_all([1, 2, 3], false);
        assert!(w.contains(1) && w.contains(2) && w.contains(3));
        assert!(!w.contains(4));
    }

    #[test]
    fn seen_matches_contains_across_shards() {
        let w = DedupWindow::new(1024);
        w.insert_all((0..100u128).map(|i| i * 7), false);
        let ids: Vec<u128> = (0..300u128).collect();
        let seen = w.seen(&ids);
        for (i, id) in ids.iter().enumerate() {
            let hit = id % 7 == 0 && *id < 700;
            assert_eq!(seen[i] != Seen::New, hit, "id {id}");
            assert_eq!(seen[i] != Seen::New, w.contains(*id));
        }
        assert!(DedupWindow::new(0).seen(&[0]) == [Seen::New]);
    }

    #[test]
    fn zero_capacity_is_off() {
        let w = DedupWindow::new(0);
        w.insert_all([1], false);
        assert!(!w.contains(1));
    }

    #[test]
    fn a_hit_reports_whether_its_original_was_only_spooled() {
        let w = DedupWindow::new(32); // 2 per shard
        w.insert_all([16, 32], false);
        w.insert_all([48], true); // evicts 16
        w.insert_all([64], false); // evicts 32; 48 stays spooled
        assert_eq!(
            w.seen(&[16, 48, 64, 5]),
            [Seen::New, Seen::Spooled, Seen::InKafka, Seen::New]
        );
        w.insert_all([80, 96], false); // evicts 48 and 64: forgotten, spooled mark too
        w.insert_all([48], false);
        assert_eq!(w.seen(&[48]), [Seen::InKafka]);
    }
}
