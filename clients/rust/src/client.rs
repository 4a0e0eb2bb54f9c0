//! The `Client` handle: enqueue (`send`, `submit`, `track`), `flush`, `shutdown`, and what
//! dropping the last handle does. The background task lives in `worker`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Builder, QueuePolicy};
use crate::error::{DropReason, Error, Receipt, ShutdownReport, Stats};
use crate::event::{Event, EventId};
use crate::metrics as m;
use crate::queue::{Item, Overflow, Push, Queue};
use crate::retry::Budget;

/// What the client reports about each HTTP attempt to a `Builder::on_attempt` observer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Attempt {
    /// 1 for the first attempt of a batch (a batch split after a 413 starts again at 1).
    pub attempt: u32,
    /// The ids sent, in bundle order (the same on every attempt of a batch, less what settled).
    pub ids: Vec<EventId>,
    pub started: Instant,
    pub finished: Instant,
    /// The HTTP status, or `None` for a connection error or timeout.
    pub status: Option<u16>,
    /// The gateway's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

pub(crate) type Observer = Arc<dyn Fn(&Attempt) + Send + Sync>;

/// A handle on one eventpipe client. Cheap to clone; every clone feeds the same queue and
/// background task.
///
/// Dropping the last handle never blocks: it closes the queue (later enqueues fail with
/// `Closed`) and the background task keeps sending what is queued or in flight for at most
/// `Builder::drop_grace` (if the runtime is still running), then drops what is left, counted as
/// `eventpipe_client_dropped_total{reason="shutdown"}`, or with `Spill` leaves it on disk for
/// the next start. Call `shutdown(deadline)` to wait and learn what was not sent.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close(true);
    }
}

/// A queued event's answer to come. Await it for the `Receipt`.
#[derive(Debug)]
pub struct Pending {
    id: EventId,
    rx: oneshot::Receiver<Result<Receipt, Error>>,
}

impl Pending {
    pub fn id(&self) -> EventId {
        self.id
    }
}

impl Future for Pending {
    type Output = Result<Receipt, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Dropped(DropReason::Shutdown))))
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub enqueued: AtomicU64,
    pub kafka: AtomicU64,
    pub spool: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub retries: AtomicU64,
    /// Events known to be on disk and not yet settled.
    pub on_disk: AtomicU64,
}

pub(crate) struct State {
    pub queue: Queue,
    pub next_seq: u64,
    /// Every event not yet settled (queued, in flight, spilled): seq -> id.
    pub outstanding: BTreeMap<u64, EventId>,
    pub waiters: HashMap<u64, oneshot::Sender<Result<Receipt, Error>>>,
    /// Spilled events not yet read back: id -> seq.
    pub spilled_ids: HashMap<EventId, u64>,
    /// The replayer's waits: seq -> whether the event is done (may leave the disk).
    pub replay_waiters: HashMap<u64, oneshot::Sender<bool>>,
    pub closed: bool,
    /// Closed by dropping the last handle (the drop grace applies) rather than `shutdown`.
    pub dropped: bool,
    /// Flushes waiting: batches go without lingering.
    pub urgent: usize,
    pub in_flight: usize,
    pub report: Option<ShutdownReport>,
}

pub(crate) struct Shared {
    pub cfg: Builder,
    pub endpoint: String,
    pub http: reqwest::Client,
    pub state: Mutex<State>,
    /// Room freed in the queue, or closed: wakes `Block` senders.
    pub space: Notify,
    /// Something for the worker: an enqueue, a flush, a close.
    pub work: Notify,
    /// Bumped whenever events settle (flush waits on it).
    pub settled: watch::Sender<u64>,
    /// Set when `shutdown`'s deadline passes: in-flight batches stop.
    pub abort: watch::Sender<bool>,
    /// Set when the worker has finished and `State::report` is filled.
    pub finished: watch::Sender<bool>,
    pub budget: Mutex<Budget>,
    pub counters: Counters,
    pub observer: Option<Observer>,
    pub worker: Mutex<Option<JoinHandle<()>>>,
    pub runtime: tokio::runtime::Handle,
    pub spill: Option<eventpipe_spool::Spool>,
    pub replayer: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (no multi-step invariants span
        // an unwind), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn close(&self, by_drop: bool) {
        {
            let mut s = self.lock();
            if !s.closed {
                s.closed = true;
                s.dropped = by_drop;
            }
        }
        self.work.notify_one();
        self.space.notify_waiters();
    }

