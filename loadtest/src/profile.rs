//! Where the gateway's CPU goes: `perf record` of the gateway process during a closed-loop run,
//! summarised per thread, per symbol (self time) and per function including callees.
//!
//! Uses the `cpu-clock` software event, so it works in VMs without hardware counters, and DWARF
//! call graphs, since release builds have no frame pointers (the workspace builds release with
//! `debug = 1`, so symbols and line tables are there). perf's own overhead lowers the run's
//! throughput: profile runs are for proportions, not for the numbers in the main table.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// Starts `perf record` on `pid` after `delay`, for `duration`; returns the perf process.
pub fn record(pid: u32, out: &Path, delay: Duration, duration: Duration) -> anyhow::Result<Child> {
    std::thread::sleep(delay);
    Command::new("perf")
        .args(["record", "-F", "499", "-e", "cpu-clock"])
        .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &format!("{:.1}", duration.as_secs_f64())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf (apt-get install linux-perf)")
}

/// Checks `perf` can sample at all here.
pub fn available() -> anyhow::Result<()> {
    let out = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("perf is not installed (apt-get install linux-perf)")?;
    if !out.status.success() {
        bail!(
            "perf cannot record here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn report(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(data)
        .args(["--stdio", "-g", "none"])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .context("perf report")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lines of a perf report without comments, blanks and trailing padding.
fn rows(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim_end_matches([' ', '-']).to_owned())
}

/// Frames that only say "a future was polled" or "a thread ran": everything is under them.
fn is_plumbing(line: &str) -> bool {
    const PLUMBING: &[&str] = &[
        "(inlined)",
        "as core::future::future::Future>::poll",
        "catch_unwind",
        "start_thread",
        "clone3",
        "thread_start",
        "0xffffffffffffffff",
        "tokio::runtime::",
        "call_once",
        "__libc_start_main",
        "serve_with_sink::{{closure}}",
        "Dispatcher<",
        "tower::",
        "axum::",
        "hyper_util::server",
        "futures_util::",
        "rd_kafka_broker_thread_main",
    ];
    PLUMBING.iter().any(|p| line.contains(p))
}

/// A Markdown summary: CPU per thread, top self-time symbols, top inclusive functions.
pub fn summarise(data: &Path, top: usize) -> anyhow::Result<String> {
    let mut s = String::from("CPU samples per thread:\n\n```\n");
    for line in rows(&report(data, &["--no-children", "--sort", "comm"])?).take(8) {
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str("```\n\nTop symbols by self time:\n\n```\n");
    let self_time = report(
        data,
        &[
            "--no-children",
            "--sort",
            "symbol",
            "--percent-limit",
            "0.5",
        ],
    )?;
    for line in rows(&self_time).take(top) {
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str("```\n\nTop functions including callees (children, self):\n\n```\n");
    let children = report(
        data,
        &["--children", "--sort", "symbol", "--percent-limit", "1"],
    )?;
    for line in rows(&children).filter(|l| !is_plumbing(l)).take(top) {
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str("```\n");
    Ok(s)
}
