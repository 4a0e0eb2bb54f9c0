//! The suite: one command that measures the gateway against its two ceilings, with the same
//! generated events and the same broker set-up, and prints the table for BENCHMARKS.md.
//!
//! Per repetition, five phases, each on a fresh Tansu broker (memory engine) so no phase pays for
//! data an earlier one left behind:
//! 1. bare producer: the gateway's records, pre-encoded, produced with rdkafka (no HTTP);
//! 2. HTTP ceiling: the same requests to a gateway with `bench.http_only` (body read, 200);
//! 3. gateway, closed loop: the peak;
//! 4. gateway, open loop at `--open-load` × the peak's request rate: latency under load.
//!
//! Gateway phases start a fresh gateway process (so its peak RSS is the phase's own), read its
//! CPU time from `/proc` around the measured window, and afterwards count what reached Kafka.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::client::{Target, Trust};
use crate::gen::{GenConfig, Generator, SchemaChoice};
use crate::kafka;
use crate::load::{self, LoadConfig, Mode};
use crate::procs::{self, GatewayOptions, Proc};
use crate::report::{Check, Row};

pub const PREFIX: &str = "events.";
pub const DEAD_LETTER: &str = "events.invalid";

/// Everything a phase needs that does not change between phases.
pub struct Bench {
    pub gateway_bin: PathBuf,
    pub tansu_bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub partitions: u32,
    /// `--config` for every gateway; its `[kafka.librdkafka]` applies to the bare producer too.
    pub gateway_config: Option<PathBuf>,
    pub librdkafka: std::collections::BTreeMap<String, String>,
    pub warmup: Duration,
    pub duration: Duration,
    pub rt: tokio::runtime::Runtime,
}

/// What is sent: the schemas directory the gateway loads and the generator for it.
pub struct Workload {
    pub schemas_dir: PathBuf,
    pub schemas: Vec<SchemaChoice>,
    pub gen: Arc<Generator>,
    pub gen_cfg: GenConfig,
}

impl Workload {
    pub fn new(schemas_dir: PathBuf, gen_cfg: GenConfig) -> Workload {
        Workload {
            schemas_dir,
            schemas: gen_cfg.schemas.clone(),
            gen: Arc::new(Generator::new(&gen_cfg)),
            gen_cfg,
        }
    }

    /// The event topics this workload writes, plus the dead-letter topic.
    pub fn topics(&self) -> (Vec<String>, String) {
        let mut names: Vec<String> = self
            .schemas
            .iter()
            .map(|s| format!("{PREFIX}{}", s.id.split('/').next().unwrap_or(&s.id)))
            .collect();
        names.sort();
        names.dedup();
        (names, DEAD_LETTER.to_owned())
    }
}

/// How a gateway phase runs.
#[derive(Clone)]
pub struct GatewayRun {
    pub label: String,
    pub http_only: bool,
    pub tls: bool,
    pub load: LoadConfig,
    /// `perf record` the gateway during the measured window into this file.
    pub perf: Option<PathBuf>,
}

impl Bench {
    fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh broker with the workload's topics.
    pub fn broker(&self, w: &Workload) -> anyhow::Result<(Proc, String)> {
        let (broker, brokers) = procs::start_broker(&self.tansu_bin, self.log_dir())?;
        procs::create_topics(
            &self.gateway_bin,
            &brokers,
            &w.schemas_dir,
            PREFIX,
            DEAD_LETTER,
            self.partitions,
            self.gateway_config.as_deref(),
        )?;
        Ok((broker, brokers))
    }

