//! `eventpipe audit --watch`: checks every `--interval` and serves the verdicts as Prometheus
//! metrics on `--listen` (`/metrics`), for alerting.
//!
//! Cost: the auditor keeps its consumer positions and books between checks, so each check reads
//! only what was produced since the last one (plus the audit topic's new records); memory is
//! bounded by the lookback (`--since`, relative, default 1h): windows older than it are
//! dropped. A topic deleted between checks is seen at once (its events turn missing). A topic
//! deleted *and recreated* between two checks cannot be told from one that only grew (Tansu's
//! watermarks are not exact enough to notice offsets going back), so every `RESCAN_EVERY`-th
//! check starts over from the lookback's start: that check costs a full read of the lookback.
//!
//! Gauges are sums over the closed windows (not `open`) of the lookback; a failed check keeps
//! the previous gauges, counts `eventpipe_audit_check_errors_total` and leaves
//! `eventpipe_audit_last_check_timestamp_seconds` behind (alert on its age).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::header;
use axum::routing::get;
use axum::Router;

use super::books::{Row, Status};
use super::{warn, AuditOptions, Auditor};
use crate::metrics;

/// Every this many checks, the auditor starts over (see the module doc).
pub const RESCAN_EVERY: u64 = 10;

/// The Prometheus text for one check's rows.
pub fn render(rows: &[Row], last_check_s: f64, errors: u64) -> String {
    let mut by_series: BTreeMap<(&str, &str), [i64; 3]> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status != Status::Open) {
        let e = by_series.entry((&r.topic, &r.host)).or_default();
        e[0] += r.missing;
        e[1] += r.duplicates;
        e[2] += r.unreported;
    }
    let mut out = String::new();
    let gauges = [
        (
            metrics::AUDIT_MISSING,
            "Events reported by gateways and not found, over the closed windows of the lookback.",
        ),
        (
            metrics::AUDIT_DUPLICATES,
            "Events found more than once, over the closed windows of the lookback.",
        ),
        (
            metrics::AUDIT_UNREPORTED,
            "Events found beyond what gateways reported, over the closed windows of the lookback.",
        ),
    ];
    for (i, (name, help)) in gauges.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for ((topic, host), v) in &by_series {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",host=\"{}\"}} {}",
                escape(topic),
                escape(host),
                v[i]
            );
        }
    }
    let name = metrics::AUDIT_WINDOWS;
    let _ = writeln!(
        out,
        "# HELP {name} Rows (window, topic, host) of the last check by status.\n# TYPE {name} gauge"
    );
    for s in Status::ALL {
        let n = rows.iter().filter(|r| r.status == s).count();
        let _ = writeln!(out, "{name}{{status=\"{}\"}} {n}", s.as_str());
    }
    let name = metrics::AUDIT_LAST_CHECK;
    let _ = writeln!(
        out,
        "# HELP {name} Unix time of the last completed check.\n# TYPE {name} gauge\n{name} {last_check_s}"
    );
    let name = metrics::AUDIT_CHECK_ERRORS;
    let _ = writeln!(
        out,
        "# HELP {name} Checks that failed.\n# TYPE {name} counter\n{name} {errors}"
    );
    out
}

/// Label values may hold any topic or host name: escape as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Checks every `interval` until SIGTERM/SIGINT, serving metrics on `listen`. Returns the exit
/// code: 0 after a signal, 2 when the listener cannot be served.
pub fn run(opts: AuditOptions, listen: SocketAddr, interval: Duration) -> u8 {
    match watch(opts, listen, interval) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
    }
}

fn watch(opts: AuditOptions, listen: SocketAddr, interval: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let text = Arc::new(Mutex::new(render(&[], 0.0, 0)));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("binding --listen {listen}"))?;
    let served = text.clone();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = served.lock().map(|t| t.clone()).unwrap_or_default();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "audit: metrics listener failed");
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        crate::server::shutdown_signal().await;
        flag.store(true, Ordering::SeqCst);
    });

    let mut auditor: Option<Auditor> = None;
    let (mut errors, mut last_check_s, mut last_rows) = (0u64, 0.0f64, Vec::new());
    let mut checks = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        if checks.is_multiple_of(RESCAN_EVERY) {
            auditor = None;
        }
        checks += 1;
        let result = match auditor.as_mut() {
            Some(a) => a.check(),
            None => Auditor::new(opts.clone()).and_then(|mut a| {
                let r = a.check();
                auditor = Some(a);
                r
            }),
        };
        match result {
            Ok((rows, notes)) => {
                warn(&notes);
                last_check_s = super::now_ms() as f64 / 1000.0;
                let failing = rows.iter().filter(|r| r.status.is_failure()).count();
                tracing::info!(
                    rows = rows.len(),
                    failing,
                    missing = rows.iter().map(|r| r.missing).sum::<i64>(),
                    ids_held = auditor.as_ref().map_or(0, |a| a.ids_held()),
                    took_ms = started.elapsed().as_millis() as u64,
                    "audit check"
                );
                last_rows = rows;
            }
            Err(e) => {
                errors += 1;
                // Start over next time: the reader may have stopped mid-way.
                auditor = None;
                tracing::error!(error = %format!("{e:#}"), "audit check failed");
            }
        }
        if let Ok(mut t) = text.lock() {
            *t = render(&last_rows, last_check_s, errors);
        }
        let next = started + interval;
        while !stop.load(Ordering::SeqCst) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100).min(interval));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str, host: &str, status: Status, missing: i64) -> Row {
        Row {
            window_start_ms: 0,
            window_ms: 60_000,
            topic: topic.into(),
            host: host.into(),
            reported: 10,
            pending: 0,
            found: 10 - missing,
            missing,
            duplicates: 1,
            unreported: 0,
            audited: true,
            status,
            note: None,
        }
    }

    #[test]
    fn gauges_sum_closed_windows_per_topic_and_host() {
        let rows = [
            row("events.click", "gw\"1", Status::Incomplete, 3),
            row("events.click", "gw\"1", Status::Incomplete, 2),
            row("events.click", "gw\"1", Status::Open, 7),
            row("events.page_view", "gw2", Status::Complete, 0),
        ];
        let text = render(&rows, 12.5, 4);
        assert!(text.contains(
            "eventpipe_audit_missing_events{topic=\"events.click\",host=\"gw\\\"1\"} 5\n"
        ));
        assert!(text.contains(
            "eventpipe_audit_duplicate_events{topic=\"events.click\",host=\"gw\\\"1\"} 2\n"
        ));
        assert!(text.contains(
            "eventpipe_audit_missing_events{topic=\"events.page_view\",host=\"gw2\"} 0\n"
        ));
        assert!(text.contains("eventpipe_audit_windows{status=\"incomplete\"} 2\n"));
        assert!(text.contains("eventpipe_audit_windows{status=\"open\"} 1\n"));
        assert!(text.contains("eventpipe_audit_windows{status=\"pending-past-grace\"} 0\n"));
        assert!(text.contains("eventpipe_audit_last_check_timestamp_seconds 12.5\n"));
        assert!(text.contains("eventpipe_audit_check_errors_total 4\n"));
    }
}
