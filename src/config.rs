//! Gateway settings: one typed tree, filled from (lowest to highest precedence) defaults, a TOML
//! file, `EVENTPIPE_*` environment variables and command-line flags.
//!
//! Environment variables name a key path with `__` between levels: `EVENTPIPE_LIMITS__MAX_EVENTS=100`
//! sets `limits.max_events`; `EVENTPIPE_LISTEN=0.0.0.0:8080` sets `listen`. Values are read as TOML
//! scalars or arrays when they parse as such (`100`, `true`, `["a","b"]`), else as strings.
//! Unknown keys and bad values are start-up errors naming the key.
//!
//! One exception: the variables Kubernetes injects for every Service in the namespace
//! (`EVENTPIPE_SERVICE_HOST`, `EVENTPIPE_PORT_8080_TCP_ADDR`, ... for a Service named `eventpipe`,
//! `EVENTPIPE_ADMIN_SERVICE_PORT` for `eventpipe-admin`) are skipped with one warning. Only those
//! exact shapes are skipped, so a misspelt key (`EVENTPIPE_LISTN`) still stops start-up: a typo
//! in `trusted_proxies` or `tls` silently falling back to a default is the worse failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::http::client_ip::ClientIpHeader;

mod audit;
mod auth;
mod librdkafka;
mod routing;
mod segment;
mod service_links;
mod snowplow;
pub use audit::AuditConfig;
pub use auth::{check_rate, AuthConfig, RateLimitConfig};
pub use routing::RoutingConfig;
pub use segment::{CallSchemas, NamingRule, SegmentConfig};
pub use snowplow::{PixelConfig, SnowplowConfig, UnknownContexts};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public listener for `POST /v1/events`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin listener for `/metrics`, `/healthz`, `/readyz`. Never exposed on the public port.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Directory of JSON Schemas: `<dir>/<name>/<major>.json`, and Iglu-layout ones
    /// (`<dir>/<vendor>/<name>/jsonschema/<M-R-A>`, see `schema::iglu`).
    #[serde(default = "default_schemas")]
    pub schemas: PathBuf,
    /// Identity written into every event; defaults to the host name.
    #[serde(default)]
    pub collector_id: Option<String>,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub cors: CorsConfig,
    /// Networks whose forwarding header (`client_ip_header`) is believed, e.g. `["10.0.0.0/8"]`.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// The one header read for the client address when the peer is a trusted proxy:
    /// `x-forwarded-for` (default; walked from the right past trusted proxies), `forwarded`
    /// (RFC 7239 `for=`), or any header a proxy sets, e.g. `x-real-ip`, `cf-connecting-ip`.
    /// Other forwarding headers are ignored: a client can send them through most proxies.
    #[serde(default)]
    pub client_ip_header: ClientIpHeader,
    /// Seconds to keep serving (with `/readyz` false) after SIGTERM before refusing connections,
    /// so the load balancer notices first.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: f64,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Benchmark-only switches; never set these in production.
    #[serde(default)]
    pub bench: BenchConfig,
    /// Write keys; without `auth.keys_file` the gateway is open (local development).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Rate limits per client IP and per write key (off by default).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Audit records: per-window counts published to the audit topic.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Segment's HTTP Tracking API (off by default).
    #[serde(default)]
    pub segment: SegmentConfig,
    /// Snowplow's tracker protocol (off by default).
    #[serde(default)]
    pub snowplow: SnowplowConfig,
    /// The native `GET /v1/pixel.gif` (on by default).
    #[serde(default)]
    pub pixel: PixelConfig,
    /// Which topic each schema goes to (default: one each) and partitions per topic.
    #[serde(default)]
    pub routing: RoutingConfig,
}

