//! The `Spill` policy: what does not fit in memory is appended (fsynced) to a disk queue, the
//! shared `eventpipe-spool` write-ahead log, and fed back into the client's own sending path by
//! the spool's replayer — so spilled events get the same batching, retries, `Retry-After` and
//! budget as the others, and a record leaves the disk only once the gateway settled it.
//!
//! A spilled event keeps its place in `State::outstanding` (flush waits for it) and its
//! `send` waiter; when the replayer brings it back it is matched by id (`State::spilled_ids`).
//! Records a previous process left (crash, or shutdown with events on disk) come back with new
//! sequence numbers and no waiter. Records on disk are deleted only after the gateway made them
//! durable or rejected them (or the retry limit gave up on them): a crash at any point leaves
//! them for the next process, so a replayed event can reach the gateway twice, with the same id.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use eventpipe_spool::{
    BoxFuture, MetricNames, Record, ReplayOptions, ReplayResult, ReplayTarget, Spool, SpoolOptions,
};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::Shared;
use crate::config::SpillConfig;
use crate::error::{DropReason, Error};
use crate::metrics as m;
use crate::queue::Item;

const TOPIC: &str = "events";
const ID_HEADER: &str = "event_id";

fn metric_names() -> MetricNames {
    static NAMES: OnceLock<MetricNames> = OnceLock::new();
    *NAMES.get_or_init(|| MetricNames::with_prefix("eventpipe_client_spool"))
}

/// Opens the disk queue (sync; takes the directory's lock).
pub(crate) fn open(cfg: &SpillConfig) -> Result<Spool, Error> {
    let mut opts = SpoolOptions::new(&cfg.dir, metric_names());
    opts.max_bytes = cfg.max_bytes;
    opts.seal_after = Duration::from_millis(500);
    Spool::open(opts).map_err(|e| {
        Error::Config(format!(
            "queue.policy Spill: cannot open {}: {e}{}",
            cfg.dir.display(),
            if e.kind() == std::io::ErrorKind::WouldBlock {
                " (another process uses this directory)"
            } else {
                ""
            }
        ))
    })
}

/// Starts the replayer feeding spilled records back into `shared`'s queue.
pub(crate) fn start_replay(shared: &Arc<Shared>, spool: &Spool) -> tokio::task::JoinHandle<()> {
    let cfg = &shared.cfg;
    let opts = ReplayOptions {
        batch_records: cfg.batch_max_events,
        batch_bytes: cfg.batch_max_bytes,
        // `produce` waits for the client's own retries; the deadline is not used.
        ack_timeout: Duration::from_secs(24 * 3600),
        ..ReplayOptions::default()
    };
    let target = Arc::new(Target {
        shared: Arc::downgrade(shared),
    });
    eventpipe_spool::spawn_replayer(spool, target, opts)
}

/// Appends one item that did not fit in memory; on failure its `send` ends in
/// `Dropped(Spill)` (counted).
pub(crate) async fn append(shared: Arc<Shared>, item: Item) {
    let Some(spool) = &shared.spill else {
        return;
    };
    match spool.append(&[record(&item)]).await {
        Ok(()) => {
            shared.counters.on_disk.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::SPILLED).increment(1);
            metrics::gauge!(m::SPILL_EVENTS)
                .set(shared.counters.on_disk.load(Ordering::Relaxed) as f64);
        }
        Err(e) => {
            tracing::warn!(
                reason = e.reason(),
                "eventpipe client could not spill an event"
            );
            let mut s = shared.lock();
            if s.spilled_ids.remove(&item.id).is_some() {
                shared.settle(&mut s, item.seq, Err(Error::Dropped(DropReason::Spill)));
            }
        }
    }
}

/// The record an item is stored as: its id as a header, its JSON as the payload.
pub(crate) fn record(item: &Item) -> Record {
    Record {
        topic: TOPIC.into(),
        key: None,
        headers: vec![(ID_HEADER.to_string(), item.id.to_string())],
        payload: item.json.to_vec(),
    }
}

struct Target {
    shared: Weak<Shared>,
}

impl ReplayTarget for Target {
    type Item = Item;

    fn decode(&self, record: Record) -> Result<Item, String> {
        let id = record
            .header(ID_HEADER)
            .and_then(|v| uuid::Uuid::parse_str(v).ok())
            .ok_or_else(|| "undecodable".to_string())?;
        Ok(Item {
            seq: 0,
            id,
            json: record.payload.into(),
            enqueued_at: Instant::now(),
            from_disk: true,
        })
    }

    fn produce<'a>(&'a self, items: &'a [Item], _deadline: Instant) -> BoxFuture<'a, ReplayResult> {
        Box::pin(async move {
            let all = || ReplayResult {
                retry: (0..items.len()).collect(),
                refused: Vec::new(),
            };
            let Some(shared) = self.shared.upgrade() else {
                return all();
            };
            let mut waits = Vec::with_capacity(items.len());
            {
                let mut s = shared.lock();
                if s.report.is_some() || *shared.abort.borrow() {
                    return all();
                }
                for (n, item) in items.iter().enumerate() {
                    let seq = match s.spilled_ids.remove(&item.id) {
                        Some(seq) => seq,
                        None => {
                            // Left by an earlier process (or a duplicate on disk).
                            let seq = s.next_seq;
                            s.next_seq += 1;
                            s.outstanding.insert(seq, item.id);
                            shared.counters.on_disk.fetch_add(1, Ordering::Relaxed);
                            seq
                        }
                    };
                    s.outstanding.entry(seq).or_insert(item.id);
                    let (tx, rx) = oneshot::channel();
                    s.replay_waiters.insert(seq, tx);
                    let mut item = item.clone();
                    item.seq = seq;
                    s.queue.force_push(item);
                    waits.push((n, rx));
                }
                shared.gauges(&s);
            }
            shared.work.notify_one();
            drop(shared);
            let mut retry = Vec::new();
            for (n, rx) in waits {
                if !matches!(rx.await, Ok(true)) {
                    retry.push(n);
                }
            }
            ReplayResult {
                retry,
                refused: Vec::new(),
            }
        })
    }
}
