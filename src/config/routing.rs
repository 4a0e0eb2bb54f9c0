//! `[routing]`: which topic a schema's events go to, and how many partitions `topics create`
//! gives each topic.
//!
//! Default: every schema name has its own topic, `<kafka.topic_prefix><name>` (the topic-per-schema
//! contract). With `shared_topic` set, the schemas not named in `dedicated` share one topic
//! instead; their records carry the schema in the `schema` header (`name/major`) and in the Thrift
//! `Event` (`schema_name`, `schema_major`), so a consumer filters on the header without decoding.
//!
//! Why it exists: the producer's cost is per partition (librdkafka sends one partition per
//! ProduceRequest), so hundreds of low-volume schemas with a topic each make many small
//! requests; a shared topic keeps the partition count constant whatever the catalogue's size
//! (BENCHMARKS.md, "Many schemas"). Ordering per visitor holds either way: the partition key is
//! the same, and a partition is written by one producer. Records already spooled keep the topic
//! they were routed to when they were accepted.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Topic routing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// A topic (name after `kafka.topic_prefix`) shared by every schema not in `dedicated`.
    /// Unset: every schema has its own topic.
    #[serde(default)]
    pub shared_topic: Option<String>,
    /// Schema names that keep their own topic when `shared_topic` is set (the high-volume ones,
    /// or those whose consumers need a topic of their own). A trailing `*` matches a prefix
    /// (`"checkout_*"`).
    #[serde(default)]
    pub dedicated: Vec<String>,
    /// Partitions `eventpipe topics create` gives a topic, by full topic name (e.g.
    /// `"events.page_view" = 12`, `"events.shared" = 6`); topics not named get `--partitions`.
    /// Size them to each topic's volume: every partition costs the producer and the broker
    /// requests whether or not it is busy.
    #[serde(default)]
    pub partitions: BTreeMap<String, i32>,
}

impl RoutingConfig {
    /// The topic of schema `name` (full name, with `prefix`).
    pub fn topic(&self, prefix: &str, name: &str) -> String {
        match &self.shared_topic {
            Some(shared) if !self.is_dedicated(name) => format!("{prefix}{shared}"),
            _ => format!("{prefix}{name}"),
        }
    }

    /// Whether `name` keeps its own topic when a shared topic is set.
    fn is_dedicated(&self, name: &str) -> bool {
        self.dedicated.iter().any(|d| match d.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => d == name,
        })
    }

    /// The partitions of `topic`: the table's, else `default`.
    pub fn partitions_of(&self, topic: &str, default: i32) -> i32 {
        self.partitions.get(topic).copied().unwrap_or(default)
    }
}

/// Kafka's own limit on topic names: 249 characters of `[a-zA-Z0-9._-]`.
fn valid_topic_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Config {
    pub(super) fn validate_routing(&self) -> Result<(), ConfigError> {
        let r = &self.routing;
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if let Some(shared) = &r.shared_topic {
            if !valid_topic_part(shared) {
                return invalid(
                    "routing.shared_topic",
                    format!("{shared:?} is not a Kafka topic name ([a-zA-Z0-9._-], 1 to 249)"),
                );
            }
        } else if !r.dedicated.is_empty() {
            return invalid(
                "routing.dedicated",
                "only means something with routing.shared_topic set (without it every schema \
                 has its own topic)"
                    .into(),
            );
        }
        if let Some(d) = r
            .dedicated
            .iter()
            .find(|d| d.is_empty() || d.as_str() == "*")
        {
            return invalid(
                "routing.dedicated",
                format!("{d:?} names no schema (use no shared_topic for a topic per schema)"),
            );
        }
        if let Some((topic, n)) = r
            .partitions
            .iter()
            .find(|(_, n)| !(1..=10_000).contains(*n))
        {
            return invalid(
                &format!("routing.partitions.{topic}"),
                format!("{n} partitions: must be between 1 and 10000"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        crate::config::load(Some(&path), Vec::new(), Vec::new())
    }

    #[test]
    fn the_default_is_a_topic_per_schema() {
        let c = routing("").unwrap();
        assert_eq!(c.routing.topic("events.", "page_view"), "events.page_view");
        assert_eq!(c.routing.partitions_of("events.page_view", 3), 3);
    }

    #[test]
    fn a_shared_topic_takes_every_schema_not_dedicated() {
        let c = routing(
            "[routing]\nshared_topic = \"shared\"\ndedicated = [\"page_view\", \"checkout_*\"]\n\
             [routing.partitions]\n\"events.shared\" = 6\n",
        )
        .unwrap();
        let r = &c.routing;
        assert_eq!(r.topic("events.", "page_view"), "events.page_view");
        assert_eq!(r.topic("events.", "checkout_done"), "events.checkout_done");
        assert_eq!(r.topic("events.", "click"), "events.shared");
        assert_eq!(r.topic("events.", "page_view_v2"), "events.shared");
        assert_eq!(r.partitions_of("events.shared", 3), 6);
        assert_eq!(r.partitions_of("events.page_view", 3), 3);
    }

    #[test]
    fn bad_routing_is_named() {
        for (toml, key) in [
            (
                "[routing]\nshared_topic = \"a b\"\n",
                "routing.shared_topic",
            ),
            ("[routing]\nshared_topic = \"\"\n", "routing.shared_topic"),
            (
                "[routing]\ndedicated = [\"page_view\"]\n",
                "routing.dedicated",
            ),
            (
                "[routing]\nshared_topic = \"s\"\ndedicated = [\"*\"]\n",
                "routing.dedicated",
            ),
            (
                "[routing.partitions]\n\"events.click\" = 0\n",
                "routing.partitions.events.click",
            ),
            ("[routing]\nshard_topic = \"s\"\n", "shard_topic"),
        ] {
            let err = routing(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }
}