/// The local spool (write-ahead log) used when Kafka cannot acknowledge in time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Without the spool, a request Kafka can't acknowledge in time is answered 503.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Directory of segment files; one gateway process per directory (it is locked).
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Appends are refused (503) once segments total this many bytes.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Appends are refused (503) once the oldest spooled record is this old.
    #[serde(default = "default_spool_max_age_secs")]
    pub max_age_secs: u64,
    /// Segment file size at which a new one starts.
    #[serde(default = "default_spool_segment_bytes")]
    pub segment_bytes: u64,
    /// A segment is sealed (handed to the replayer) this long after its first append.
    #[serde(default = "default_spool_seal_after_ms")]
    pub seal_after_ms: u64,
    /// Records per replay batch, at most (one batch in flight at a time; it is handed to the
    /// producer in chunks that shrink while live requests wait longer for Kafka, see
    /// `sink::fallback::pace`).
    #[serde(default = "default_spool_replay_batch")]
    pub replay_batch_records: usize,
}

/// The per-host window of recently acknowledged client event ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Event ids remembered (about 40 bytes each); 0 turns deduplication off.
    #[serde(default = "default_dedup_window")]
    pub window: usize,
}

/// Benchmark-only switches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchConfig {
    /// Cut the pipeline off: `POST /v1/events` reads the body and answers
    /// `{"accepted":0,"rejected":[]}`. Measures the HTTP stack's ceiling.
    #[serde(default)]
    pub http_only: bool,
}

/// Kafka producer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port]`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Accepted events go to `<topic_prefix><schema name>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Rejected input goes here.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// How long a request waits for Kafka's acknowledgements before it is answered 503.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Producer instances (1 to 32) with the topics spread over them by a hash of the topic
    /// name: each has its own broker connections and its own 5 requests in flight. More help
    /// when many topics are busy at once (hundreds of schemas, one topic each); every topic is
    /// still written by one producer, so ordering per key and idempotence hold.
    #[serde(default = "default_producers")]
    pub producers: usize,
    /// Raw librdkafka properties, passed straight through (they override ours). Numbers and
    /// booleans are accepted as written (`linger.ms = 10`) and handed over as text.
    #[serde(default, deserialize_with = "scalars_as_strings")]
    pub librdkafka: BTreeMap<String, String>,
}

/// Request limits. Each is answered with a clear 4xx.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Bytes on the wire (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Bytes after decompression; decompression stops here (413 beyond).
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: usize,
    /// Events per bundle (413 beyond).
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Bytes of one event's JSON; a larger event is rejected alone.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Nesting depth of one event; a deeper event is rejected alone.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Time allowed to receive the request head.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time allowed for a whole request, body and Kafka acknowledgement included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Bytes of a rejected body kept in its dead letter.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: usize,
    /// Bytes of the bundle's `context` (as compact JSON); it is copied into every event, and
    /// counts toward each event's `max_event_bytes`. A larger one: 413 `context_too_large`.
    #[serde(default = "default_max_context_bytes")]
    pub max_context_bytes: usize,
    /// Bytes a request may produce for Kafka per byte of its decompressed body (plus
    /// `output_bytes_per_event` per event). Beyond: 413 `output_too_large`, nothing produced.
    #[serde(default = "default_max_output_ratio")]
    pub max_output_ratio: usize,
    /// Bytes each event of a request may add to its output allowance on top of the ratio (ids,
    /// headers, a dead letter's message, inherited context); the request's enrichment is added
    /// to it.
    #[serde(default = "default_output_bytes_per_event")]
    pub output_bytes_per_event: usize,
    /// Requests being processed at once, Kafka wait included; beyond it 503 + Retry-After.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Bytes held by requests being decoded (wire body, decompressed body, encoded records);
    /// a request that would go past it is answered 503 + Retry-After. Bounds memory.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: usize,
    /// Open client connections; beyond it new connections wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
    /// Bytes of a request head (HTTP/1 line + headers, HTTP/2 header list); 431 beyond.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

/// TLS with rustls (TLS 1.2 and 1.3, HTTP/2 by ALPN).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// How often the two files are checked for a change (a new pair is then used for new
    /// handshakes; connections stay up). 0 turns polling off; SIGHUP always reloads.
    #[serde(default = "default_tls_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