    /// Phase 1: the bare producer.
    pub fn producer_ceiling(&self, w: &Workload, connections: usize) -> anyhow::Result<Row> {
        let (broker, brokers) = self.broker(w)?;
        let registry = eventpipe::schema::Registry::load(&w.schemas_dir)?;
        let records = kafka::encode_templates(&w.gen, &registry, PREFIX, DEAD_LETTER)?;
        let in_flight = (connections * w.gen_cfg.events_per_request).max(1) as u64;
        let broker_cpu0 = broker.cpu_secs();
        let other = procs::OtherLoad::start(&[broker.pid()]);
        let r = kafka::produce_ceiling(
            &brokers,
            &self.librdkafka,
            &records,
            in_flight,
            self.warmup,
            self.duration,
        )?;
        let broker_cpu = broker.cpu_secs() - broker_cpu0;
        let other_cores = other.cores();
        let (topics, dl) = w.topics();
        let mut all = topics.clone();
        all.push(dl);
        let counts = self.count(&brokers, &all)?;
        let found: u64 = counts.values().sum();
        let per_m = 1e6 / r.events.max(1) as f64;
        Ok(Row {
            label: "bare producer (rdkafka, no HTTP)".into(),
            events_per_sec: r.events_per_sec(),
            mb_per_sec: r.payload_bytes as f64 / 1e6 / r.elapsed.as_secs_f64(),
            latency_ms: None,
            gateway_cpu_per_m: Some(r.cpu_secs * per_m),
            broker_cpu_per_m: broker_cpu * per_m,
            peak_rss_mib: None,
            failures: r.failed,
            requests_per_sec: None,
            check: Some(Check {
                acked_events: r.total_acked,
                found_events: found,
                acked_dead: 0,
                found_dead: 0,
            }),
            note: format!(
                "{in_flight} messages in flight max; CPU column = producer process{}",
                other_note(other_cores)
            ),
        })
    }

    /// Phase 5: the latency floor, the bare producer at the open loop's request rate.
    pub fn producer_floor(&self, w: &Workload, rate: f64) -> anyhow::Result<Row> {
        let (broker, brokers) = self.broker(w)?;
        let registry = eventpipe::schema::Registry::load(&w.schemas_dir)?;
        let records = kafka::encode_templates(&w.gen, &registry, PREFIX, DEAD_LETTER)?;
        let batch = w.gen_cfg.events_per_request;
        let broker_cpu0 = broker.cpu_secs();
        let other = procs::OtherLoad::start(&[broker.pid()]);
        let (hist, sent, failed) = kafka::produce_open_loop(
            &brokers,
            &self.librdkafka,
            &records,
            batch,
            rate,
            self.warmup,
            self.duration,
        )?;
        let broker_cpu = broker.cpu_secs() - broker_cpu0;
        let ms = |q| hist.value_at_quantile(q) as f64 / 1000.0;
        let secs = self.duration.as_secs_f64();
        Ok(Row {
            label: "bare producer, open loop at the same rate".into(),
            events_per_sec: hist.len() as f64 * batch as f64 / secs,
            mb_per_sec: f64::NAN,
            latency_ms: Some([ms(0.5), ms(0.99), ms(0.999)]),
            gateway_cpu_per_m: None,
            broker_cpu_per_m: broker_cpu * 1e6 / sent.max(1) as f64,
            peak_rss_mib: None,
            failures: failed,
            requests_per_sec: Some(hist.len() as f64 / secs),
            check: None,
            note: format!(
                "batches of {batch} records at {rate:.0}/s, each timed from its due time to its \
                 last ack: the latency floor of this broker and producer configuration{}",
                other_note(other.cores())
            ),
        })
    }

