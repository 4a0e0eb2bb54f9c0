//! `eventpipe send`: JSON lines (files or stdin) to a gateway, with the client library's retry
//! contract — the backend logger's and the operator's `kcat -P` for eventpipe.
//!
//! Each line becomes one event (see `input` for what a line may hold and what is bad input); the
//! events go through one [`eventpipe_client::Client`]: batches, gzip, retries with full jitter,
//! `Retry-After` as a floor, 413 splits, and the same event id on every attempt, so a gateway
//! killed mid-stream costs duplicates at most, never a loss. Input is streamed: a bounded channel
//! from the reader thread, the client's bounded queue (`Block`), and a bounded window of events
//! awaiting their answer — memory does not grow with the input.
//!
//! Every event read ends in exactly one outcome: accepted (200: in Kafka; 202: durable in the
//! gateway's spool or Kafka), rejected by the gateway (with its reason: not to be resent), or not
//! delivered (the command gave up: nothing was accepted or rejected for `timeout`, or SIGINT /
//! SIGTERM; or `max_attempts` ran out). A bad input line is never sent, and always reported with its place.
//!
//! Exit codes: 0 every event was made durable or rejected and no line was bad; 1 some events were
//! not delivered (the summary counts them; takes precedence); 2 the command could not run (bad
//! arguments, an unreadable input, a bad URL); 3 some lines were bad input (every event was
//! delivered or rejected); 130 interrupted (SIGINT or SIGTERM: what was not delivered is
//! counted, and written to `--undelivered`).

mod input;
mod summary;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventpipe_client::{Client, Error, Event, Pending, QueueConfig, QueuePolicy, RetryConfig};
use tokio::sync::mpsc;

pub use input::{parse, read_line, LineRef};
pub use summary::{
    Summary, EXIT_BAD_INPUT, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNDELIVERED,
};

use input::Input;
use summary::Tally;

/// What to send where, and how.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The gateway (`http(s)://host:port`; `/v1/events` is added unless present).
    pub url: String,
    pub write_key: Option<String>,
    /// Files of JSON lines, read in order; none or `-` is stdin.
    pub inputs: Vec<PathBuf>,
    /// Events per request.
    pub batch_size: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// One HTTP attempt's timeout (a timeout is retried).
    pub request_timeout: Duration,
    /// Give up when nothing was accepted or rejected for this long while events wait (None:
    /// never).
    pub timeout: Option<Duration>,
    /// Give up on an event after this many attempts (None: retry until `timeout`).
    pub max_attempts: Option<u32>,
    /// Longest wait between two attempts of a batch (full jitter below it).
    pub max_backoff: Duration,
    /// Longer input lines are bad input.
    pub max_line_bytes: usize,
    /// Progress lines on stderr (the command sets it when stderr is a terminal).
    pub progress: bool,
    /// Write every event not delivered here, as a JSON line with its event id: the input for a
    /// rerun (the same ids, so what did land after all is deduplicated downstream).
    pub undelivered: Option<PathBuf>,
}

impl SendOptions {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> SendOptions {
        SendOptions {
            url: url.into(),
            write_key: None,
            inputs: Vec::new(),
            batch_size: 500,
            concurrency: 2,
            request_timeout: Duration::from_secs(30),
            timeout: Some(Duration::from_secs(600)),
            max_attempts: None,
            max_backoff: Duration::from_secs(10),
            max_line_bytes: 1 << 20,
            progress: false,
            undelivered: None,
        }
    }
}

/// Events awaiting their answer, at most, and the bytes of their lines (bounds the memory held
/// for answers to come, and for `--undelivered` the events kept until then).
const WINDOW: usize = 20_000;
const WINDOW_BYTES: usize = 64 << 20;
/// Bad lines reported on stderr as they are met (all are counted; the summary keeps some).
const BAD_LINES_SHOWN: u64 = 20;

/// Why the command stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GiveUp {
    Timeout,
    Interrupted,
}

