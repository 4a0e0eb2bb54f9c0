//! `[audit]`: per-window counts of what this gateway had Kafka acknowledge, published to the
//! audit topic for `eventpipe audit` (see `crate::audit`).

use serde::Deserialize;

use super::{Config, ConfigError};

/// Audit records (one per window, topic and boot) published to the audit topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Count and publish audit records. Off: nothing is counted or published.
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    /// The topic audit records are produced to (`topics create` creates it).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Window length in seconds; windows are by receive time, aligned to multiples of it.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// How long after a window ends its records are first published, in milliseconds, so
    /// requests still waiting for Kafka are in it. Default: `kafka.ack_timeout_ms` + 1000.
    /// Counts that change later (a slow request, spooled events delivered) are published again.
    #[serde(default)]
    pub publish_delay_ms: Option<u64>,
    /// First wait after a failed publish, in milliseconds; doubles up to 30 s.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// (window, topic) cells kept in memory at most. Beyond, the oldest fully published cells
    /// with nothing pending are dropped; if none can be, the count is lost to the audit and
    /// counted in `eventpipe_audit_overflow_total`.
    #[serde(default = "default_max_cells")]
    pub max_cells: usize,
    /// Seconds a fully published cell with nothing pending is kept after its last change (a
    /// replay reaching it later adds to its published counts instead of starting from zero).
    #[serde(default = "default_keep_secs")]
    pub keep_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            topic: default_topic(),
            window_secs: default_window_secs(),
            publish_delay_ms: None,
            retry_backoff_ms: default_retry_backoff_ms(),
            max_cells: default_max_cells(),
            keep_secs: default_keep_secs(),
        }
    }
}

fn default_topic() -> String {
    "events.audit".into()
}
fn default_window_secs() -> u64 {
    60
}
fn default_retry_backoff_ms() -> u64 {
    500
}
fn default_max_cells() -> usize {
    20_000
}
fn default_keep_secs() -> u64 {
    3_600
}

impl Config {
    /// How long after a window's end its records are first published.
    pub fn audit_publish_delay_ms(&self) -> u64 {
        self.audit
            .publish_delay_ms
            .unwrap_or(self.kafka.ack_timeout_ms + 1_000)
    }

    pub(super) fn validate_audit(&self) -> Result<(), ConfigError> {
        let a = &self.audit;
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if a.topic.trim().is_empty() {
            return invalid("audit.topic", "must not be empty");
        }
        if a.enabled && (a.topic == self.kafka.dead_letter_topic) {
            return invalid("audit.topic", "must differ from kafka.dead_letter_topic");
        }
        if !(1..=86_400).contains(&a.window_secs) {
            return invalid("audit.window_secs", "must be between 1 and 86400");
        }
        if a.retry_backoff_ms == 0 {
            return invalid("audit.retry_backoff_ms", "must be positive");
        }
        if a.max_cells == 0 {
            return invalid("audit.max_cells", "must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{load, tests::env};

    #[test]
    fn audit_defaults_and_checks() {
        let c = load(None, vec![], vec![]).unwrap();
        assert!(c.audit.enabled);
        assert_eq!(c.audit.topic, "events.audit");
        assert_eq!(c.audit.window_secs, 60);
        assert_eq!(c.audit_publish_delay_ms(), c.kafka.ack_timeout_ms + 1_000);
        let err = load(None, env(&[("EVENTPIPE_AUDIT__WINDOW_SECS", "0")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("audit.window_secs"), "{err}");
        let err = load(None, env(&[("EVENTPIPE_AUDIT__TOPC", "x")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TOPC") || err.contains("topc"), "{err}");
    }
}
