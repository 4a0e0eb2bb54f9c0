//! `eventpipe-loadtest`: load generator and benchmark suite for the eventpipe gateway.
//!
//! What it measures: events/s, request MB/s, latency (HDR histogram: p50/p99/p99.9), answers by
//! HTTP status, gateway CPU seconds per million events and peak RSS (from `/proc`), and whether
//! every acknowledged event reached Kafka (it reads the topics back and compares with the sum of
//! `accepted` — and of `rejected`, against the dead-letter topic — over all 200 answers). It
//! compares the gateway with two ceilings measured in the same run with the same events: a bare
//! rdkafka producer writing the gateway's own pre-encoded records, and an HTTP-only gateway
//! (`EVENTPIPE_BENCH__HTTP_ONLY=true`) that reads bodies and answers 200.
//!
//! How to run (see `loadtest/run.sh` and BENCHMARKS.md):
//!
//! ```sh
//! cargo build --release -p eventpipe && cargo build --release -p eventpipe-loadtest
//! target/release/eventpipe-loadtest suite --duration 20s            # broker + gateway + table
//! target/release/eventpipe-loadtest sweep --connections 256,1024 --tls --gzip --idle 10000
//! target/release/eventpipe-loadtest run --url http://127.0.0.1:8080/v1/events --rate 500
//! target/release/eventpipe-loadtest profile --duration 10s   # perf record of the gateway
//! target/release/eventpipe-loadtest produce --brokers 127.0.0.1:9092 --rate 100
//! ```
//!
//! Load: bundles of `--events-per-request` events (~`--event-bytes` each) of the shipped schemas,
//! `--invalid-share` of them invalid, fresh UUID event ids, over `--connections` HTTP/1.1
//! keep-alive connections, optionally gzip and TLS. Closed loop by default; `--rate` makes it an
//! open loop whose latencies are measured from each request's intended send time.
//! The many-schemas points (`suite --schema-counts 1,50,200`, `sweep --sweep-schemas`) use copies
//! of the shipped schemas (`gen::shipped_copies`), one topic each, with the shipped mix's event
//! kinds and sizes: only the number of topics (and so partitions) changes between them.
//! Nothing here is a test: timing belongs in this tool, never in `cargo test`.

mod args;
mod client;
mod gen;
mod kafka;
mod load;
mod procs;
mod profile;
mod report;
mod suite;
mod sweep;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::args::{parse_duration, parse_key_value};
use crate::client::{Target, Trust};
use crate::gen::GenConfig;
use crate::load::{LoadConfig, Mode};

/// The gateway's allocator, so the `pipeline` subcommand and the bare-producer ceiling (which run
/// gateway code in this process) cost what they cost in the gateway.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "eventpipe-loadtest",
    version,
    about = "Load generator and benchmarks for eventpipe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a running gateway; optionally check Kafka afterwards.
    Run(RunArgs),
    /// Start a broker and gateways, measure the gateway and both ceilings, print the table.
    Suite(SuiteArgs),
    /// Scaling sweep: vary one dimension at a time from the suite's baseline.
    Sweep(SweepArgs),
    /// perf-record the gateway under closed-loop load and summarise where its CPU goes.
    Profile(ProfileArgs),
    /// Bare producer against running brokers: the gateway's records, no HTTP.
    Produce(ProduceArgs),
    /// The pipeline alone on one thread (no HTTP, no Kafka): ns per event by stage.
    Pipeline(PipelineArgs),
}

#[derive(Args)]
struct PipelineArgs {
    #[command(flatten)]
    traffic: Traffic,
    /// Schema directory (default: the workspace's schemas/).
    #[arg(long)]
    schemas: Option<PathBuf>,
    /// Run exactly this many requests instead of `--duration` (for callgrind: same work twice).
    #[arg(long)]
    requests: Option<u64>,
}

#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    traffic: Traffic,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Schema directory (default: the workspace's schemas/).
    #[arg(long)]
    schemas: Option<PathBuf>,
    /// Open loop at this many batches (requests' worth of records) per second; default: as fast
    /// as `--connections` × events per request in flight allow.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = suite::PREFIX)]
    topic_prefix: String,
    #[arg(long, default_value = suite::DEAD_LETTER)]
    dead_letter_topic: String,
    /// librdkafka property overriding the gateway's producer settings, e.g. linger.ms=1.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    overrides: Vec<(String, String)>,
}