/// Sends every event of the inputs; returns what became of them. Errors are start-up errors
/// (unreadable input, client settings): nothing was sent.
pub async fn run(
    opts: SendOptions,
    interrupt: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Summary> {
    let sources = input::open(&opts.inputs)?;
    let resend = Arc::new(match &opts.undelivered {
        Some(path) => Some(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        ))),
        None => None,
    });
    let mut retry = RetryConfig::default();
    retry.request_timeout = opts.request_timeout;
    retry.max_attempts = opts.max_attempts;
    retry.max_backoff = opts.max_backoff;
    let mut builder = Client::builder(&opts.url)
        .batch_max_events(opts.batch_size)
        .concurrency(opts.concurrency)
        .linger(Duration::from_millis(20))
        .queue(QueueConfig::new(
            (opts.batch_size * opts.concurrency * 2).max(1000),
            32 << 20,
            QueuePolicy::Block,
        ))
        .retry(retry)
        .user_agent(concat!("eventpipe-send/", env!("CARGO_PKG_VERSION")));
    if let Some(k) = &opts.write_key {
        builder = builder.write_key(k.clone());
    }
    let client = builder
        .build()
        .map_err(|e| anyhow::anyhow!("client settings: {e}"))?;

    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Tally {
        undelivered_file: opts.undelivered.as_ref().map(|p| p.display().to_string()),
        ..Tally::default()
    }));
    let lines_read = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    input::spawn_reader(sources, opts.max_line_bytes, tx);
    let (pending_tx, pending_rx) = mpsc::channel::<Waiting>(WINDOW);
    let collector = tokio::spawn(collect(pending_rx, tally.clone(), resend.clone()));
    let window_bytes = Arc::new(tokio::sync::Semaphore::new(WINDOW_BYTES));

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(None::<GiveUp>);
    let watchdog = tokio::spawn(watch(client.clone(), opts.timeout, interrupt, stop_tx));
    let done = Arc::new(AtomicBool::new(false));
    let progress = opts.progress.then(|| {
        tokio::spawn(progress_lines(
            client.clone(),
            lines_read.clone(),
            tally.clone(),
            done.clone(),
        ))
    });

    let mut last: Option<LineRef> = None;
    let mut eof = false;
    loop {
        let item = tokio::select! {
            biased;
            _ = stop_rx.wait_for(Option::is_some) => {
                // Given up: what the reader already handed over is counted (not sent), the
                // rest of the input is not read (closing the channel stops the reader).
                rx.close();
                while let Ok(item) = rx.try_recv() {
                    match item {
                        Input::Event(at, event, _) => {
                            lock(&tally).undelivered(&at, event.event_id(), "not_sent".into());
                            keep(&resend, &tally, &event);
                            last = Some(at);
                        }
                        Input::Bad(at, why) => {
                            bad_line(&tally, &at, why);
                            last = Some(at);
                        }
                        Input::ReadError(name, why) => read_error(&tally, &name, why),
                        Input::End => eof = true,
                    }
                }
                break;
            }
            item = rx.recv() => item,
        };
        let Some(item) = item else { break };
        match item {
            Input::Event(at, event, bytes) => {
                lines_read.fetch_add(1, Ordering::Relaxed);
                let id = event.event_id();
                let kept = resend.is_some().then(|| event.clone());
                let need = bytes.clamp(1, WINDOW_BYTES) as u32;
                let submitted = tokio::select! {
                    s = async {
                        let permit = window_bytes.clone().acquire_many_owned(need).await;
                        (client.submit(event).await, permit.ok())
                    } => s,
                    _ = stop_rx.wait_for(Option::is_some) => (Err(Error::Closed), None),
                };
                match submitted {
                    (Ok(pending), permit) => {
                        let waiting = Waiting {
                            at: at.clone(),
                            pending,
                            event: kept,
                            _permit: permit,
                        };
                        if pending_tx.send(waiting).await.is_err() {
                            break; // the collector ended: cannot happen while we hold the sender
                        }
                    }
                    (Err(e), _) => {
                        lock(&tally).outcome(&at, id, Err(e));
                        if let Some(event) = &kept {
                            keep(&resend, &tally, event);
                        }
                    }
                }
                last = Some(at);
            }
            Input::Bad(at, why) => {
                lines_read.fetch_add(1, Ordering::Relaxed);
                bad_line(&tally, &at, why);
                last = Some(at);
            }
            Input::ReadError(name, why) => read_error(&tally, &name, why),
            Input::End => {
                eof = true;
                break;
            }
        }
    }
    if !eof {
        let at = last
            .as_ref()
            .map_or("its start".to_string(), LineRef::to_string);
        lock(&tally).stopped_after = Some(at);
    }
    // The reader thread is not joined: it may be blocked reading a stdin that never ends; it
    // stops at its next line now that the channel is closed.
    drop(rx);
    drop(pending_tx);
    let _ = collector.await;
    done.store(true, Ordering::Relaxed);
    watchdog.abort();
    // Every event handed over has its answer; closing sends nothing more.
    let report = client.shutdown(Duration::from_secs(5)).await;
    if let Some(p) = progress {
        let _ = p.await;
    }
    let gave_up = *stop_rx.borrow();
    let stats = client.stats();
    let mut t = lock(&tally).clone();
    t.unsent_at_shutdown = report.unsent;
    Ok(Summary::new(
        t,
        stats.retries,
        started.elapsed(),
        gave_up.map(|g| g == GiveUp::Interrupted),
        opts.timeout,
    ))
}

