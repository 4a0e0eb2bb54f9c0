//! `[auth]` (write keys) and `[rate_limit]` (token buckets) for the public listener.
//!
//! Open mode — no key needed — is the default, for local development: auth is on exactly when
//! `auth.keys_file` is set. The keys themselves live in that file (`crate::http::keys`), not
//! here, so they can change without a restart and never sit in the main config or environment.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Write keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File of write keys (TOML, or JSON when it ends in `.json`). Setting it turns auth on:
    /// every `POST /v1/events` must then carry a key listed there. Re-read when it changes and on
    /// SIGHUP; a file that fails to parse keeps the previous keys.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// How often the keys file is checked for changes, in milliseconds.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

/// Token-bucket rate limits, answered with 429 and `Retry-After`.
///
/// Two limits, each where it is cheap and meaningful: per client IP in *requests* per second,
/// checked before the body is read (it protects the gateway's CPU from one address), and per
/// write key in *events* per second, checked once the bundle is parsed (it protects Kafka and
/// the topic's consumers from one customer, however it batches).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second per client IP (IPv6 clients: per /64). 0 turns the limit off.
    #[serde(default)]
    pub ip_requests_per_sec: f64,
    /// Requests a client IP may send in a burst above its rate. Default: twice the rate, at least 1.
    #[serde(default)]
    pub ip_burst: Option<u32>,
    /// Events per second per write key, for keys that do not set their own `events_per_sec`.
    /// 0 turns the limit off. Needs `auth.keys_file`.
    #[serde(default)]
    pub key_events_per_sec: f64,
    /// Events a key may send in a burst. Default: twice the rate, and at least
    /// `limits.max_events` (a smaller burst could never admit a full bundle).
    #[serde(default)]
    pub key_burst: Option<u32>,
    /// Client IPs whose buckets are kept (about 100 bytes each). Idle buckets are pruned; when
    /// this many are busy at once (an attacker rotating addresses), further addresses share
    /// 1024 hashed buckets instead of growing memory.
    #[serde(default = "default_max_tracked_ips")]
    pub max_tracked_ips: usize,
}

fn default_reload_interval_ms() -> u64 {
    5_000
}
fn default_max_tracked_ips() -> usize {
    100_000
}

impl Default for AuthConfig {
    fn default() -> Self {
        super::empty_table()
    }
}
impl Default for RateLimitConfig {
    fn default() -> Self {
        super::empty_table()
    }
}

/// Highest rate accepted (per second); beyond it a limit is meaningless.
const MAX_RATE: f64 = 1e9;

impl RateLimitConfig {
    /// The per-key burst in force for a key whose rate is `rate`, given `max_events`.
    pub fn key_burst_for(&self, rate: f64, explicit: Option<u32>, max_events: usize) -> u32 {
        explicit.or(self.key_burst).unwrap_or_else(|| {
            let floor = u32::try_from(max_events).unwrap_or(u32::MAX);
            ((rate * 2.0).ceil().min(u32::MAX as f64) as u32).max(floor)
        })
    }

    /// The per-IP burst in force.
    pub fn ip_burst(&self) -> u32 {
        self.ip_burst.unwrap_or_else(|| {
            ((self.ip_requests_per_sec * 2.0).ceil().min(u32::MAX as f64) as u32).max(1)
        })
    }
}

/// Checks a rate (per second): finite, not negative, not absurd.
pub fn check_rate(rate: f64) -> Result<(), String> {
    if rate.is_finite() && (0.0..=MAX_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(format!("must be between 0 and {MAX_RATE} (0 = no limit)"))
    }
}