/// What is sent.
#[derive(Args, Clone)]
struct Traffic {
    /// Events per request.
    #[arg(long, default_value_t = 50)]
    events_per_request: usize,
    /// Mean event size in bytes (sizes spread over 50%..150% of it).
    #[arg(long, default_value_t = 500)]
    event_bytes: usize,
    /// Share of invalid events (they go to the dead-letter topic).
    #[arg(long, default_value_t = 0.02)]
    invalid_share: f64,
    /// Distinct pre-built bodies (event ids are fresh in every request anyway).
    #[arg(long, default_value_t = 64)]
    templates: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Measured time per run, e.g. 20s, 500ms, 1m.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured load before the measured window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

impl Traffic {
    fn gen_config(&self) -> GenConfig {
        GenConfig {
            events_per_request: self.events_per_request,
            event_bytes: self.event_bytes,
            invalid_share: self.invalid_share,
            schemas: gen::shipped_mix(),
            templates: self.templates,
            seed: self.seed,
        }
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    traffic: Traffic,
    /// `http(s)://host:port/v1/events`.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/events")]
    url: String,
    /// Open loop at this many requests per second (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// gzip request bodies.
    #[arg(long)]
    gzip: bool,
    /// PEM with the CA (or self-signed certificate) to trust for https.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate.
    #[arg(long)]
    insecure: bool,
    /// After the run, count the topics on these brokers and compare with what was acknowledged.
    #[arg(long)]
    verify_brokers: Option<String>,
    #[arg(long, default_value = suite::PREFIX)]
    topic_prefix: String,
    #[arg(long, default_value = suite::DEAD_LETTER)]
    dead_letter_topic: String,
}

/// Where the binaries and schemas are.
#[derive(Args)]
struct Setup {
    /// Gateway binary (default: next to this binary, else target/release/eventpipe).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Tansu binary (default: $TANSU_BIN, PATH, ~/.cargo/bin).
    #[arg(long)]
    tansu_bin: Option<PathBuf>,
    /// Schema directory (default: the workspace's schemas/).
    #[arg(long)]
    schemas: Option<PathBuf>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// A gateway config file (TOML); its `[kafka.librdkafka]` is applied to the bare producer
    /// too, e.g. to compare `linger.ms` settings.
    #[arg(long)]
    gateway_config: Option<PathBuf>,
}

#[derive(Args)]
struct SuiteArgs {
    #[command(flatten)]
    traffic: Traffic,
    #[command(flatten)]
    setup: Setup,
    /// Repetitions; with more than one, medians are printed too.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Open-loop rate as a share of the closed-loop peak's request rate.
    #[arg(long, default_value_t = 0.5)]
    open_load: f64,
    /// Closed-loop phases with this many schemas (copies of the shipped mix, one topic each),
    /// after the five phases; `--schema-counts 0` for none.
    #[arg(long, value_delimiter = ',', default_value = "1,50,200")]
    schema_counts: Vec<usize>,
    #[arg(long)]
    gzip: bool,
    /// HTTPS with a generated self-signed certificate.
    #[arg(long)]
    tls: bool,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    traffic: Traffic,
    #[command(flatten)]
    setup: Setup,
    /// Open-loop rates to try, as shares of the baseline's peak request rate, e.g. 0.1,0.3,0.5.
    #[arg(long, value_delimiter = ',')]
    sweep_rates: Vec<f64>,
    /// Connection counts to try, e.g. 64,256,1024.
    #[arg(long, value_delimiter = ',')]
    sweep_connections: Vec<usize>,
    /// Events per request to try, e.g. 1,50,500.
    #[arg(long, value_delimiter = ',')]
    sweep_events: Vec<usize>,
    /// Schema counts to try (copies of the shipped mix, one topic each), e.g. 1,50,200.
    #[arg(long, value_delimiter = ',')]
    sweep_schemas: Vec<usize>,
    /// Add a TLS point.
    #[arg(long)]
    tls: bool,
    /// Add a gzip point.
    #[arg(long)]
    gzip: bool,
    /// Measure this many idle keep-alive connections.
    #[arg(long)]
    idle: Option<usize>,
    /// How long the idle connections are held before being used again.
    #[arg(long, default_value = "12s", value_parser = parse_duration)]
    idle_hold: Duration,
}

#[derive(Args)]
struct ProfileArgs {
    #[command(flatten)]
    traffic: Traffic,
    #[command(flatten)]
    setup: Setup,
    /// Where perf writes its samples.
    #[arg(long, default_value = "perf-gateway.data")]
    out: PathBuf,
    /// Lines per summary section.
    #[arg(long, default_value_t = 30)]
    top: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let fds = procs::raise_fd_limit();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Suite(args) => run_suite(args),
        Command::Sweep(args) => run_sweep(args, fds),
        Command::Profile(args) => run_profile(args),
        Command::Produce(args) => run_produce(args),
        Command::Pipeline(args) => run_pipeline(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let trust = match (&args.ca, args.insecure) {
        (Some(ca), _) => Some(Trust::Ca(ca.clone())),
        (None, true) => Some(Trust::Insecure),
        (None, false) => None,
    };
    let target = Arc::new(Target::new(&args.url, trust.as_ref())?);
    let gen = Arc::new(gen::Generator::new(&args.traffic.gen_config()));
    let cfg = LoadConfig {
        connections: args.traffic.connections,
        mode: args.rate.map_or(Mode::Closed, Mode::Open),
        warmup: args.traffic.warmup,
        duration: args.traffic.duration,
        gzip: args.gzip,
    };
    let cpu0 = procs::self_cpu_secs();
    let r = runtime()?.block_on(load::run(target, gen, cfg))?;
    println!(
        "{:.0} events/s, {:.0} req/s, {:.2} MB/s on the wire, p50 {:.1} ms, p99 {:.1} ms, \
         p99.9 {:.1} ms, max {:.1} ms",
        r.events_per_sec(),
        r.requests_per_sec(),
        r.wire_mb_per_sec(),
        r.ms(0.5),
        r.ms(0.99),
        r.ms(0.999),
        r.latency.max() as f64 / 1000.0
    );
    println!(
        "statuses {:?}, errors {:?}, unsent {}, unexpected rejections {}, loadtest CPU {:.1} s",
        r.statuses,
        r.errors,
        r.unsent,
        r.unexpected_rejections,
        procs::self_cpu_secs() - cpu0
    );
    println!("slowest answer per second (ms): {}", r.max_per_second());
    if let Some(brokers) = &args.verify_brokers {
        let mut topics: Vec<String> = gen::shipped_mix()
            .iter()
            .map(|s| {
                format!(
                    "{}{}",
                    args.topic_prefix,
                    s.id.split('/').next().unwrap_or("")
                )
            })
            .collect();
        topics.dedup();
        topics.push(args.dead_letter_topic.clone());
        let counts = kafka::count_messages(
            brokers,
            &topics,
            Duration::from_secs(3),
            Duration::from_secs(300),
        )?;
        let dead = counts.get(&args.dead_letter_topic).copied().unwrap_or(0);
        let check = report::Check {
            acked_events: r.total_accepted,
            found_events: counts.values().sum::<u64>() - dead,
            acked_dead: r.total_rejected,
            found_dead: dead,
        };
        println!("Kafka: {} {counts:?}", check.describe());
        anyhow::ensure!(check.ok(), "acknowledged events are missing from Kafka");
    }
    Ok(())
}

fn bench(setup: &Setup, traffic: &Traffic) -> anyhow::Result<(suite::Bench, PathBuf)> {
    // Absolute: the gateway is started with the phase's log directory as its current dir.
    let gateway_bin = match &setup.gateway_bin {
        Some(p) => p
            .canonicalize()
            .with_context(|| format!("gateway binary {}", p.display()))?,
        None => procs::find_gateway()?,
    };
    let tansu_bin = match &setup.tansu_bin {
        Some(p) => p.clone(),
        None => procs::find_tansu()?,
    };
    let schemas = setup
        .schemas
        .clone()
        .unwrap_or_else(|| procs::workspace_root().join("schemas"));
    let schemas = schemas
        .canonicalize()
        .with_context(|| format!("schemas dir {}", schemas.display()))?;
    let librdkafka = match &setup.gateway_config {
        Some(path) => {
            let path = path
                .canonicalize()
                .with_context(|| format!("gateway config {}", path.display()))?;
            eventpipe::config::load(Some(&path), Vec::new(), Vec::new())?
                .kafka
                .librdkafka
        }
        None => Default::default(),
    };
    let bench = suite::Bench {
        gateway_bin,
        tansu_bin,
        gateway_config: setup
            .gateway_config
            .as_ref()
            .map(|p| p.canonicalize())
            .transpose()?,
        librdkafka,
        dir: tempfile::Builder::new()
            .prefix("eventpipe-loadtest")
            .tempdir()?,
        partitions: setup.partitions,
        warmup: traffic.warmup,
        duration: traffic.duration,
        rt: runtime()?,
    };
    eprintln!(
        "[setup] gateway {} | tansu {} | logs in {}",
        bench.gateway_bin.display(),
        bench.tansu_bin.display(),
        bench.dir.path().display()
    );
    Ok((bench, schemas))
}

fn header(what: &str) {
    println!("## {what}\n");
    println!("- machine: {}", procs::machine());
    println!(
        "- command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
}

fn workload_line(w: &suite::Workload, t: &Traffic) {
    println!(
        "- workload: {} events/request, mean body {:.0} B (~{:.0} B/event), {:.0}% invalid, \
         {} s measured after {} s warm-up per phase\n",
        t.events_per_request,
        w.gen.mean_body_bytes(),
        w.gen.mean_body_bytes() / w.gen.mean_events(),
        t.invalid_share * 100.0,
        t.duration.as_secs_f64(),
        t.warmup.as_secs_f64()
    );
}

fn run_suite(args: SuiteArgs) -> anyhow::Result<()> {
    let (bench, schemas) = bench(&args.setup, &args.traffic)?;
    let w = suite::Workload::new(schemas.clone(), args.traffic.gen_config());
    let many = suite::many_schema_workloads(
        &schemas,
        bench.dir.path(),
        &args.traffic.gen_config(),
        &args.schema_counts,
    )?;
    let mut reps = Vec::new();
    for i in 0..args.repeat.max(1) {
        eprintln!("[suite] repetition {}/{}", i + 1, args.repeat.max(1));
        let rows = suite::repetition(
            &bench,
            &w,
            args.traffic.connections,
            args.gzip,
            args.tls,
            args.open_load,
            &many,
        )?;
        eprint!("{}", report::table(&rows));
        reps.push(rows);
    }
    header("eventpipe benchmark suite");
    workload_line(&w, &args.traffic);
    for (i, rows) in reps.iter().enumerate() {
        println!(
            "### Run {}\n\n{}\n{}",
            i + 1,
            report::table(rows),
            report::notes(rows)
        );
    }
    let summary = if reps.len() > 1 {
        let med = report::medians(&reps);
        println!(
            "### Median of {} runs\n\n{}",
            reps.len(),
            report::table(&med)
        );
        med
    } else {
        reps[0].clone()
    };
    println!("### Against the targets\n\n{}", report::verdict(&summary));
    let failed = reps
        .iter()
        .flatten()
        .any(|r| r.check.as_ref().is_some_and(|c| !c.ok()));
    anyhow::ensure!(!failed, "acknowledged events are missing from Kafka");
    Ok(())
}

fn run_sweep(args: SweepArgs, fds: u64) -> anyhow::Result<()> {
    let (bench, schemas) = bench(&args.setup, &args.traffic)?;
    let plan = sweep::SweepPlan {
        rates: args.sweep_rates,
        connections: args.sweep_connections,
        events_per_request: args.sweep_events,
        schema_counts: args.sweep_schemas,
        tls: args.tls,
        gzip: args.gzip,
        idle_connections: args.idle,
        idle_hold: args.idle_hold,
    };
    let base = args.traffic.gen_config();
    let (rows, idle) = sweep::run(&bench, &base, &schemas, args.traffic.connections, &plan)?;
    header("eventpipe scaling sweep (closed loop)");
    let w = suite::Workload::new(schemas, base);
    workload_line(&w, &args.traffic);
    println!("{}\n{}", report::table(&rows), report::notes(&rows));
    if let Some(idle) = idle {
        println!("Idle connections (open-file limit {fds}):\n\n{idle}");
    }
    Ok(())
}

fn run_profile(args: ProfileArgs) -> anyhow::Result<()> {
    profile::available()?;
    let (bench, schemas) = bench(&args.setup, &args.traffic)?;
    let w = suite::Workload::new(schemas, args.traffic.gen_config());
    let out = std::env::current_dir()?.join(&args.out);
    let run = suite::GatewayRun {
        label: "gateway, closed loop, under perf".into(),
        http_only: false,
        tls: false,
        load: LoadConfig {
            connections: args.traffic.connections,
            mode: Mode::Closed,
            warmup: args.traffic.warmup,
            duration: args.traffic.duration,
            gzip: false,
        },
        perf: Some(out.clone()),
    };
    let row = bench.gateway_phase(&w, &run)?;
    header("where the gateway's CPU goes (perf, cpu-clock, DWARF call graphs)");
    workload_line(&w, &args.traffic);
    println!(
        "{}\n{}",
        report::table(std::slice::from_ref(&row)),
        report::notes(&[row])
    );
    println!("{}", profile::summarise(&out, args.top)?);
    println!("perf data: {}", out.display());
    Ok(())
}

/// Bundle parse and `pipeline::process` over the generator's bodies, as the gateway runs them
/// for one request, on this thread. Fresh event ids per body (copied in before the clock runs).
fn run_pipeline(args: PipelineArgs) -> anyhow::Result<()> {
    use eventpipe::pipeline::{self, Bundle, PipelineConfig};
    use std::time::Instant;
    let schemas = args
        .schemas
        .unwrap_or_else(|| procs::workspace_root().join("schemas"));
    let registry = eventpipe::schema::Registry::load(&schemas)?;
    let cfg = PipelineConfig::new(
        eventpipe::config::Limits::default(),
        suite::PREFIX,
        suite::DEAD_LETTER,
        &registry,
    );
    let gen = gen::Generator::new(&args.traffic.gen_config());
    let enrichment = kafka::loadtest_enrichment();
    let bodies: Vec<Vec<u8>> = (0..256).map(|n| gen.template(n).fresh_body()).collect();
    let (mut parse, mut process, mut events, mut requests) = (0u128, 0u128, 0u64, 0u64);
    let started = Instant::now();
    let done = |requests: u64| match args.requests {
        Some(n) => requests >= n.max(1),
        None => started.elapsed() >= args.traffic.duration,
    };
    while !done(requests) {
        let body = &bodies[(requests % bodies.len() as u64) as usize];
        let t0 = Instant::now();
        let bundle = Bundle::parse(body, cfg.limits.max_depth).context("template body")?;
        let t1 = Instant::now();
        let out =
            pipeline::process(&bundle, &registry, &cfg, &enrichment).context("template body")?;
        events += bundle.events.len() as u64;
        // The gateway frees both too, before answering.
        drop(out);
        drop(bundle);
        let t2 = Instant::now();
        requests += 1;
        parse += (t1 - t0).as_nanos();
        process += (t2 - t1).as_nanos();
    }
    let per_event = |ns: u128| ns as f64 / events.max(1) as f64;
    println!(
        "{requests} requests, {events} events: bundle parse {:.0} ns/event, process {:.0} ns/event, total {:.0} ns/event ({:.0} events/s on one core)",
        per_event(parse),
        per_event(process),
        per_event(parse + process),
        1e9 / per_event(parse + process),
    );
    Ok(())
}

fn run_produce(args: ProduceArgs) -> anyhow::Result<()> {
    let schemas = args
        .schemas
        .unwrap_or_else(|| procs::workspace_root().join("schemas"));
    let registry = eventpipe::schema::Registry::load(&schemas)?;
    let gen = gen::Generator::new(&args.traffic.gen_config());
    let records =
        kafka::encode_templates(&gen, &registry, &args.topic_prefix, &args.dead_letter_topic)?;
    let t = &args.traffic;
    let overrides: std::collections::BTreeMap<String, String> =
        args.overrides.into_iter().collect();
    match args.rate {
        Some(rate) => {
            let (h, sent, failed) = kafka::produce_open_loop(
                &args.brokers,
                &overrides,
                &records,
                t.events_per_request,
                rate,
                t.warmup,
                t.duration,
            )?;
            let ms = |q| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "{} batches of {} acknowledged in the window; batch latency p50 {:.1} ms, p99 {:.1} \
                 ms, p99.9 {:.1} ms, max {:.1} ms; {sent} records sent, {failed} failed",
                h.len(),
                t.events_per_request,
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            );
        }
        None => {
            let in_flight = (t.connections * t.events_per_request) as u64;
            let r = kafka::produce_ceiling(
                &args.brokers,
                &overrides,
                &records,
                in_flight,
                t.warmup,
                t.duration,
            )?;
            println!(
                "{:.0} records/s acknowledged, {} failed, producer CPU {:.1} s",
                r.events_per_sec(),
                r.failed,
                r.cpu_secs
            );
        }
    }
    Ok(())
}