/// Cross-origin settings for browsers posting beacons.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins; `["*"]` (the default) allows any origin, without credentials.
    #[serde(default = "default_origins")]
    pub allowed_origins: Vec<String>,
    /// Preflight cache lifetime in seconds.
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: u64,
}

fn scalars_as_strings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid literal")
}
fn default_admin_listen() -> SocketAddr {
    "127.0.0.1:9100".parse().expect("valid literal")
}
fn default_schemas() -> PathBuf {
    PathBuf::from("schemas")
}
fn default_shutdown_grace_secs() -> f64 {
    5.0
}
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic_prefix() -> String {
    "events.".into()
}
fn default_dead_letter_topic() -> String {
    "events.invalid".into()
}
fn default_producers() -> usize {
    1
}

fn default_ack_timeout_ms() -> u64 {
    5_000
}
fn default_max_body_bytes() -> usize {
    1 << 20
}
fn default_max_decompressed_bytes() -> usize {
    8 << 20
}
fn default_max_events() -> usize {
    500
}
fn default_max_event_bytes() -> usize {
    64 << 10
}
fn default_max_depth() -> usize {
    64
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_dead_letter_max_bytes() -> usize {
    64 << 10
}
fn default_tls_reload_interval_ms() -> u64 {
    5_000
}
fn default_max_context_bytes() -> usize {
    8 << 10
}
fn default_max_output_ratio() -> usize {
    4
}
fn default_output_bytes_per_event() -> usize {
    2048
}
fn default_max_concurrent_requests() -> usize {
    1024
}
fn default_max_inflight_bytes() -> usize {
    128 << 20
}
fn default_max_connections() -> usize {
    4096
}
fn default_http2_max_streams() -> u32 {
    100
}
fn default_max_header_bytes() -> usize {
    32 << 10
}
fn default_true() -> bool {
    true
}
fn default_spool_dir() -> PathBuf {
    PathBuf::from("spool")
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_spool_max_age_secs() -> u64 {
    24 * 3600
}
fn default_spool_segment_bytes() -> u64 {
    16 << 20
}
fn default_spool_seal_after_ms() -> u64 {
    500
}
fn default_spool_replay_batch() -> usize {
    5_000
}
fn default_dedup_window() -> usize {
    100_000
}
fn default_origins() -> Vec<String> {
    vec!["*".into()]
}
fn default_cors_max_age() -> u64 {
    3600
}

impl Default for KafkaConfig {
    fn default() -> Self {
        empty_table()
    }
}
impl Default for Limits {
    fn default() -> Self {
        empty_table()
    }
}
impl Default for CorsConfig {
    fn default() -> Self {
        empty_table()
    }
}
impl Default for SpoolConfig {
    fn default() -> Self {
        empty_table()
    }
}
impl Default for DedupConfig {
    fn default() -> Self {
        empty_table()
    }
}
impl Default for Config {
    fn default() -> Self {
        empty_table()
    }
}

/// Every struct above is all-defaults when deserialized from an empty table.
fn empty_table<T: for<'de> Deserialize<'de>>() -> T {
    toml::Value::Table(toml::Table::new())
        .try_into()
        .expect("every field has a default")
}

impl Limits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// A start-up configuration error; the message names the source and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Builds the configuration: defaults < file < environment < overrides (from flags).
///
/// `overrides` are `(dotted.key, value)` pairs, already typed.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: Vec<(&str, toml::Value)>,
) -> Result<Config, ConfigError> {
    let mut root = toml::Table::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        root = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
    }
    let mut skipped = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("EVENTPIPE_") else {
            continue;
        };
        if rest == "CONFIG" || rest == "LOG" {
            continue; // read by the binary itself
        }
        if service_links::is_service_link(rest) {
            skipped.push(var);
            continue;
        }
        let key: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let value = parse_env_value(&raw);
        set_path(&mut root, &key, value).map_err(|message| ConfigError::Env { var, message })?;
    }
    if !skipped.is_empty() {
        skipped.sort();
        tracing::warn!(
            vars = %skipped.join(","),
            "ignoring Kubernetes service-link environment variables (not config keys); \
             set enableServiceLinks: false on the pod to drop them"
        );
    }
    for (key, value) in overrides {
        let parts: Vec<String> = key.split('.').map(str::to_owned).collect();
        set_path(&mut root, &parts, value).map_err(|message| ConfigError::Invalid {
            key: key.to_owned(),
            message,
        })?;
    }
    let config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
            ConfigError::Invalid {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            }
        })?;
    config.validate()?;
    Ok(config)
}

