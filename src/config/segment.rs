//! `[segment]`: Segment's HTTP Tracking API on the public listener (`crate::protocol::segment`).
//!
//! Off by default: it adds routes (`/v1/batch`, `/v1/track`, ...) and needs the `segment_*`
//! schemas (shipped under `schemas/`) in the schema directory. Which schemas the mapping names is
//! checked against the registry at start-up (`protocol::segment::Segment::new`), since the
//! registry is not loaded when the config is.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Segment's HTTP Tracking API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    /// Serve `POST /v1/batch`, `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`,
    /// `/v1/group`, `/v1/alias` and their short forms `/v1/b|t|i|p|s|g|a`.
    #[serde(default)]
    pub enabled: bool,
    /// `track` event name -> schema (`name/major`), e.g. `"Order Completed" = "purchase/1"`.
    /// Checked first; every schema named here must exist.
    #[serde(default)]
    pub events: BTreeMap<String, String>,
    /// For a `track` event not in `events`: `snake_case` tries the event name in snake case with
    /// `naming_major` ("Order Completed" -> `order_completed/1`) when such a schema exists;
    /// `none` goes straight to the generic `schemas.track`.
    #[serde(default)]
    pub naming: NamingRule,
    /// The major the naming rule appends.
    #[serde(default = "default_naming_major")]
    pub naming_major: u32,
    /// The shipped schema of each call type (for `track`: the fallback when neither the table nor
    /// the naming rule found one).
    #[serde(default)]
    pub schemas: CallSchemas,
    /// One message's JSON at most (Segment's documented 32 KB); a larger one is dead-lettered
    /// alone, the rest of its batch goes on.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// A request's (decompressed) body at most (Segment's documented 500 KB); beyond: 400.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// A `messageId` at most, in bytes; a longer one is dead-lettered (`invalid_envelope`).
    #[serde(default = "default_max_message_id_bytes")]
    pub max_message_id_bytes: usize,
    /// With auth on: bodies read at once to find their `writeKey` (requests whose head carries
    /// no key, as analytics.js sends them). A budget of their own, so slow keyless bodies cannot
    /// hold the slots and bytes keyed requests need; beyond it such a request gets 429.
    #[serde(default = "default_max_keyless_reads")]
    pub max_keyless_reads: usize,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            enabled: false,
            events: BTreeMap::new(),
            naming: NamingRule::default(),
            naming_major: default_naming_major(),
            schemas: CallSchemas::default(),
            max_message_bytes: default_max_message_bytes(),
            max_batch_bytes: default_max_batch_bytes(),
            max_message_id_bytes: default_max_message_id_bytes(),
            max_keyless_reads: default_max_keyless_reads(),
        }
    }
}

/// How a `track` event's name becomes a schema name when the table has no entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamingRule {
    /// "Order Completed", "orderCompleted", "order-completed" -> `order_completed`.
    #[default]
    SnakeCase,
    /// No rule: unmapped events use `schemas.track`.
    None,
}

/// The schema (`name/major`) of each Segment call type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSchemas {
    /// `track` events neither `events` nor the naming rule mapped.
    #[serde(default = "default_track")]
    pub track: String,
    #[serde(default = "default_identify")]
    pub identify: String,
    #[serde(default = "default_page")]
    pub page: String,
    #[serde(default = "default_screen")]
    pub screen: String,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default = "default_alias")]
    pub alias: String,
}

impl Default for CallSchemas {
    fn default() -> Self {
        CallSchemas {
            track: default_track(),
            identify: default_identify(),
            page: default_page(),
            screen: default_screen(),
            group: default_group(),
            alias: default_alias(),
        }
    }
}

