//! Replay pacing: how much of the spool the replayer hands to the producer at a time, so that a
//! drain is fast when Kafka is idle and yields when live requests need the producer.
//!
//! Live requests and the replayer share the producers, and librdkafka queues records per
//! partition in arrival order: a replay batch of 5,000 records (~4 MB) handed over at once sits
//! ahead of every live record that arrives after it. Measured (BENCHMARKS.md, "Replay", 2 vCPUs,
//! live traffic at half the peak): fixed 500-record batches drained ~62 s per GiB with a live p99
//! of 55 ms; fixed 5,000 ~30 s per GiB but a live p99 of 364 ms; these chunks with a 20 ms
//! target ~40 s per GiB with a live p99 of 58 ms (a 50 ms target: 346 ms). With no live
//! traffic the drain runs at whole batches: ~17 s per GiB.
//!
//! So the replayer's batch is handed over in chunks, one at a time (each waits for its
//! acknowledgements), and the chunk size follows live pressure, AIMD style: live requests report
//! how long Kafka took to acknowledge them (an EWMA); while it is above
//! [`LIVE_LATENCY_TARGET`] the chunk halves (down to [`MIN_CHUNK`]), while it is under half of
//! it, or no live request was acknowledged in the last second, the chunk doubles up to the
//! whole batch. With no live traffic the drain runs at full batches; under live load it backs
//! off within a few chunks, and it speeds up again as soon as the live latency allows.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::now_ms;

/// Live acknowledgement latency (EWMA) above which the replayer's chunks shrink.
pub const LIVE_LATENCY_TARGET: Duration = Duration::from_millis(20);

/// The smallest chunk: the replay never stops while Kafka acknowledges.
pub const MIN_CHUNK: usize = 100;

/// Live samples older than this say nothing about the current load.
const FRESH_MS: i64 = 1_000;

pub struct Pace {
    /// EWMA of live requests' acknowledgement latency, in microseconds (0: no sample yet).
    live_us: AtomicU64,
    /// When the last live sample came (ms since the epoch).
    last_ms: AtomicI64,
    /// The next chunk's size.
    chunk: AtomicUsize,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            live_us: AtomicU64::new(0),
            last_ms: AtomicI64::new(0),
            chunk: AtomicUsize::new(MIN_CHUNK),
        }
    }
}

impl Pace {
    /// A live request's records were acknowledged `elapsed` after they were handed over.
    pub fn observe_live(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // Races between requests lose a sample at worst; the average stays meaningful.
        let old = self.live_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.live_us.store(new, Ordering::Relaxed);
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The live latency, if a live request was acknowledged within the last second.
    fn live_latency(&self) -> Option<Duration> {
        let fresh = now_ms() - self.last_ms.load(Ordering::Relaxed) <= FRESH_MS;
        fresh.then(|| Duration::from_micros(self.live_us.load(Ordering::Relaxed)))
    }

    /// The size of the next chunk, at most `left` (the rest of the batch).
    pub fn chunk(&self, left: usize) -> usize {
        self.chunk.load(Ordering::Relaxed).clamp(1, left.max(1))
    }

    /// After a chunk was acknowledged: shrink under live pressure, grow without it (up to
    /// `max`, the replay batch size).
    pub fn adjust(&self, max: usize) {
        let now = self.chunk.load(Ordering::Relaxed);
        let next = match self.live_latency() {
            Some(l) if l > LIVE_LATENCY_TARGET => now / 2,
            Some(l) if l > LIVE_LATENCY_TARGET / 2 => now,
            _ => now.saturating_mul(2),
        };
        self.chunk.store(
            next.clamp(MIN_CHUNK.min(max), max.max(1)),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_without_live_traffic_and_shrink_under_pressure() {
        let pace = Pace::default();
        for _ in 0..10 {
            pace.adjust(5_000);
        }
        assert_eq!(
            pace.chunk(usize::MAX),
            5_000,
            "no live traffic: whole batches"
        );
        for _ in 0..20 {
            pace.observe_live(Duration::from_millis(200));
        }
        for _ in 0..3 {
            pace.adjust(5_000);
        }
        assert_eq!(pace.chunk(usize::MAX), 625, "halved three times");
        for _ in 0..10 {
            pace.adjust(5_000);
        }
        assert_eq!(pace.chunk(usize::MAX), MIN_CHUNK, "never below the floor");
        // Live latency back to normal: it grows again.
        for _ in 0..40 {
            pace.observe_live(Duration::from_millis(5));
        }
        pace.adjust(5_000);
        assert_eq!(pace.chunk(usize::MAX), 2 * MIN_CHUNK);
        // Between half the target and the target: it holds.
        for _ in 0..60 {
            pace.observe_live(Duration::from_millis(15));
        }
        pace.adjust(5_000);
        assert_eq!(pace.chunk(usize::MAX), 2 * MIN_CHUNK);
        assert_eq!(pace.chunk(7), 7, "never more than what is left");
    }
}