fn parse_env_value(raw: &str) -> toml::Value {
    // `key = <raw>` parses when raw is a TOML literal (number, bool, array); else it's a string.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(root: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = key.split_last().ok_or("empty key")?;
    let mut table = root;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a table"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        let l = &self.limits;
        if l.max_body_bytes == 0 {
            return invalid("limits.max_body_bytes", "must be positive");
        }
        if l.max_decompressed_bytes < l.max_body_bytes {
            return invalid(
                "limits.max_decompressed_bytes",
                "must be at least limits.max_body_bytes",
            );
        }
        if l.max_concurrent_requests == 0 || l.max_connections == 0 || l.http2_max_streams == 0 {
            let key = if l.max_concurrent_requests == 0 {
                "limits.max_concurrent_requests"
            } else if l.max_connections == 0 {
                "limits.max_connections"
            } else {
                "limits.http2_max_streams"
            };
            return invalid(key, "must be positive");
        }
        // A request at the size limits must fit alone, or it could never be admitted.
        if l.max_inflight_bytes < l.max_body_bytes + 2 * l.max_decompressed_bytes {
            return invalid(
                "limits.max_inflight_bytes",
                "must be at least limits.max_body_bytes + 2 * limits.max_decompressed_bytes",
            );
        }
        if !(8192..=u32::MAX as usize).contains(&l.max_header_bytes) {
            return invalid("limits.max_header_bytes", "must be between 8192 and 2^32-1");
        }
        if l.max_events == 0 {
            return invalid("limits.max_events", "must be positive");
        }
        if l.max_depth == 0 || l.max_depth > 120 {
            return invalid("limits.max_depth", "must be between 1 and 120");
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must name at least one broker");
        }
        if self.kafka.dead_letter_topic.is_empty() {
            return invalid("kafka.dead_letter_topic", "must not be empty");
        }
        if !(1..=crate::sink::kafka::MAX_PRODUCERS).contains(&self.kafka.producers) {
            return invalid("kafka.producers", "must be between 1 and 32");
        }
        if self.kafka.ack_timeout_ms == 0 {
            return invalid("kafka.ack_timeout_ms", "must be positive");
        }
        if self.spool.segment_bytes < 4096 {
            return invalid("spool.segment_bytes", "must be at least 4096");
        }
        if self.spool.replay_batch_records == 0 {
            return invalid("spool.replay_batch_records", "must be positive");
        }
        if !(0.0..=3600.0).contains(&self.shutdown_grace_secs) {
            return invalid("shutdown_grace_secs", "must be between 0 and 3600");
        }
        if l.request_timeout_ms <= self.kafka.ack_timeout_ms {
            return invalid(
                "limits.request_timeout_ms",
                "must be longer than kafka.ack_timeout_ms: a request would time out (408) \
                 before Kafka's acknowledgements could arrive",
            );
        }
        self.validate_auth()?;
        self.validate_audit()?;
        self.validate_segment()?;
        self.validate_routing()?;
        self.validate_snowplow()?;
        self.kafka.validate_librdkafka()?;
        // The size limits (message.max.bytes, context, output ratio) are checked where enforced.
        crate::pipeline::bounds::validate(self)
    }
}

impl Config {
    /// The collector identity written into events.
    pub fn collector_host(&self) -> String {
        self.collector_id
            .clone()
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests;
