//! A bounded, per-host window of recently acknowledged client event ids.
//!
//! A client that retries a bundle after a timeout or a dropped connection resends event ids the
//! gateway may already have made durable. Ids found here are answered as accepted without being
//! produced again. Limits, by design: the window is per host (a retry that the load balancer
//! sends to another host is not caught; no sticky sessions are assumed), it forgets the oldest
//! ids first, and it starts empty after a restart. It reduces duplicates; consumers still
//! deduplicate on the event id for exactness.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

const SHARDS: usize = 16;

/// foldhash with a random seed per window (foldhash is only minimally resistant to flooding, but
/// ids are client-chosen, so the hash must at least not be predictable; SipHash cost ~4% of the
/// gateway's CPU for 16-byte keys). Shards are bounded, so a flood degrades one shard at worst.
type Hasher = foldhash::fast::RandomState;

struct Shard {
    set: HashSet<u128, Hasher>,
    order: VecDeque<u128>,
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

    /// Which of a request's ids are in the window, taking each shard's lock once.
    pub fn seen(&self, ids: &[u128]) -> Vec<bool> {
        let mut seen = vec![false; ids.len()];
        if self.per_shard == 0 || ids.is_empty() {
            return seen;
        }
        for (s, shard) in self.shards.iter().enumerate() {
            let mut guard = None;
            for (i, &id) in ids.iter().enumerate() {
                if (id as usize) % SHARDS == s {
                    let shard = guard
                        .get_or_insert_with(|| shard.lock().unwrap_or_else(|p| p.into_inner()));
                    seen[i] = shard.set.contains(&id);
                }
            }
        }
        seen
    }

    /// Records ids as acknowledged, evicting the oldest beyond capacity; each shard's lock is
    /// taken once per call.
    pub fn insert_all(&self, ids: impl IntoIterator<Item = u128>) {
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
                    if shard.order.len() > self.per_shard {
                        if let Some(old) = shard.order.pop_front() {
                            shard.set.remove(&old);
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
        w.insert_all((0..32u128).map(|i| i * 16)); // all in shard 0, 2 per shard capacity
        assert!(!w.contains(0));
        assert!(w.contains(31 * 16) && w.contains(30 * 16));
        w.insert_all([1, 2, 3]);
        assert!(w.contains(1) && w.contains(2) && w.contains(3));
        assert!(!w.contains(4));
    }

    #[test]
    fn seen_matches_contains_across_shards() {
        let w = DedupWindow::new(1024);
        w.insert_all((0..100u128).map(|i| i * 7));
        let ids: Vec<u128> = (0..300u128).collect();
        let seen = w.seen(&ids);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(seen[i], id % 7 == 0 && *id < 700, "id {id}");
            assert_eq!(seen[i], w.contains(*id));
        }
        assert!(DedupWindow::new(0).seen(&[0]) == [false]);
    }

    #[test]
    fn zero_capacity_is_off() {
        let w = DedupWindow::new(0);
        w.insert_all([1]);
        assert!(!w.contains(1));
    }
}