    /// Phases 2-4: a gateway process under HTTP load.
    pub fn gateway_phase(&self, w: &Workload, run: &GatewayRun) -> anyhow::Result<Row> {
        let (broker, brokers) = self.broker(w)?;
        let tls = if run.tls {
            Some(crate::client::self_signed(self.log_dir())?)
        } else {
            None
        };
        let gw = procs::start_gateway(&GatewayOptions {
            bin: &self.gateway_bin,
            brokers: &brokers,
            schemas: &w.schemas_dir,
            prefix: PREFIX,
            dead_letter: DEAD_LETTER,
            http_only: run.http_only,
            tls: tls.clone(),
            config: self.gateway_config.as_deref(),
            log_dir: self.log_dir(),
        })?;
        let trust = tls.map(|(cert, _)| Trust::Ca(cert));
        let target = Arc::new(Target::new(&gw.url(), trust.as_ref())?);
        let (gw_cpu0, broker_cpu0) = (gw.proc.cpu_secs(), broker.cpu_secs());
        let self_cpu0 = procs::self_cpu_secs();
        let other = procs::OtherLoad::start(&[gw.proc.pid(), broker.pid()]);
        let perf = run.perf.clone().map(|out| {
            let (pid, delay) = (gw.proc.pid(), run.load.warmup);
            let duration = run.load.duration.min(Duration::from_secs(10));
            std::thread::spawn(move || {
                crate::profile::record(pid, &out, delay, duration).and_then(|mut c| Ok(c.wait()?))
            })
        });
        let result = self
            .rt
            .block_on(load::run(target, w.gen.clone(), run.load.clone()))?;
        if let Some(handle) = perf {
            let status = handle
                .join()
                .map_err(|_| anyhow::anyhow!("perf thread panicked"))??;
            anyhow::ensure!(status.success(), "perf record failed: {status}");
        }
        let gw_cpu = gw.proc.cpu_secs() - gw_cpu0;
        let broker_cpu = broker.cpu_secs() - broker_cpu0;
        let self_cpu = procs::self_cpu_secs() - self_cpu0;
        let other_cores = other.cores();
        let peak_rss = gw.proc.peak_rss_mib();
        drop(gw);
        // CPU covers warm-up and window, so it is divided by the events of both.
        let per_m = 1e6 / result.total_events_answered.max(1) as f64;
        let check = if run.http_only {
            None
        } else {
            let (topics, dl) = self.gateway_topics(w)?;
            let mut all = topics.clone();
            all.push(dl.clone());
            let counts = self.count(&brokers, &all)?;
            let found_dead = counts.get(&dl).copied().unwrap_or(0);
            Some(Check {
                acked_events: result.total_accepted,
                found_events: counts.values().sum::<u64>() - found_dead,
                acked_dead: result.total_rejected,
                found_dead,
            })
        };
        // The http-only handler answers `accepted: 0`: count the events it was sent.
        let events_per_sec = result.sent_events as f64 / result.secs();
        let mut note = format!(
            "{} conns, {:.0} req/s, loadtest CPU {:.1} s",
            run.load.connections,
            result.requests_per_sec(),
            self_cpu
        );
        if let Some(rate) = result.target_rate {
            note.push_str(&format!(", target {rate:.0} req/s"));
        }
        if result.unsent > 0 {
            note.push_str(&format!(", {} due requests never sent", result.unsent));
        }
        if result.total_spooled > 0 {
            note.push_str(&format!(", {} events spooled (202)", result.total_spooled));
        }
        if result.unexpected_rejections > 0 {
            note.push_str(&format!(
                ", {} unexpected rejections",
                result.unexpected_rejections
            ));
        }
        for (status, n) in result.statuses.iter().filter(|(s, _)| **s != 200) {
            note.push_str(&format!(", {n}×{status}"));
        }
        for (kind, n) in &result.errors {
            note.push_str(&format!(", {n} {kind} errors"));
        }
        note.push_str(&other_note(other_cores));
        note.push_str(&format!(
            "; slowest answer per second (ms): {}",
            result.max_per_second()
        ));
        drop(broker);
        Ok(Row {
            label: run.label.clone(),
            events_per_sec,
            mb_per_sec: result.wire_mb_per_sec(),
            latency_ms: Some([result.ms(0.5), result.ms(0.99), result.ms(0.999)]),
            gateway_cpu_per_m: Some(gw_cpu * per_m),
            broker_cpu_per_m: broker_cpu * per_m,
            peak_rss_mib: Some(peak_rss),
            failures: result.failures(),
            requests_per_sec: Some(result.requests_per_sec()),
            check,
            note,
        })
    }

    /// The topics a gateway phase's events go to, and the dead-letter topic: the workload's
    /// topics, or where the gateway config's `[routing]` sends them.
    fn gateway_topics(&self, w: &Workload) -> anyhow::Result<(Vec<String>, String)> {
        let Some(path) = &self.gateway_config else {
            return Ok(w.topics());
        };
        let config = eventpipe::config::load(
            Some(path),
            Vec::new(),
            vec![
                ("kafka.topic_prefix", PREFIX.into()),
                ("kafka.dead_letter_topic", DEAD_LETTER.into()),
            ],
        )?;
        let registry = eventpipe::schema::Registry::load(&w.schemas_dir)?;
        let mut topics = eventpipe::ops::topics::routed_topics(&config, &registry);
        topics.retain(|t| t != DEAD_LETTER);
        Ok((topics, DEAD_LETTER.to_owned()))
    }

