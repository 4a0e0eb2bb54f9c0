//! `Client::builder(url)` and the settings it takes.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::client::Client;
use crate::error::Error;

/// What a full queue does with one more event.
#[derive(Debug, Clone, PartialEq)]
pub enum QueuePolicy {
    /// `send`/`submit` wait for room (`track`, which cannot wait, drops the new event as
    /// `queue_full`).
    Block,
    /// Evict the oldest waiting event (its `send` ends in `Dropped(Oldest)`).
    DropOldest,
    /// Refuse the new event (`Dropped(QueueFull)`).
    DropNewest,
    /// Write the overflow to a disk queue in this directory; it survives a crash of the process
    /// and is replayed by the next client opened on the same directory.
    Spill(SpillConfig),
}

/// Where and how much to spill.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SpillConfig {
    /// The disk queue's directory (one client process per directory).
    pub dir: PathBuf,
    /// At most this many bytes on disk; beyond it new events are dropped as `spill_failed`.
    pub max_bytes: u64,
}

impl SpillConfig {
    /// Spill into `dir`, at most 1 GiB.
    pub fn new(dir: impl Into<PathBuf>) -> SpillConfig {
        SpillConfig {
            dir: dir.into(),
            max_bytes: 1 << 30,
        }
    }

    pub fn max_bytes(mut self, max_bytes: u64) -> SpillConfig {
        self.max_bytes = max_bytes;
        self
    }
}

/// The in-memory queue's bounds and its policy when full.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Events waiting in memory (not counting batches in flight).
    pub max_events: usize,
    /// Bytes of event JSON waiting in memory.
    pub max_bytes: usize,
    pub policy: QueuePolicy,
}

impl QueueConfig {
    pub fn new(max_events: usize, max_bytes: usize, policy: QueuePolicy) -> QueueConfig {
        QueueConfig {
            max_events,
            max_bytes,
            policy,
        }
    }
}

impl Default for QueueConfig {
    /// 10 000 events, 16 MiB, `Block`.
    fn default() -> QueueConfig {
        QueueConfig::new(10_000, 16 << 20, QueuePolicy::Block)
    }
}

/// Retries: full-jitter exponential backoff, `Retry-After` as a floor, and a retry budget.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// First backoff ceiling; attempt n waits a uniform random time in [0, min(max_backoff,
    /// base × 2^(n-1))].
    pub base: Duration,
    pub max_backoff: Duration,
    /// A gateway's `Retry-After` is honoured as a floor up to this (a larger one is clamped).
    pub retry_after_max: Duration,
    /// Give up on a batch's events after this many attempts (`retries_exhausted`); `None` retries
    /// until shutdown.
    pub max_attempts: Option<u32>,
    /// One HTTP attempt's timeout (connect, send, answer); a timeout is retried.
    pub request_timeout: Duration,
    /// Retry budget: retries per second the client may make whatever the failures (token
    /// bucket refill), ...
    pub budget_per_sec: f64,
    /// ... tokens each successful request adds (so a healthy gateway funds occasional retries),
    pub budget_ratio: f64,
    /// ... and the bucket's size.
    pub budget_burst: f64,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(60),
            max_attempts: None,
            request_timeout: Duration::from_secs(30),
            budget_per_sec: 5.0,
            budget_ratio: 0.2,
            budget_burst: 20.0,
        }
    }
}