    /// Settles one event: removes it from the outstanding set, answers its waiter, counts it.
    pub fn settle(&self, s: &mut State, seq: u64, result: Result<Receipt, Error>) {
        if s.outstanding.remove(&seq).is_none() {
            return;
        }
        let c = &self.counters;
        match &result {
            Ok(Receipt::Kafka) => {
                c.kafka.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::ACCEPTED, "durability" => "kafka").increment(1);
            }
            Ok(Receipt::Spooled) => {
                c.spool.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::ACCEPTED, "durability" => "spool").increment(1);
            }
            Ok(Receipt::Rejected { reason, .. }) => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::REJECTED, "reason" => m::reason_label(reason)).increment(1);
            }
            Err(Error::Dropped(reason)) => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::DROPPED, "reason" => reason.as_str()).increment(1);
            }
            Err(_) => {}
        }
        if let Some(w) = s.replay_waiters.remove(&seq) {
            // Off the disk once the gateway settled it or the retry limit gave up on it.
            let done = matches!(
                result,
                Ok(_) | Err(Error::Dropped(DropReason::RetriesExhausted))
            );
            if done {
                c.on_disk.fetch_sub(1, Ordering::Relaxed);
            }
            let _ = w.send(done);
        }
        if let Some(w) = s.waiters.remove(&seq) {
            let _ = w.send(result);
        }
        self.settled.send_modify(|n| *n += 1);
    }

    pub fn gauges(&self, s: &State) {
        metrics::gauge!(m::QUEUE_EVENTS).set(s.queue.len() as f64);
        metrics::gauge!(m::QUEUE_BYTES).set(s.queue.bytes() as f64);
        metrics::gauge!(m::IN_FLIGHT).set(s.in_flight as f64);
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let s = self.lock();
        Stats {
            enqueued: c.enqueued.load(Ordering::Relaxed),
            accepted_kafka: c.kafka.load(Ordering::Relaxed),
            accepted_spool: c.spool.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            queued_events: s.queue.len() as u64,
            queued_bytes: s.queue.bytes() as u64,
            in_flight: s.in_flight as u64,
            spilled: c.on_disk.load(Ordering::Relaxed),
        }
    }
}

impl Client {
    /// A builder for a client of the gateway at `url` (`http(s)://host:port`; `/v1/events` is
    /// added unless the URL already ends with it).
    pub fn builder(url: impl AsRef<str>) -> Builder {
        Builder::new(url.as_ref())
    }

