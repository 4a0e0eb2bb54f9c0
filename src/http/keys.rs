//! Write keys: the keys file, what each key may send, and reloading it without a restart.
//!
//! ```toml
//! [[keys]]
//! key = "wk_3b9f0c2e7d1a4f6b"            # the secret (16-256 visible ASCII characters, no ':')
//! name = "shop-web"                      # label for logs and metrics; never the key itself
//! schemas = ["page_view", "click/1", "web_*"]          # optional; default: every schema
//! origins = ["https://shop.example", "https://*.shop.example"]   # optional; default: any
//! events_per_sec = 200                   # optional; default rate_limit.key_events_per_sec
//! burst = 1000                           # optional; at least limits.max_events
//! ```
//!
//! The same as JSON when the file name ends in `.json`: `{"keys": [{"key": ..., ...}]}`.
//!
//! Keys are looked up by their SHA-256 in a hash map: the lookup's timing depends on the digest
//! of what the client sent, which tells it nothing about any real key. Keys never appear in
//! logs, metrics or error messages — only their `name`.
//!
//! Reloading: [`KeyStore::reload`] reads the file and, if its content changed, parses and swaps
//! it in whole; a file that fails to read or parse keeps the previous keys, is logged once and
//! counted (`eventpipe_auth_reloads_total{result="error"}`). [`spawn_reloader`] calls it every
//! `auth.reload_interval_ms` and on SIGHUP. A key's token bucket survives a reload when the key
//! and its limit are unchanged.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use serde::Deserialize;

use crate::config::{check_rate, RateLimitConfig};
use crate::metrics as m;
use crate::schema::Schema;

/// A keys file larger than this is refused (it is a list of keys, not data).
const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    key: String,
    name: String,
    #[serde(default)]
    schemas: Option<Vec<String>>,
    #[serde(default)]
    origins: Option<Vec<String>>,
    #[serde(default)]
    events_per_sec: Option<f64>,
    #[serde(default)]
    burst: Option<u32>,
}

type Digest = [u8; 32];

fn digest(key: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// One write key as loaded (the secret itself is not kept, only its digest).
pub struct WriteKey {
    /// The label from the keys file: bounded, safe for logs and metric labels.
    pub name: Arc<str>,
    digest: Digest,
    schemas: Option<Vec<SchemaPattern>>,
    origins: Option<Vec<String>>,
    quota: Option<Quota>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl WriteKey {
    /// May this key send events of `schema`?
    pub fn allows_schema(&self, schema: &Schema) -> bool {
        match &self.schemas {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(schema)),
        }
    }

    /// May this key be used from `origin` (the request's `Origin` header)? A request without
    /// one (a server, curl) is not a browser, and anything else could forge the header anyway:
    /// the list keeps a key copied into another site's pages from working there.
    pub fn allows_origin(&self, origin: Option<&str>) -> bool {
        match (&self.origins, origin) {
            (None, _) | (Some(_), None) => true,
            (Some(list), Some(origin)) => {
                let origin = origin.trim_end_matches('/').to_ascii_lowercase();
                list.iter().any(|p| glob(p, &origin, origin_star))
            }
        }
    }

    /// Takes `events` tokens from this key's bucket (an empty bundle costs one). `Err` carries
    /// the wait until the bundle would fit.
    pub fn take_events(&self, events: usize) -> Result<(), Duration> {
        let (Some(limiter), Some(quota)) = (&self.limiter, &self.quota) else {
            return Ok(());
        };
        let n = u32::try_from(events.max(1)).unwrap_or(u32::MAX);
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            // More than the burst: never fits. Start-up and reload keep the burst at least
            // limits.max_events, so only a misconfiguration lands here; say when it refills.
            Err(_) => Err(quota.burst_size_replenished_in()),
        }
    }
}

/// `name`, `name/major`, `name/*`; `*` in the name matches any run of name characters.
struct SchemaPattern {
    name: String,
    major: Option<u32>,
}

