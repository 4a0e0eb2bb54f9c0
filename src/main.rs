//! The `eventpipe` binary: parses the command line and wires the library together.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eventpipe::{config, ops, schema, server};

/// mimalloc: the hot path allocates and frees many small, short-lived buffers per event (parsed
/// JSON, records) across threads; glibc malloc spent ~25% of the gateway's CPU on them
/// (BENCHMARKS.md, profile).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "eventpipe",
    version,
    about = "Beacon ingestion gateway: JSON events -> schemas -> Thrift -> Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Manage topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Check schemas.
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Print messages of a topic as JSON lines, decoded from Thrift.
    Tail(TailArgs),
    /// Balance the gateways' audit records against the data topics (exit 0 complete, 1
    /// incomplete, 2 error).
    Audit(AuditArgs),
    /// Restart the fleet one host at a time, checking its health between hosts.
    Rollout(ops::rollout::Args),
    /// Send JSON lines (one event per line; files or stdin) to a gateway with the client
    /// library's retries (exit 0 all durable or rejected, 1 some not delivered, 2 error, 3 bad
    /// input lines).
    Send(ops::send::Args),
    /// Inspect the local spool.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// List the records replay moved to the quarantine (refused by Kafka for good, or damaged).
    Quarantine {
        /// The spool directory (spool.dir).
        #[arg(long)]
        dir: PathBuf,
        /// One JSON object per line instead of text.
        #[arg(long, conflicts_with = "replay")]
        json: bool,
        /// Re-send the quarantined records (not damaged bytes) to Kafka, once the cause is fixed.
        #[arg(long)]
        replay: bool,
        /// For --replay: the gateway's TOML configuration (its `[kafka]` section: brokers,
        /// librdkafka security settings). EVENTPIPE_* variables apply too.
        #[arg(long, env = "EVENTPIPE_CONFIG", requires = "replay")]
        config: Option<PathBuf>,
        /// For --replay: Kafka bootstrap brokers (default: kafka.brokers).
        #[arg(long, requires = "replay")]
        brokers: Option<String>,
    },
    /// Replay a spool no gateway owns any more (a dead host's disk) to Kafka, until it is empty,
    /// publishing the dead host's audit records for what it delivers (`[audit]` of the config).
    Drain(DrainArgs),
    /// Show what a spool holds, without changing it (safe on a live gateway's spool).
    Inspect {
        /// The spool directory (spool.dir).
        #[arg(long)]
        dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct DrainArgs {
    /// The spool directory to drain; refused while a live process holds its lock.
    #[arg(long)]
    dir: PathBuf,
    /// The gateway's TOML configuration: its `[kafka]` section (brokers, librdkafka security
    /// settings), `spool.replay_batch_records` and `[audit]` (topic, window: the drain publishes
    /// the dead host's audit records). EVENTPIPE_* variables apply too.
    #[arg(long, env = "EVENTPIPE_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap brokers (default: kafka.brokers, else 127.0.0.1:9092).
    #[arg(long)]
    brokers: Option<String>,
    /// Give up (exit 1, spool kept) when Kafka acknowledges nothing for this long: 600, 90s,
    /// 10m, 1h; 0 waits for ever.
    #[arg(long, default_value = "10m", value_parser = ops::drain::parse_duration)]
    timeout: Duration,
    /// One progress line on stderr this often.
    #[arg(long, default_value = "5s", value_parser = ops::drain::parse_duration)]
    progress_interval: Duration,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Publish no audit records (as with `audit.enabled = false`).
    #[arg(long)]
    no_audit: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "EVENTPIPE_CONFIG")]
    config: Option<PathBuf>,
    /// Public listener address.
    #[arg(long)]
    listen: Option<String>,
    /// Admin listener address (/metrics, /healthz, /readyz).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Kafka bootstrap brokers, HOST:PORT[,..].
    #[arg(long)]
    brokers: Option<String>,
    /// Schema directory.
    #[arg(long)]
    schemas: Option<PathBuf>,
    /// Topic prefix for accepted events (default "events.").
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Dead-letter topic (default "events.invalid").
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// TLS certificate chain (PEM); enables HTTPS together with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Spool directory (spool.dir; default "spool").
    #[arg(long)]
    spool_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every topic the routing needs (idempotent).
    Create {
        /// The gateway's TOML configuration: its `[kafka]` section (brokers, topic names,
        /// librdkafka security settings) and `schemas`. EVENTPIPE_* variables apply too.
        #[arg(long, env = "EVENTPIPE_CONFIG")]
        config: Option<PathBuf>,
        /// Kafka bootstrap brokers (default: kafka.brokers, else 127.0.0.1:9092).
        #[arg(long)]
        brokers: Option<String>,
        /// Schema directory (default: schemas, else "schemas").
        #[arg(long)]
        schemas: Option<PathBuf>,
        /// Partitions of each topic not named in the config's `[routing.partitions]`.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// Topic prefix (default: kafka.topic_prefix, else "events.").
        #[arg(long)]
        topic_prefix: Option<String>,
        /// Dead-letter topic (default: kafka.dead_letter_topic, else "events.invalid").
        #[arg(long)]
        dead_letter_topic: Option<String>,
    },
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// Compile every schema and validate its examples.
    Check {
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct TailArgs {
    /// The gateway's TOML configuration: its `[kafka]` section (brokers, dead-letter topic,
    /// librdkafka security settings). EVENTPIPE_* variables apply too.
    #[arg(long, env = "EVENTPIPE_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap brokers (default: kafka.brokers, else 127.0.0.1:9092).
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long)]
    topic: String,
    /// Start at the oldest message instead of new ones.
    #[arg(long)]
    from_beginning: bool,
    /// Stop after N messages.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many milliseconds without a message.
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Which topic holds dead letters, decoded as such (default: kafka.dead_letter_topic, else
    /// "events.invalid").
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Only events of this schema: `name` (any major) or `name/major`, matched on the record's
    /// `schema` header without decoding the others (for a topic shared by several schemas).
    #[arg(long)]
    schema: Option<String>,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// The gateway's TOML configuration: its `[kafka]` section (brokers, dead-letter topic,
    /// librdkafka security settings), `audit.topic`, `audit.window_secs`, and `schemas` with
    /// `kafka.topic_prefix` (topics read even when no audit record names them).
    /// EVENTPIPE_* variables apply too.
    #[arg(long, env = "EVENTPIPE_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap brokers (default: kafka.brokers, else 127.0.0.1:9092).
    #[arg(long)]
    brokers: Option<String>,
    /// The topic the gateways publish audit records to (default: audit.topic, else
    /// "events.audit").
    #[arg(long)]
    audit_topic: Option<String>,
    /// Dead-letter topic, decoded as such (default: kafka.dead_letter_topic).
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Judge windows starting at or after this: RFC 3339 or a duration before now (15m, 2h,
    /// 1d). Default: everything (one check), 1h (--watch, where it must be a duration).
    #[arg(long, value_parser = ops::audit::parse_time)]
    since: Option<ops::audit::TimeArg>,
    /// Judge windows starting before this (RFC 3339 or a duration before now).
    #[arg(long, value_parser = ops::audit::parse_time, conflicts_with = "watch")]
    until: Option<ops::audit::TimeArg>,
    /// A window is judged once its end is this far past (late reports, replays).
    #[arg(long, value_parser = ops::audit::parse_duration, default_value = "5m")]
    grace: Duration,
    /// One JSON object per row instead of a table.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Reading a topic to its end offsets must finish within this.
    #[arg(long, value_parser = ops::audit::parse_duration, default_value = "2m")]
    read_timeout: Duration,
    /// Check every --interval and serve the verdicts as Prometheus metrics on --listen.
    #[arg(long, requires = "listen")]
    watch: bool,
    /// For --watch: the metrics listener (/metrics).
    #[arg(long, requires = "watch")]
    listen: Option<std::net::SocketAddr>,
    /// For --watch: time between checks.
    #[arg(long, value_parser = ops::audit::parse_duration, default_value = "1m", requires = "watch")]
    interval: Duration,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVENTPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topics {
            command:
                TopicsCommand::Create {
                    config,
                    brokers,
                    schemas,
                    partitions,
                    replication_factor,
                    topic_prefix,
                    dead_letter_topic,
                },
        } => {
            let config = load_config(
                config.as_deref(),
                [
                    ("kafka.brokers", brokers.map(string)),
                    ("schemas", schemas.map(path)),
                    ("kafka.topic_prefix", topic_prefix.map(string)),
                    ("kafka.dead_letter_topic", dead_letter_topic.map(string)),
                ],
            )?;
            let k = &config.kafka;
            let registry = schema::Registry::load(&config.schemas)?;
            let topics: Vec<(String, i32)> = ops::topics::gateway_topics(&config, &registry)
                .into_iter()
                .map(|t| {
                    let n = config.routing.partitions_of(&t, partitions);
                    (t, n)
                })
                .collect();
            let (created, existing) = runtime()?.block_on(ops::topics::create_sized(
                &k.brokers,
                &k.librdkafka,
                &topics,
                replication_factor,
            ))?;
            for t in &created {
                println!("created {t}");
            }
            for t in &existing {
                println!("exists  {t}");
            }
            Ok(())
        }
        Command::Schemas {
            command: SchemasCommand::Check { dir },
        } => match schema::check(&dir) {
            Ok((schemas, examples)) => {
                println!("ok: {schemas} schemas, {examples} examples valid");
                Ok(())
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("{p}");
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), dir.display())
            }
        },
        Command::Tail(args) => {
            let config = load_config(
                args.config.as_deref(),
                [
                    ("kafka.brokers", args.brokers.map(string)),
                    (
                        "kafka.dead_letter_topic",
                        args.dead_letter_topic.map(string),
                    ),
                ],
            )?;
            let opts = ops::tail::TailOptions {
                brokers: config.kafka.brokers,
                librdkafka: config.kafka.librdkafka,
                topic: args.topic,
                dead_letter_topic: config.kafka.dead_letter_topic,
                from_beginning: args.from_beginning,
                count: args.count,
                idle_timeout: args.idle_timeout_ms.map(Duration::from_millis),
                schema: args.schema,
            };
            ops::tail::run(&opts, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Audit(args) => std::process::exit(i32::from(audit(args))),
        Command::Send(args) => std::process::exit(i32::from(ops::send::main(args))),
        Command::Rollout(args) => {
            runtime()?.block_on(ops::rollout::run(&args, &mut std::io::stderr()))
        }
        Command::Spool {
            command:
                SpoolCommand::Quarantine {
                    dir,
                    json,
                    replay,
                    config,
                    brokers,
                },
        } => {
            if replay {
                let config =
                    load_config(config.as_deref(), [("kafka.brokers", brokers.map(string))])?;
                let (sent, failed) = runtime()?.block_on(ops::quarantine::replay(
                    &dir,
                    &config.kafka.brokers,
                    &config.kafka.librdkafka,
                    &mut std::io::stdout().lock(),
                ))?;
                eprintln!("{sent} sent, {failed} failed");
                if failed > 0 {
                    anyhow::bail!("{failed} quarantined record(s) were not acknowledged");
                }
                return Ok(());
            }
            let n = ops::quarantine::print(&dir, json, &mut std::io::stdout().lock())?;
            if !json {
                eprintln!("{n} quarantined entr{}", if n == 1 { "y" } else { "ies" });
            }
            Ok(())
        }
        Command::Spool {
            command: SpoolCommand::Drain(args),
        } => spool_drain(args),
        Command::Spool {
            command: SpoolCommand::Inspect { dir, json },
        } => ops::inspect::print(&dir, json, &mut std::io::stdout().lock()),
    }
}

