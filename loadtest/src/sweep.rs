//! The scaling sweep: one dimension at a time away from the suite's baseline (shipped schemas,
//! the suite's connections and events per request, plain HTTP, no gzip), each point a short
//! closed-loop run on a fresh broker and gateway. Plus the cost of idle keep-alive connections.
//!
//! The many-schemas points copy `schemas/page_view/1.json` into `count` names (`pv00`..) in a temp
//! directory, create their topics and start the gateway with `--schemas` on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Target, Trust};
use crate::gen::{self, GenConfig};
use crate::load::{self, LoadConfig, Mode};
use crate::procs::{self, GatewayOptions};
use crate::report::Row;
use crate::suite::{Bench, GatewayRun, Workload, DEAD_LETTER, PREFIX};

/// What to sweep; empty lists are skipped.
pub struct SweepPlan {
    /// Open-loop rates as shares of the baseline's peak request rate (a latency curve).
    pub rates: Vec<f64>,
    pub connections: Vec<usize>,
    pub events_per_request: Vec<usize>,
    pub schema_counts: Vec<usize>,
    pub tls: bool,
    pub gzip: bool,
    pub idle_connections: Option<usize>,
    /// How long idle connections are held before checking they still work.
    pub idle_hold: Duration,
}

/// Runs the plan; returns the rows (one per point) and the idle-connection report.
pub fn run(
    bench: &Bench,
    base: &GenConfig,
    shipped: &Path,
    base_connections: usize,
    plan: &SweepPlan,
) -> anyhow::Result<(Vec<Row>, Option<String>)> {
    let workload = Workload::new(shipped.to_path_buf(), base.clone());
    let closed = |connections| LoadConfig {
        connections,
        mode: Mode::Closed,
        warmup: bench.warmup,
        duration: bench.duration,
        gzip: false,
    };
    let point = |label: String, tls: bool, load: LoadConfig| GatewayRun {
        label,
        http_only: false,
        tls,
        load,
        perf: None,
    };
    let mut rows = Vec::new();
    let measure = |rows: &mut Vec<Row>, w: &Workload, run: GatewayRun| {
        eprintln!("[sweep] {} ...", run.label);
        rows.push(bench.gateway_phase(w, &run)?);
        anyhow::Ok(())
    };
    measure(
        &mut rows,
        &workload,
        point(
            format!(
                "baseline ({base_connections} conns, {} ev/req)",
                base.events_per_request
            ),
            false,
            closed(base_connections),
        ),
    )?;
    let peak_rate = rows[0].requests_per_sec.unwrap_or(1.0);
    for &share in &plan.rates {
        let mut load = closed(base_connections);
        load.mode = Mode::Open(peak_rate * share);
        let label = format!("open loop at {:.0}% of baseline peak", share * 100.0);
        measure(&mut rows, &workload, point(label, false, load))?;
        eprintln!("[sweep] bare producer at the same rate ...");
        rows.push(bench.producer_floor(&workload, peak_rate * share)?);
    }
    for &c in &plan.connections {
        measure(
            &mut rows,
            &workload,
            point(format!("connections = {c}"), false, closed(c)),
        )?;
    }
    for &n in &plan.events_per_request {
        let w = Workload::new(
            shipped.to_path_buf(),
            GenConfig {
                events_per_request: n,
                ..base.clone()
            },
        );
        let label = format!("events/request = {n}");
        measure(&mut rows, &w, point(label, false, closed(base_connections)))?;
    }
    for &count in &plan.schema_counts {
        let dir = tempfile::tempdir()?;
        gen::write_copies(shipped, dir.path(), count)?;
        let w = Workload::new(
            dir.path().to_path_buf(),
            GenConfig {
                schemas: gen::shipped_copies(count),
                ..base.clone()
            },
        );
        let label = format!("schemas = {count} (copies of the shipped mix)");
        measure(&mut rows, &w, point(label, false, closed(base_connections)))?;
    }
    if plan.tls {
        let label = "TLS on (rustls, HTTP/1.1)".to_string();
        measure(
            &mut rows,
            &workload,
            point(label, true, closed(base_connections)),
        )?;
    }
    if plan.gzip {
        let mut load = closed(base_connections);
        load.gzip = true;
        measure(&mut rows, &workload, point("gzip on".into(), false, load))?;
    }
    let idle = match plan.idle_connections {
        Some(n) => Some(idle_connections(bench, base, shipped, n, plan.idle_hold)?),
        None => None,
    };
    Ok((rows, idle))
}

/// Opens `count` keep-alive connections (each proven with a one-event request), measures the
/// gateway's resident memory before and after, holds them idle for `hold`, then checks how many
/// still answer.
fn idle_connections(
    bench: &Bench,
    base: &GenConfig,
    shipped: &Path,
    count: usize,
    hold: Duration,
) -> anyhow::Result<String> {
    eprintln!("[sweep] {count} idle keep-alive connections ...");
    let w = Workload::new(
        shipped.to_path_buf(),
        GenConfig {
            events_per_request: 1,
            invalid_share: 0.0,
            templates: 256,
            ..base.clone()
        },
    );
    let (_broker, brokers) = bench.broker(&w)?;
    let log_dir: PathBuf = bench.dir.path().to_path_buf();
    let gw = procs::start_gateway(&GatewayOptions {
        bin: &bench.gateway_bin,
        brokers: &brokers,
        schemas: &w.schemas_dir,
        prefix: PREFIX,
        dead_letter: DEAD_LETTER,
        http_only: false,
        tls: None,
        config: bench.gateway_config.as_deref(),
        log_dir: &log_dir,
    })?;
    let target = Arc::new(Target::new(&gw.url(), None::<&Trust>)?);
    // Warm the gateway's producer and allocator with a few requests first.
    let (warm, _) = bench
        .rt
        .block_on(load::open_idle(target.clone(), w.gen.clone(), 16, 16));
    drop(warm);
    std::thread::sleep(Duration::from_millis(500));
    let rss0 = gw.proc.rss_mib();
    let started = std::time::Instant::now();
    let (conns, failed) = bench
        .rt
        .block_on(load::open_idle(target, w.gen.clone(), count, 256));
    let opened_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss1 = gw.proc.rss_mib();
    let open = conns.len();
    std::thread::sleep(hold);
    let usable = bench
        .rt
        .block_on(load::still_usable(conns, w.gen.clone(), 256));
    let rss2 = gw.proc.rss_mib();
    let peak = gw.proc.peak_rss_mib();
    let per_conn_kib = (rss1 - rss0) * 1024.0 / open.max(1) as f64;
    Ok(format!(
        "| {count} idle keep-alive connections | opened {open} ({failed} failed) in {:.1} s | \
         gateway RSS {rss0:.0} → {rss1:.0} MiB ({per_conn_kib:.1} KiB per connection) | \
         after {} s idle: {usable}/{open} still answered, RSS {rss2:.0} MiB, peak {peak:.0} MiB |",
        opened_in.as_secs_f64(),
        hold.as_secs(),
    ))
}