impl SchemaPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let (name, major) = match s.split_once('/') {
            None => (s, None),
            Some((name, "*")) => (name, None),
            Some((name, major)) => {
                let m = major
                    .parse::<u32>()
                    .map_err(|_| format!("schema pattern '{s}': major must be a number or *"))?;
                (name, Some(m))
            }
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*');
        if name.is_empty() || !name.chars().all(ok) {
            return Err(format!(
                "schema pattern '{s}': expected name, name/major or a glob like web_*"
            ));
        }
        Ok(SchemaPattern {
            name: name.to_owned(),
            major,
        })
    }

    fn matches(&self, schema: &Schema) -> bool {
        self.major.is_none_or(|m| m == schema.major) && glob(&self.name, &schema.name, |_| true)
    }
}

/// `*` in an origin pattern stands for host characters only, so `https://*.shop.example` never
/// matches a different scheme, port or path.
fn origin_star(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'.'
}

/// Glob match where `*` matches any run (possibly empty) of bytes accepted by `star`.
fn glob(pattern: &str, text: &str, star: fn(u8) -> bool) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut back: Option<(usize, usize)> = None; // (pattern index after '*', text index)
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            back = Some((pi + 1, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((bp, bt)) = back.filter(|&(_, bt)| star(t[bt])) {
            pi = bp;
            ti = bt + 1;
            back = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The keys in force: digest -> key.
#[derive(Default)]
pub struct KeySet {
    by_digest: HashMap<Digest, Arc<WriteKey>>,
}

impl KeySet {
    /// The key a client sent, if it is one of ours.
    pub fn find(&self, presented: &str) -> Option<Arc<WriteKey>> {
        self.by_digest.get(&digest(presented.as_bytes())).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Parses a keys file. `previous` lends its token buckets to keys whose limit is unchanged.
    /// Errors name the entry by index and name, never by key.
    fn parse(
        text: &str,
        json: bool,
        limits: &RateLimitConfig,
        max_events: usize,
        previous: &KeySet,
    ) -> Result<KeySet, String> {
        // Parser messages can quote the offending text (a key, say): keep the message and the
        // line, drop anything quoted.
        let file: KeysFile = if json {
            serde_json::from_str(text).map_err(|e| redact(&e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e: toml::de::Error| {
                let at = e.span().map_or(0, |s| s.start.min(text.len()));
                let line = text.as_bytes()[..at]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                redact(&format!("line {line}: {}", e.message()))
            })?
        };
        let mut set = KeySet::default();
        let mut names = std::collections::HashSet::new();
        for (i, e) in file.keys.into_iter().enumerate() {
            let at = format!("keys[{i}]");
            let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if e.name.is_empty() || e.name.len() > 64 || !e.name.chars().all(name_ok) {
                return Err(format!(
                    "{at}.name: 1-64 characters of A-Z a-z 0-9 _ - . (it is a metric label)"
                ));
            }
            let at = format!("{at} ({})", e.name);
            if !names.insert(e.name.clone()) {
                return Err(format!("{at}: duplicate name"));
            }
            let key_ok = |c: char| c.is_ascii_graphic() && c != ':';
            if !(16..=256).contains(&e.key.len()) || !e.key.chars().all(key_ok) {
                return Err(format!(
                    "{at}.key: must be 16-256 visible ASCII characters without ':'"
                ));
            }
            let schemas = e
                .schemas
                .map(|list| {
                    list.iter()
                        .map(|s| SchemaPattern::parse(s))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .map_err(|m| format!("{at}.schemas: {m}"))?;
            let origins = e
                .origins
                .map(|list| {
                    list.iter()
                        .map(|o| parse_origin(o))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .map_err(|m| format!("{at}.origins: {m}"))?;
            let rate = e.events_per_sec.unwrap_or(limits.key_events_per_sec);
            check_rate(rate).map_err(|m| format!("{at}.events_per_sec: {m}"))?;
            let burst = limits.key_burst_for(rate, e.burst, max_events);
            if (burst as usize) < max_events || burst == 0 {
                return Err(format!(
                    "{at}.burst: must be at least limits.max_events ({max_events})"
                ));
            }
            let quota = quota(rate, burst);
            let d = digest(e.key.as_bytes());
            // Keep the bucket of an unchanged key, so a reload is not a way to reset a limit.
            let limiter = quota.map(|q| {
                previous
                    .by_digest
                    .get(&d)
                    .filter(|old| old.quota == Some(q))
                    .and_then(|old| old.limiter.clone())
                    .unwrap_or_else(|| Arc::new(DefaultDirectRateLimiter::direct(q)))
            });
            let key = WriteKey {
                name: e.name.into(),
                digest: d,
                schemas,
                origins,
                quota,
                limiter,
            };
            if set.by_digest.insert(key.digest, Arc::new(key)).is_some() {
                return Err(format!("{at}.key: the same key is listed twice"));
            }
        }
        Ok(set)
    }
}

/// Replaces every `"..."` in a parser message by `"…"`: values never reach logs.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                out.push_str("\"…");
                quoted = true;
            }
            ('"', true) => {
                out.push('"');
                quoted = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    if quoted {
        out.push('"');
    }
    out
}

/// A token bucket refilling at `rate` per second holding `burst`; `None` for no limit (rate 0).
pub fn quota(rate: f64, burst: u32) -> Option<Quota> {
    if rate <= 0.0 {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?))
}

fn parse_origin(o: &str) -> Result<String, String> {
    let o = o.trim_end_matches('/').to_ascii_lowercase();
    let well_formed = o == "*"
        || o == "null"
        || (o.starts_with("https://") || o.starts_with("http://"))
            && !o
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('/'));
    if well_formed {
        Ok(o)
    } else {
        Err(format!(
            "'{o}': expected scheme://host[:port] (a glob like https://*.example.com), null or *"
        ))
    }
}

/// Outcome of the last reload attempt, to log and count each failure once, not every poll.
#[derive(PartialEq)]
enum Seen {
    Loaded(Digest),
    Failed(String),
}

/// The keys file and the keys in force.
pub struct KeyStore {
    path: PathBuf,
    limits: RateLimitConfig,
    max_events: usize,
    current: RwLock<Arc<KeySet>>,
    seen: Mutex<Option<Seen>>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded { keys: usize },
}

impl KeyStore {
    /// A store with no keys yet (every key is refused until [`KeyStore::reload`]).
    pub fn new(path: &Path, limits: &RateLimitConfig, max_events: usize) -> Self {
        KeyStore {
            path: path.to_owned(),
            limits: limits.clone(),
            max_events,
            current: RwLock::new(Arc::new(KeySet::default())),
            seen: Mutex::new(None),
        }
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the file. On any error the previous keys stay in force; the error names the
    /// file and the entry, never a key.
    pub fn reload(&self) -> Result<Reload, String> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let read = read_bounded(&self.path);
        let outcome = read.and_then(|text| {
            let d = digest(text.as_bytes());
            if *seen == Some(Seen::Loaded(d)) {
                return Ok((d, None));
            }
            let json = self.path.extension().is_some_and(|e| e == "json");
            let set = KeySet::parse(&text, json, &self.limits, self.max_events, &self.keys())?;
            Ok((d, Some(set)))
        });
        match outcome {
            Ok((_, None)) => Ok(Reload::Unchanged),
            Ok((d, Some(set))) => {
                let keys = set.len();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                *seen = Some(Seen::Loaded(d));
                metrics::counter!(m::AUTH_RELOADS, "result" => "ok").increment(1);
                metrics::gauge!(m::AUTH_KEYS).set(keys as f64);
                tracing::info!(file = %self.path.display(), keys, "write keys loaded");
                Ok(Reload::Loaded { keys })
            }
            Err(message) => {
                let message = format!("keys file {}: {message}", self.path.display());
                if *seen != Some(Seen::Failed(message.clone())) {
                    metrics::counter!(m::AUTH_RELOADS, "result" => "error").increment(1);
                    tracing::error!(error = %message, "write keys not reloaded; the previous keys stay in force");
                    *seen = Some(Seen::Failed(message.clone()));
                }
                Err(message)
            }
        }
    }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Re-reads the keys file every `interval` and on SIGHUP, until the store is dropped.
pub fn spawn_reloader(store: &Arc<KeyStore>, interval: Duration) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(store);
    // Registered before returning, so a SIGHUP sent right after start-up is never the default
    // action (terminate).
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler; the keys file is still polled"))
        .ok();
    tokio::spawn(async move {
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = hangup => tracing::info!("SIGHUP: re-reading the write keys"),
            }
            let Some(store) = weak.upgrade() else { return };
            // Errors are logged and counted inside, once per distinct failure.
            let _ = store.reload();
        }
    })
}

#[cfg(test)]
mod tests;