/// `eventpipe audit`; returns the exit code (0 complete, 1 incomplete, 2 error).
fn audit(args: AuditArgs) -> u8 {
    let config = match load_config(
        args.config.as_deref(),
        [
            ("kafka.brokers", args.brokers.map(string)),
            (
                "kafka.dead_letter_topic",
                args.dead_letter_topic.map(string),
            ),
            ("audit.topic", args.audit_topic.map(string)),
        ],
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let since = match (args.watch, args.since) {
        (true, Some(ops::audit::TimeArg::At(_))) => {
            eprintln!(
                "error: --watch needs a lookback for --since (a duration like 1h), not a time"
            );
            return 2;
        }
        (true, None) => Some(ops::audit::TimeArg::Ago(Duration::from_secs(3600))),
        (_, since) => since,
    };
    // The config's routing: events of a gateway that publishes no audit records are still read.
    let extra_topics = match schema::Registry::load(&config.schemas) {
        Ok(registry) => ops::topics::routed_topics(&config, &registry),
        Err(e) => {
            tracing::info!(error = %e, "audit: schemas not loaded; reading the topics audit records name");
            Vec::new()
        }
    };
    let opts = ops::audit::AuditOptions {
        extra_topics,
        default_window: Duration::from_secs(config.audit.window_secs),
        brokers: config.kafka.brokers,
        librdkafka: config.kafka.librdkafka,
        audit_topic: config.audit.topic,
        dead_letter_topic: config.kafka.dead_letter_topic,
        since,
        until: args.until,
        grace: args.grace,
        read_timeout: args.read_timeout,
    };
    match (args.watch, args.listen) {
        (true, Some(listen)) => ops::audit::watch::run(opts, listen, args.interval),
        _ => ops::audit::run_once(opts, args.json),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn string(v: String) -> toml::Value {
    toml::Value::String(v)
}

fn path(v: PathBuf) -> toml::Value {
    toml::Value::String(v.to_string_lossy().into_owned())
}

/// The configuration `serve` would use: `file`, then EVENTPIPE_* variables, then the flags given.
fn load_config<const N: usize>(
    file: Option<&Path>,
    flags: [(&'static str, Option<toml::Value>); N],
) -> anyhow::Result<config::Config> {
    let overrides = flags
        .into_iter()
        .filter_map(|(key, value)| value.map(|v| (key, v)))
        .collect();
    Ok(config::load(file, std::env::vars(), overrides)?)
}

fn spool_drain(args: DrainArgs) -> anyhow::Result<()> {
    use eventpipe::sink::{fallback, kafka, Sink};
    let config = load_config(
        args.config.as_deref(),
        [("kafka.brokers", args.brokers.map(string))],
    )?;
    let opts = ops::drain::DrainOptions {
        dir: args.dir,
        replay: server::replay_options(&config),
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
        progress_every: args.progress_interval.max(Duration::from_millis(100)),
    };
    let producer = kafka::producer_config(&config.kafka.brokers, &config.kafka.librdkafka);
    let audited = config.audit.enabled && !args.no_audit;
    // The producer outlives the runtime: on an early exit it is never dropped (below).
    let mut producer_handle = None;
    let summary = runtime()?.block_on(ops::drain::drain(
        &opts,
        |spool| {
            let kafka = Arc::new(
                kafka::KafkaSink::new(&producer, Duration::from_secs(2))
                    .context("creating the Kafka producer")?,
            );
            producer_handle = Some(kafka.clone());
            let audit = audited
                .then(|| ops::drain::DrainAudit::start(&config, spool))
                .transpose()?;
            Ok(ops::drain::Connection {
                target: fallback::replay_target(
                    kafka.clone(),
                    audit.as_ref().and_then(|a| a.replay_audit()),
                ),
                reachable: Box::new(move || kafka.is_ready()),
                audit,
            })
        },
        server::shutdown_signal(),
        &mut std::io::stderr(),
    ))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", summary.text());
    }
    use ops::drain::Outcome;
    match summary.outcome {
        Outcome::Drained | Outcome::Empty => Ok(()),
        // Exit without dropping the producer: its destructor may wait on a broker that is not
        // answering, and the lock is already released.
        Outcome::Interrupted => std::process::exit(130),
        Outcome::TimedOut => std::process::exit(1),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(
        args.config.as_deref(),
        [
            ("listen", args.listen.map(string)),
            ("admin_listen", args.admin_listen.map(string)),
            ("kafka.brokers", args.brokers.map(string)),
            ("schemas", args.schemas.map(path)),
            ("kafka.topic_prefix", args.topic_prefix.map(string)),
            (
                "kafka.dead_letter_topic",
                args.dead_letter_topic.map(string),
            ),
            ("tls.cert", args.tls_cert.map(path)),
            ("tls.key", args.tls_key.map(path)),
            ("spool.dir", args.spool_dir.map(path)),
        ],
    )?;
    let rt = runtime()?;
    rt.block_on(async move {
        let public = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding listen address {}", config.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding admin_listen address {}", config.admin_listen))?;
        server::serve(config, public, admin, server::shutdown_signal()).await
    })
}