/// Reports a bad line on stderr (the first few) and counts it.
fn bad_line(tally: &Mutex<Tally>, at: &LineRef, why: String) {
    let mut t = lock(tally);
    if t.bad_lines < BAD_LINES_SHOWN {
        eprintln!("{at}: bad input, not sent: {why}");
    } else if t.bad_lines == BAD_LINES_SHOWN {
        eprintln!("(more bad lines: see the summary)");
    }
    t.bad(at, why);
}

fn read_error(tally: &Mutex<Tally>, name: &str, why: String) {
    eprintln!("{name}: read error, the rest of it is not read: {why}");
    lock(tally).read_errors.push(format!("{name}: {why}"));
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// An event handed to the client, until its answer comes.
struct Waiting {
    at: LineRef,
    pending: Pending,
    /// The event itself, kept for `--undelivered`.
    event: Option<Event>,
    /// Its line's bytes in the window.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

type Resend = Option<Mutex<std::io::BufWriter<std::fs::File>>>;

/// Awaits each event's answer, in input order, and counts it.
async fn collect(mut rx: mpsc::Receiver<Waiting>, tally: Arc<Mutex<Tally>>, resend: Arc<Resend>) {
    while let Some(w) = rx.recv().await {
        let id = w.pending.id();
        let result = w.pending.await;
        let delivered = result.is_ok();
        lock(&tally).outcome(&w.at, id, result);
        if let (false, Some(event)) = (delivered, &w.event) {
            keep(&resend, &tally, event);
        }
    }
    if let Some(out) = resend.as_ref() {
        if let Err(e) = out.lock().unwrap_or_else(|p| p.into_inner()).flush() {
            lock(&tally).undelivered_file_error = Some(e.to_string());
        }
    }
}

/// Writes an event that was not delivered to the `--undelivered` file, if there is one.
fn keep(resend: &Resend, tally: &Mutex<Tally>, event: &Event) {
    let Some(out) = resend else { return };
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    let written = serde_json::to_writer(&mut *out, event)
        .map_err(std::io::Error::from)
        .and_then(|_| out.write_all(b"\n"));
    if let Err(e) = written {
        lock(tally).undelivered_file_error = Some(e.to_string());
    }
}

/// Gives up — closes the client at once, so every event still waiting is answered "not
/// delivered" — when nothing was accepted, rejected or dropped for `timeout` while events were
/// waiting, or on `interrupt`.
async fn watch(
    client: Client,
    timeout: Option<Duration>,
    interrupt: impl std::future::Future<Output = ()>,
    stop: tokio::sync::watch::Sender<Option<GiveUp>>,
) {
    let settled =
        |s: &eventpipe_client::Stats| s.accepted_kafka + s.accepted_spool + s.rejected + s.dropped;
    let idle = async {
        let Some(timeout) = timeout else {
            return std::future::pending::<()>().await;
        };
        let mut last = settled(&client.stats());
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = client.stats();
            let n = settled(&s);
            if n != last || s.enqueued == n {
                (last, since) = (n, Instant::now());
            } else if since.elapsed() >= timeout {
                return;
            }
        }
    };
    let why = tokio::select! {
        _ = idle => GiveUp::Timeout,
        _ = interrupt => GiveUp::Interrupted,
    };
    stop.send_replace(Some(why));
    let _ = client.shutdown(Duration::ZERO).await;
}

/// One progress line on stderr twice a second, rewritten in place.
async fn progress_lines(
    client: Client,
    lines: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    done: Arc<AtomicBool>,
) {
    let mut err = std::io::stderr();
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = client.stats();
        let bad = lock(&tally).bad_lines;
        let _ = write!(
            err,
            "\r{} lines read: {} accepted ({} in a 202), {} rejected, {} bad, {} waiting, {} retries   ",
            lines.load(Ordering::Relaxed),
            s.accepted_kafka + s.accepted_spool,
            s.accepted_spool,
            s.rejected,
            bad,
            s.enqueued.saturating_sub(s.accepted_kafka + s.accepted_spool + s.rejected + s.dropped),
            s.retries,
        );
        let _ = err.flush();
    }
    let _ = writeln!(err);
}

