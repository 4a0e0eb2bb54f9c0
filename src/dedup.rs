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

struct Shard {
    set: HashSet<u128>,
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
                        set: HashSet::with_capacity(per_shard.min(1 << 16)),
                        order: VecDeque::with_capacity(per_shard.min(1 << 16)),
                    })
                })
                .collect(),
            per_shard,
        }
    }

    fn shard(&self, id: u128) -> &Mutex<Shard> {
        // UUID v4 bits are random; the low bits spread ids evenly.
        &self.shards[(id as usize) % SHARDS]
    }

    pub fn contains(&self, id: u128) -> bool {
        self.per_shard > 0
            && self
                .shard(id)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set
                .contains(&id)
    }

    /// Records ids as acknowledged, evicting the oldest beyond capacity.
    pub fn insert_all(&self, ids: impl IntoIterator<Item = u128>) {
        if self.per_shard == 0 {
            return;
        }
        for id in ids {
            let mut shard = self.shard(id).lock().unwrap_or_else(|p| p.into_inner());
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
    fn zero_capacity_is_off() {
        let w = DedupWindow::new(0);
        w.insert_all([1]);
        assert!(!w.contains(1));
    }
}