    pub(crate) fn start(cfg: Builder) -> Result<Client, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let spill = match &cfg.queue.policy {
            QueuePolicy::Spill(sc) => Some(crate::spill::open(sc)?),
            _ => None,
        };
        let mut http = reqwest::Client::builder()
            .timeout(cfg.retry.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(cfg.user_agent.clone());
        for pem in &cfg.root_certs {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| Error::Config(format!("root_certificate_pem: {e}")))?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("http client: {e}")))?;
        let shared = Arc::new(Shared {
            endpoint: cfg.endpoint(),
            http,
            state: Mutex::new(State {
                queue: Queue::new(cfg.queue.max_events, cfg.queue.max_bytes),
                next_seq: 0,
                outstanding: BTreeMap::new(),
                waiters: HashMap::new(),
                spilled_ids: HashMap::new(),
                replay_waiters: HashMap::new(),
                closed: false,
                dropped: false,
                urgent: 0,
                in_flight: 0,
                report: None,
            }),
            space: Notify::new(),
            work: Notify::new(),
            settled: watch::channel(0).0,
            abort: watch::channel(false).0,
            finished: watch::channel(false).0,
            budget: Mutex::new(Budget::new(&cfg.retry, std::time::Instant::now())),
            counters: Counters::default(),
            observer: cfg.observer.clone(),
            worker: Mutex::new(None),
            runtime: runtime.clone(),
            spill,
            replayer: Mutex::new(None),
            cfg,
        });
        if let Some(spool) = &shared.spill {
            let replayer = crate::spill::start_replay(&shared, spool);
            *shared.replayer.lock().unwrap_or_else(|p| p.into_inner()) = Some(replayer);
        }
        let task = runtime.spawn(crate::worker::run(shared.clone()));
        *shared.worker.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(Client {
            handle: Arc::new(Handle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Enqueues `event` and waits for the gateway's final answer on it (through every retry).
    /// Under `Block` it first waits for room in the queue.
    pub async fn send(&self, event: Event) -> Result<Receipt, Error> {
        self.submit(event).await?.await
    }

    /// Enqueues `event` (waiting for room under `Block`) and returns at once with a `Pending`
    /// to await for its receipt later: many events in flight from one task.
    pub async fn submit(&self, event: Event) -> Result<Pending, Error> {
        let (tx, rx) = oneshot::channel();
        let id = event.event_id();
        self.enqueue(event, Some(tx), true).await?;
        Ok(Pending { id, rx })
    }

    /// Fire and forget: enqueues an event of `schema` with `data` (new id, `ts` now) and returns
    /// its id. Never waits: when the queue is full the policy applies, and under `Block` the
    /// event is dropped as `queue_full` (counted). Use `send`/`submit` to wait for room.
    pub fn track(&self, schema: impl Into<String>, data: Value) -> EventId {
        let event = Event::new(schema, data);
        let id = event.event_id();
        let _ = self.try_enqueue(event);
        id
    }

    /// `track` for a built `Event`, saying whether it was queued.
    pub fn try_enqueue(&self, event: Event) -> Result<EventId, Error> {
        let id = event.event_id();
        let item = self.item(&event)?;
        match self.place(item, None, false) {
            Ok(None) => Ok(id),
            Ok(Some(to_disk)) => {
                let shared = self.shared().clone();
                shared
                    .runtime
                    .spawn(crate::spill::append(shared.clone(), to_disk));
                Ok(id)
            }
            Err((_, e)) => Err(e),
        }
    }

    fn item(&self, event: &Event) -> Result<Item, Error> {
        let json = event.to_json().map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Item {
            seq: 0,
            id: event.event_id(),
            json: json.into(),
            enqueued_at: Instant::now(),
            from_disk: false,
        })
    }

    async fn enqueue(
        &self,
        event: Event,
        mut waiter: Option<oneshot::Sender<Result<Receipt, Error>>>,
        wait: bool,
    ) -> Result<(), Error> {
        let item = self.item(&event)?;
        let shared = self.shared().clone();
        loop {
            let notified = shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.place(item.clone(), waiter.take(), wait) {
                Ok(None) => return Ok(()),
                Ok(Some(to_disk)) => {
                    crate::spill::append(shared.clone(), to_disk).await;
                    return Ok(());
                }
                Err((Some(w), Error::Dropped(DropReason::QueueFull)))
                    if wait && shared.cfg.queue.policy == QueuePolicy::Block =>
                {
                    waiter = Some(w)
                }
                Err((_, e)) => return Err(e),
            }
            notified.await;
        }
    }

    /// Puts an item in the queue per the policy. With `wait` under `Block`, a full queue hands
    /// the waiter back (`QueueFull`) for the caller to wait for room. Under `Spill`, an item that
    /// does not fit is registered and handed back (`Ok(Some)`) for the caller to append to disk.
    #[allow(clippy::type_complexity)]
    fn place(
        &self,
        mut item: Item,
        waiter: Option<oneshot::Sender<Result<Receipt, Error>>>,
        wait: bool,
    ) -> Result<Option<Item>, (Option<oneshot::Sender<Result<Receipt, Error>>>, Error)> {
        let shared = self.shared();
        let mut s = shared.lock();
        if s.closed {
            drop(s);
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::DROPPED, "reason" => DropReason::Closed.as_str()).increment(1);
            return Err((waiter, Error::Closed));
        }
        let overflow = match shared.cfg.queue.policy {
            QueuePolicy::DropOldest => Overflow::EvictOldest,
            _ => Overflow::Refuse,
        };
        let block = shared.cfg.queue.policy == QueuePolicy::Block;
        if !s.queue.fits(item.size()) && block && wait {
            return Err((waiter, Error::Dropped(DropReason::QueueFull)));
        }
        item.seq = s.next_seq;
        let (seq, id) = (item.seq, item.id);
        match s.queue.push(item, overflow) {
            Push::Queued(evicted) => {
                s.next_seq += 1;
                s.outstanding.insert(seq, id);
                if let Some(w) = waiter {
                    s.waiters.insert(seq, w);
                }
                for old in evicted {
                    shared.settle(&mut s, old.seq, Err(Error::Dropped(DropReason::Oldest)));
                }
                shared.gauges(&s);
                drop(s);
                shared.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::ENQUEUED).increment(1);
                shared.work.notify_one();
                Ok(None)
            }
            Push::Full(item) if shared.spill.is_some() => {
                s.next_seq += 1;
                s.outstanding.insert(seq, id);
                s.spilled_ids.insert(id, seq);
                if let Some(w) = waiter {
                    s.waiters.insert(seq, w);
                }
                drop(s);
                shared.counters.enqueued.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::ENQUEUED).increment(1);
                Ok(Some(item))
            }
            Push::Full(_) => {
                drop(s);
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::DROPPED, "reason" => DropReason::QueueFull.as_str())
                    .increment(1);
                Err((waiter, Error::Dropped(DropReason::QueueFull)))
            }
        }
    }

    /// Waits until every event enqueued before this call is settled (accepted, rejected or
    /// dropped), batches in flight and their retries included; batches waiting to linger go at
    /// once. Against a gateway that stays down this waits as long as the retries go on: bound it
    /// with `tokio::time::timeout`, or use `shutdown`.
    pub async fn flush(&self) {
        let shared = self.shared();
        let mut settled = shared.settled.subscribe();
        let target = {
            let mut s = shared.lock();
            s.urgent += 1;
            s.next_seq
        };
        struct Urgent<'a>(&'a Shared);
        impl Drop for Urgent<'_> {
            fn drop(&mut self) {
                self.0.lock().urgent -= 1;
            }
        }
        let _urgent = Urgent(shared);
        shared.work.notify_one();
        loop {
            if shared.lock().outstanding.range(..target).next().is_none() {
                return;
            }
            if settled.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops accepting events, sends what is queued or in flight until `deadline` from now, then
    /// stops and reports what it could not send (with `Spill`, what is left goes to disk and is
    /// counted as `spilled`). Every pending `send` is answered. Calling it again (or from another
    /// clone) returns the same report.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let shared = self.shared().clone();
        shared.close(false);
        let mut finished = shared.finished.subscribe();
        let done = async {
            while !*finished.borrow_and_update() {
                if finished.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(deadline, done).await.is_err() {
            shared.abort.send_replace(true);
            shared.work.notify_one();
            let mut finished = shared.finished.subscribe();
            while !*finished.borrow_and_update() {
                if finished.changed().await.is_err() {
                    break;
                }
            }
        }
        let report = shared.lock().report.clone().unwrap_or_default();
        report
    }

    /// This client's counters and queue depth now.
    pub fn stats(&self) -> Stats {
        self.shared().stats()
    }
}