/// Whether progress lines should be shown: only on a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// `eventpipe send`'s command line.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The gateway: http(s)://HOST:PORT (`/v1/events` is added unless the URL ends with it).
    #[arg(long)]
    pub url: String,
    /// Write key (sent as the HTTP Basic user), when the gateway has `auth.keys_file`.
    #[arg(long)]
    pub write_key: Option<String>,
    /// Files of JSON lines, one event object per line (`schema`, `data`, optional `event_id`,
    /// `ts`, `context`), read in order; none or `-`: stdin.
    pub files: Vec<PathBuf>,
    /// Events per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// One request's timeout (a timed-out request is retried): 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = crate::ops::drain::parse_duration)]
    pub request_timeout: Duration,
    /// Give up (exit 1, the summary counts what was not delivered) when nothing was accepted or
    /// rejected for this long while events wait: 600, 90s, 10m; 0 retries for ever.
    #[arg(long, default_value = "10m", value_parser = crate::ops::drain::parse_duration)]
    pub timeout: Duration,
    /// Give up on an event after this many attempts (default: retry until --timeout).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Longest wait between two attempts of a batch (full jitter below it; a Retry-After from
    /// the gateway is a floor).
    #[arg(long, default_value = "10s", value_parser = crate::ops::drain::parse_duration)]
    pub max_backoff: Duration,
    /// Longer lines are bad input (reported, not sent).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_line_bytes: usize,
    /// Write every event that was not delivered to this file, one JSON line each with its event
    /// id: rerun `send` on it (same ids, so what did land after all is deduplicated).
    #[arg(long)]
    pub undelivered: Option<PathBuf>,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr (shown only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// Runs `eventpipe send`: prints the summary on stdout and returns the exit code.
pub fn main(args: Args) -> u8 {
    let opts = SendOptions {
        url: args.url,
        write_key: args.write_key,
        inputs: args.files,
        batch_size: args.batch_size as usize,
        concurrency: args.concurrency as usize,
        request_timeout: args.request_timeout,
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
        max_attempts: args.max_attempts,
        max_backoff: args.max_backoff,
        max_line_bytes: args.max_line_bytes,
        progress: !args.no_progress && stderr_is_terminal(),
        undelivered: args.undelivered,
    };
    let reads_stdin = opts.inputs.is_empty() || opts.inputs.iter().any(|p| p.as_os_str() == "-");
    if reads_stdin && std::io::stdin().is_terminal() {
        eprintln!("reading events from stdin, one JSON object per line (Ctrl-D ends)");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_ERROR;
        }
    };
    // Registered now, before any input is opened: from then on SIGINT/SIGTERM end the run
    // with a summary (exit 130) instead of killing the process.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = runtime.enter();
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    let interrupt = async move {
        match signals {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    };
    let summary = match runtime.block_on(run(opts, interrupt)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_ERROR;
        }
    };
    // The client's last connections close in the background; don't wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer(&mut out, &summary)
            .map_err(std::io::Error::from)
            .and_then(|_| writeln!(out))
    } else {
        writeln!(out, "{}", summary.text())
    };
    if printed.is_err() {
        return EXIT_ERROR;
    }
    summary.exit_code
}