fn default_naming_major() -> u32 {
    1
}
fn default_max_message_bytes() -> usize {
    32 << 10
}
fn default_max_batch_bytes() -> usize {
    500 << 10
}
fn default_max_message_id_bytes() -> usize {
    100
}
fn default_max_keyless_reads() -> usize {
    8
}
fn default_track() -> String {
    "segment_track/1".into()
}
fn default_identify() -> String {
    "segment_identify/1".into()
}
fn default_page() -> String {
    "segment_page/1".into()
}
fn default_screen() -> String {
    "segment_screen/1".into()
}
fn default_group() -> String {
    "segment_group/1".into()
}
fn default_alias() -> String {
    "segment_alias/1".into()
}

impl Config {
    /// What can be checked without the schema registry.
    pub(super) fn validate_segment(&self) -> Result<(), ConfigError> {
        let s = &self.segment;
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if s.max_message_bytes == 0 {
            return invalid("segment.max_message_bytes", "must be positive".into());
        }
        if s.max_batch_bytes < s.max_message_bytes {
            return invalid(
                "segment.max_batch_bytes",
                "must be at least segment.max_message_bytes".into(),
            );
        }
        // Only when on: a gateway with small limits and Segment off must still start.
        if s.enabled && s.max_batch_bytes > self.limits.max_decompressed_bytes {
            return invalid(
                "segment.max_batch_bytes",
                "must be at most limits.max_decompressed_bytes".into(),
            );
        }
        if !(1..=1024).contains(&s.max_message_id_bytes) {
            return invalid(
                "segment.max_message_id_bytes",
                "must be between 1 and 1024".into(),
            );
        }
        if s.max_keyless_reads == 0 {
            return invalid("segment.max_keyless_reads", "must be positive".into());
        }
        if s.naming_major == 0 {
            return invalid("segment.naming_major", "must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::*;

    #[test]
    fn defaults_follow_segments_documented_limits() {
        let c = load(None, vec![], vec![]).unwrap();
        assert!(!c.segment.enabled);
        assert_eq!(c.segment.max_message_bytes, 32 * 1024);
        assert_eq!(c.segment.max_batch_bytes, 500 * 1024);
        assert_eq!(c.segment.max_message_id_bytes, 100);
        assert_eq!(c.segment.max_keyless_reads, 8);
        let err = load(
            None,
            env(&[("EVENTPIPE_SEGMENT__MAX_KEYLESS_READS", "0")]),
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("segment.max_keyless_reads"), "{err}");
        assert_eq!(c.segment.naming, NamingRule::SnakeCase);
        assert_eq!(c.segment.schemas.track, "segment_track/1");
    }

    #[test]
    fn the_table_and_rule_load_from_toml_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[segment]\nenabled = true\nnaming = \"none\"\n\
             [segment.events]\n\"Order Completed\" = \"purchase/1\"\n",
        )
        .unwrap();
        let c = load(Some(&file), vec![], vec![]).unwrap();
        assert!(c.segment.enabled);
        assert_eq!(c.segment.naming, NamingRule::None);
        assert_eq!(c.segment.events["Order Completed"], "purchase/1");

        std::fs::write(&file, "[segment]\nenabeld = true\n").unwrap();
        let err = load(Some(&file), vec![], vec![]).unwrap_err().to_string();
        assert!(err.contains("enabeld"), "{err}");
        let err = load(
            None,
            env(&[("EVENTPIPE_SEGMENT__MAX_BATCH_BYTES", "1000")]),
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("segment.max_batch_bytes"), "{err}");
        // Beyond the gateway's own limit: refused when Segment is on, ignored when off.
        let small = [
            ("EVENTPIPE_LIMITS__MAX_BODY_BYTES", "1000"),
            ("EVENTPIPE_LIMITS__MAX_DECOMPRESSED_BYTES", "5000"),
        ];
        assert!(load(None, env(&small), vec![]).is_ok());
        let mut on = small.to_vec();
        on.push(("EVENTPIPE_SEGMENT__ENABLED", "true"));
        let err = load(None, env(&on), vec![]).unwrap_err().to_string();
        assert!(err.contains("segment.max_batch_bytes"), "{err}");
    }
}