    fn count(
        &self,
        brokers: &str,
        topics: &[String],
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        kafka::count_messages(
            brokers,
            topics,
            Duration::from_secs(3),
            Duration::from_secs(300),
        )
        .context("counting messages in Kafka")
    }
}

/// Says how much CPU other processes and the hypervisor took during a phase, if it matters.
fn other_note((other, steal): (f64, f64)) -> String {
    let mut s = String::new();
    if other >= 0.05 {
        s.push_str(&format!(
            "; other processes used {other:.2} cores meanwhile"
        ));
    }
    if steal >= 0.05 {
        s.push_str(&format!("; hypervisor steal {steal:.2} cores"));
    }
    s
}

/// One repetition of the five phases, then one closed-loop phase per many-schemas workload;
/// returns the rows in order.
pub fn repetition(
    bench: &Bench,
    w: &Workload,
    connections: usize,
    gzip: bool,
    tls: bool,
    open_load: f64,
    many_schemas: &[(usize, Workload)],
) -> anyhow::Result<Vec<Row>> {
    let closed = LoadConfig {
        connections,
        mode: Mode::Closed,
        warmup: bench.warmup,
        duration: bench.duration,
        gzip,
    };
    let mut rows = Vec::new();
    eprintln!("[suite] bare producer ceiling ...");
    rows.push(bench.producer_ceiling(w, connections)?);
    eprintln!("[suite] HTTP ceiling (bench.http_only) ...");
    rows.push(bench.gateway_phase(
        w,
        &GatewayRun {
            label: "HTTP ceiling (http_only gateway)".into(),
            http_only: true,
            tls,
            load: closed.clone(),
            perf: None,
        },
    )?);
    eprintln!("[suite] gateway, closed loop (peak) ...");
    let peak = bench.gateway_phase(
        w,
        &GatewayRun {
            label: "gateway, closed loop (peak)".into(),
            http_only: false,
            tls,
            load: closed.clone(),
            perf: None,
        },
    )?;
    let rate = peak.requests_per_sec.unwrap_or(1.0) * open_load;
    rows.push(peak);
    eprintln!("[suite] gateway, open loop at {rate:.0} req/s ...");
    rows.push(bench.gateway_phase(
        w,
        &GatewayRun {
            label: format!("gateway, open loop at {:.0}% of peak", open_load * 100.0),
            http_only: false,
            tls,
            load: LoadConfig {
                mode: Mode::Open(rate),
                ..closed
            },
            perf: None,
        },
    )?);
    eprintln!("[suite] bare producer, open loop at {rate:.0} batches/s ...");
    rows.push(bench.producer_floor(w, rate)?);
    for (count, many) in many_schemas {
        eprintln!("[suite] gateway, closed loop, {count} schemas ...");
        rows.push(bench.gateway_phase(
            many,
            &GatewayRun {
                label: schemas_label(*count),
                http_only: false,
                tls,
                load: closed.clone(),
                perf: None,
            },
        )?);
    }
    Ok(rows)
}

/// The label of the many-schemas phase with `count` schemas (`report::verdict` finds it by it).
pub fn schemas_label(count: usize) -> String {
    format!("gateway, closed loop, {count} schemas")
}

/// The many-schemas workloads: for each count, copies of the shipped schemas in a directory of
/// their own under `dir` (see `gen::shipped_copies`).
pub fn many_schema_workloads(
    shipped: &Path,
    dir: &Path,
    base: &GenConfig,
    counts: &[usize],
) -> anyhow::Result<Vec<(usize, Workload)>> {
    counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let schemas = dir.join(format!("schemas-{count}"));
            crate::gen::write_copies(shipped, &schemas, count)?;
            let cfg = GenConfig {
                schemas: crate::gen::shipped_copies(count),
                ..base.clone()
            };
            Ok((count, Workload::new(schemas, cfg)))
        })
        .collect()
}
