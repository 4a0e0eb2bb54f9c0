//! The bounded in-memory queue (events and bytes) and what it does when full.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

use crate::event::EventId;

/// One event waiting or in flight: its JSON is fixed at enqueue, so every attempt sends the same
/// bytes and id.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: u64,
    pub id: EventId,
    pub json: Arc<[u8]>,
    pub enqueued_at: Instant,
    /// Read back from the disk queue (still on disk until settled).
    pub from_disk: bool,
}

impl Item {
    pub fn size(&self) -> usize {
        self.json.len()
    }
}

/// What a full queue does with a new item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Hand the item back (the caller waits, drops it, or spills it).
    Refuse,
    /// Evict the oldest items until the new one fits.
    EvictOldest,
}

#[derive(Debug)]
pub enum Push {
    /// Queued; these older items were evicted to make room.
    Queued(Vec<Item>),
    /// Did not fit: the item back.
    Full(Item),
}

#[derive(Debug)]
pub struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

impl Queue {
    pub fn new(max_events: usize, max_bytes: usize) -> Queue {
        Queue {
            items: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn front(&self) -> Option<&Item> {
        self.items.front()
    }

    /// An item fits when the queue is empty (so one event over `max_bytes` still goes through)
    /// or both bounds hold with it.
    pub fn fits(&self, size: usize) -> bool {
        self.items.is_empty()
            || (self.items.len() < self.max_events && self.bytes + size <= self.max_bytes)
    }

    pub fn push(&mut self, item: Item, overflow: Overflow) -> Push {
        let mut evicted = Vec::new();
        if !self.fits(item.size()) {
            match overflow {
                Overflow::Refuse => return Push::Full(item),
                Overflow::EvictOldest => {
                    while !self.fits(item.size()) {
                        match self.items.pop_front() {
                            Some(old) => {
                                self.bytes -= old.size();
                                evicted.push(old);
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        self.bytes += item.size();
        self.items.push_back(item);
        Push::Queued(evicted)
    }

    /// Appends regardless of the bounds (events replayed from disk: at most one replay batch).
    pub fn force_push(&mut self, item: Item) {
        self.bytes += item.size();
        self.items.push_back(item);
    }

    /// Takes the oldest items up to `max_events` and `max_bytes` (always at least one).
    pub fn pop_batch(&mut self, max_events: usize, max_bytes: usize) -> Vec<Item> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(front) = self.items.front() {
            if !batch.is_empty() && (batch.len() >= max_events || bytes + front.size() > max_bytes)
            {
                break;
            }
            bytes += front.size();
            self.bytes -= front.size();
            if let Some(item) = self.items.pop_front() {
                batch.push(item);
            }
        }
        batch
    }

    /// A batch is ready without lingering when it would be full.
    pub fn batch_full(&self, max_events: usize, max_bytes: usize) -> bool {
        self.items.len() >= max_events || self.bytes >= max_bytes
    }

    pub fn drain(&mut self) -> Vec<Item> {
        self.bytes = 0;
        self.items.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, size: usize) -> Item {
        Item {
            seq,
            id: uuid::Uuid::new_v4(),
            json: vec![b'x'; size].into(),
            enqueued_at: Instant::now(),
            from_disk: false,
        }
    }

    fn seqs(items: &[Item]) -> Vec<u64> {
        items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn bounded_by_events_and_bytes_refusing_when_full() {
        let mut q = Queue::new(3, 100);
        for s in 0..3 {
            assert!(
                matches!(q.push(item(s, 10), Overflow::Refuse), Push::Queued(e) if e.is_empty())
            );
        }
        assert!(matches!(q.push(item(3, 10), Overflow::Refuse), Push::Full(i) if i.seq == 3));
        assert_eq!((q.len(), q.bytes()), (3, 30));
        let mut q = Queue::new(100, 100);
        assert!(matches!(
            q.push(item(0, 60), Overflow::Refuse),
            Push::Queued(_)
        ));
        assert!(matches!(
            q.push(item(1, 60), Overflow::Refuse),
            Push::Full(_)
        ));
        // One event bigger than the whole queue still goes through an empty queue.
        let mut q = Queue::new(10, 100);
        assert!(matches!(
            q.push(item(0, 500), Overflow::Refuse),
            Push::Queued(_)
        ));
    }

    #[test]
    fn drop_oldest_evicts_from_the_front_until_the_new_one_fits() {
        let mut q = Queue::new(10, 100);
        for s in 0..4 {
            q.push(item(s, 25), Overflow::EvictOldest);
        }
        match q.push(item(4, 50), Overflow::EvictOldest) {
            Push::Queued(evicted) => assert_eq!(seqs(&evicted), vec![0, 1]),
            p => panic!("{p:?}"),
        }
        assert_eq!((q.len(), q.bytes()), (3, 100));
        assert_eq!(seqs(&q.drain()), vec![2, 3, 4]);
    }

    #[test]
    fn batches_respect_count_and_bytes_in_order() {
        let mut q = Queue::new(100, 10_000);
        for s in 0..10 {
            q.push(item(s, 100), Overflow::Refuse);
        }
        assert!(q.batch_full(10, 1_000_000));
        assert!(!q.batch_full(11, 1_001));
        assert_eq!(seqs(&q.pop_batch(3, 10_000)), vec![0, 1, 2]);
        assert_eq!(seqs(&q.pop_batch(100, 250)), vec![3, 4]);
        assert_eq!(q.bytes(), 500);
        // An item larger than max_bytes is a batch of its own.
        let mut q = Queue::new(100, 10_000);
        q.push(item(0, 5_000), Overflow::Refuse);
        q.push(item(1, 10), Overflow::Refuse);
        assert_eq!(seqs(&q.pop_batch(100, 1_000)), vec![0]);
        assert_eq!(seqs(&q.pop_batch(100, 1_000)), vec![1]);
        assert!(q.pop_batch(100, 1_000).is_empty());
    }
}