impl Config {
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if self.auth.reload_interval_ms < 10 {
            return invalid("auth.reload_interval_ms", "must be at least 10".into());
        }
        let r = &self.rate_limit;
        if let Err(m) = check_rate(r.ip_requests_per_sec) {
            return invalid("rate_limit.ip_requests_per_sec", m);
        }
        if let Err(m) = check_rate(r.key_events_per_sec) {
            return invalid("rate_limit.key_events_per_sec", m);
        }
        if r.ip_burst == Some(0) {
            return invalid("rate_limit.ip_burst", "must be positive".into());
        }
        if let Some(burst) = r.key_burst {
            if (burst as usize) < self.limits.max_events {
                return invalid(
                    "rate_limit.key_burst",
                    format!(
                        "must be at least limits.max_events ({}): a smaller burst never admits a full bundle",
                        self.limits.max_events
                    ),
                );
            }
        }
        if r.key_events_per_sec > 0.0 && self.auth.keys_file.is_none() {
            return invalid(
                "rate_limit.key_events_per_sec",
                "needs auth.keys_file (per-key limits need keys)".into(),
            );
        }
        if r.max_tracked_ips == 0 {
            return invalid("rate_limit.max_tracked_ips", "must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::env;

    #[test]
    fn open_mode_and_no_limits_by_default() {
        let c = load(None, vec![], vec![]).unwrap();
        assert!(c.auth.keys_file.is_none());
        assert_eq!(c.auth.reload_interval_ms, 5_000);
        assert_eq!(c.rate_limit.ip_requests_per_sec, 0.0);
        assert_eq!(c.rate_limit.key_events_per_sec, 0.0);
        assert_eq!(c.rate_limit.max_tracked_ips, 100_000);
    }

    #[test]
    fn auth_and_rate_limits_from_env() {
        let c = load(
            None,
            env(&[
                ("EVENTPIPE_AUTH__KEYS_FILE", "/etc/eventpipe/keys.toml"),
                ("EVENTPIPE_RATE_LIMIT__IP_REQUESTS_PER_SEC", "20"),
                ("EVENTPIPE_RATE_LIMIT__KEY_EVENTS_PER_SEC", "1000.5"),
            ]),
            vec![],
        )
        .unwrap();
        assert_eq!(
            c.auth.keys_file.as_deref(),
            Some(std::path::Path::new("/etc/eventpipe/keys.toml"))
        );
        assert_eq!(c.rate_limit.ip_requests_per_sec, 20.0);
        assert_eq!(c.rate_limit.ip_burst(), 40);
        assert_eq!(c.rate_limit.key_events_per_sec, 1000.5);
        // Twice the rate, rounded up; never below a full bundle.
        assert_eq!(c.rate_limit.key_burst_for(1000.5, None, 500), 2001);
        assert_eq!(c.rate_limit.key_burst_for(10.0, None, 500), 500);
        assert_eq!(c.rate_limit.key_burst_for(10.0, Some(700), 500), 700);
    }

    #[test]
    fn bad_auth_and_rate_values_are_named() {
        let cases = [
            (
                "EVENTPIPE_RATE_LIMIT__IP_REQUESTS_PER_SEC",
                "-1",
                "rate_limit.ip_requests_per_sec",
            ),
            (
                "EVENTPIPE_RATE_LIMIT__KEY_EVENTS_PER_SEC",
                "5",
                "rate_limit.key_events_per_sec",
            ),
            (
                "EVENTPIPE_RATE_LIMIT__KEY_BURST",
                "10",
                "rate_limit.key_burst",
            ),
            ("EVENTPIPE_RATE_LIMIT__IP_BURST", "0", "rate_limit.ip_burst"),
            (
                "EVENTPIPE_RATE_LIMIT__MAX_TRACKED_IPS",
                "0",
                "rate_limit.max_tracked_ips",
            ),
            (
                "EVENTPIPE_AUTH__RELOAD_INTERVAL_MS",
                "1",
                "auth.reload_interval_ms",
            ),
            ("EVENTPIPE_AUTH__KEYZ_FILE", "x", "keyz_file"),
        ];
        for (var, value, named) in cases {
            let err = load(None, env(&[(var, value)]), vec![])
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{var}={value}: {err}");
        }
    }
}