/// Settings for a `Client`; `build()` validates them.
#[derive(Clone)]
pub struct Builder {
    pub(crate) url: String,
    pub(crate) write_key: Option<String>,
    pub(crate) batch_max_events: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) queue: QueueConfig,
    pub(crate) retry: RetryConfig,
    pub(crate) gzip: bool,
    pub(crate) context: Option<Value>,
    pub(crate) concurrency: usize,
    pub(crate) drop_grace: Duration,
    pub(crate) root_certs: Vec<Vec<u8>>,
    pub(crate) user_agent: String,
    pub(crate) observer: Option<crate::client::Observer>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("url", &self.url)
            .field("write_key", &self.write_key.as_ref().map(|_| "<set>"))
            .field("batch_max_events", &self.batch_max_events)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("linger", &self.linger)
            .field("queue", &self.queue)
            .field("retry", &self.retry)
            .field("gzip", &self.gzip)
            .field("concurrency", &self.concurrency)
            .field("drop_grace", &self.drop_grace)
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new(url: &str) -> Builder {
        Builder {
            url: url.to_string(),
            write_key: None,
            batch_max_events: 500,
            batch_max_bytes: 512 << 10,
            linger: Duration::from_millis(200),
            queue: QueueConfig::default(),
            retry: RetryConfig::default(),
            gzip: true,
            context: None,
            concurrency: 2,
            drop_grace: Duration::from_secs(10),
            root_certs: Vec::new(),
            user_agent: concat!("eventpipe-client-rust/", env!("CARGO_PKG_VERSION")).to_string(),
            observer: None,
        }
    }

    /// Sent as the HTTP Basic user (`Authorization: Basic base64("KEY:")`).
    pub fn write_key(mut self, key: impl Into<String>) -> Builder {
        self.write_key = Some(key.into());
        self
    }

    /// At most this many events per bundle (default 500; the gateway's `limits.max_events`
    /// should be at least this).
    pub fn batch_max_events(mut self, n: usize) -> Builder {
        self.batch_max_events = n;
        self
    }

    /// At most this many bytes of event JSON per bundle, before gzip (default 512 KiB). A single
    /// larger event is sent alone.
    pub fn batch_max_bytes(mut self, n: usize) -> Builder {
        self.batch_max_bytes = n;
        self
    }

    /// How long the first event of a batch waits for company before the batch goes anyway
    /// (default 200 ms; `flush` and `shutdown` cut it short).
    pub fn linger(mut self, linger: Duration) -> Builder {
        self.linger = linger;
        self
    }

    pub fn queue(mut self, queue: QueueConfig) -> Builder {
        self.queue = queue;
        self
    }

    pub fn retry(mut self, retry: RetryConfig) -> Builder {
        self.retry = retry;
        self
    }

    /// Gzip bundles over 1 KiB (default on).
    pub fn gzip(mut self, on: bool) -> Builder {
        self.gzip = on;
        self
    }

    /// The bundle `context` sent with every batch (each event's own context overrides it key by
    /// key).
    pub fn context(mut self, context: Value) -> Builder {
        self.context = Some(context);
        self
    }

    /// Batches in flight at once (default 2).
    pub fn concurrency(mut self, n: usize) -> Builder {
        self.concurrency = n;
        self
    }

    /// After the last handle is dropped without `shutdown`, the background task keeps sending for
    /// at most this long (default 10 s), then drops what is left as `shutdown` (or leaves it on
    /// disk with `Spill`).
    pub fn drop_grace(mut self, grace: Duration) -> Builder {
        self.drop_grace = grace;
        self
    }

    /// Trust this CA (PEM) in addition to the system's roots (for a gateway with a private CA).
    pub fn root_certificate_pem(mut self, pem: &[u8]) -> Builder {
        self.root_certs.push(pem.to_vec());
        self
    }

    pub fn user_agent(mut self, ua: impl Into<String>) -> Builder {
        self.user_agent = ua.into();
        self
    }

    /// Calls `f` after every HTTP attempt with its ids, times, status and `Retry-After` (for
    /// tests and debugging; keep it cheap, it runs on the sending task).
    pub fn on_attempt(
        mut self,
        f: impl Fn(&crate::client::Attempt) + Send + Sync + 'static,
    ) -> Builder {
        self.observer = Some(std::sync::Arc::new(f));
        self
    }

    /// Validates the settings, opens the disk queue (`Spill`) and starts the background task
    /// on the current tokio runtime.
    pub fn build(self) -> Result<Client, Error> {
        self.validate()?;
        Client::start(self)
    }

    pub(crate) fn endpoint(&self) -> String {
        let url = self.url.trim_end_matches('/');
        if url.ends_with("/v1/events") {
            url.to_string()
        } else {
            format!("{url}/v1/events")
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad("url: must start with http:// or https://");
        }
        if self.batch_max_events == 0 {
            return bad("batch_max_events: must be at least 1");
        }
        if self.batch_max_bytes < 1024 {
            return bad("batch_max_bytes: must be at least 1024");
        }
        if self.queue.max_events == 0 || self.queue.max_bytes == 0 {
            return bad("queue: max_events and max_bytes must be at least 1");
        }
        if self.concurrency == 0 {
            return bad("concurrency: must be at least 1");
        }
        let r = &self.retry;
        if r.base.is_zero() || r.max_backoff < r.base {
            return bad("retry.base: must be > 0 and <= retry.max_backoff");
        }
        if r.request_timeout.is_zero() {
            return bad("retry.request_timeout: must be > 0");
        }
        if r.max_attempts == Some(0) {
            return bad("retry.max_attempts: must be at least 1");
        }
        if !(r.budget_per_sec > 0.0 && r.budget_per_sec.is_finite()) {
            return bad("retry.budget_per_sec: must be > 0");
        }
        if !(r.budget_burst >= 1.0 && r.budget_burst.is_finite()) {
            return bad("retry.budget_burst: must be >= 1");
        }
        if !(r.budget_ratio >= 0.0 && r.budget_ratio.is_finite()) {
            return bad("retry.budget_ratio: must be >= 0");
        }
        if let Some(k) = &self.write_key {
            if k.is_empty() || k.contains(':') || !k.chars().all(|c| c.is_ascii_graphic()) {
                return bad("write_key: visible ASCII characters, no ':'");
            }
        }
        Ok(())
    }
}
