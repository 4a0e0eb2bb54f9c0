//! The librdkafka settings every client of the cluster shares. The producer, the readiness probe,
//! `eventpipe tail` and `eventpipe topics create` all connect with the same `kafka.librdkafka`
//! security and network settings, so a SASL/SSL cluster never looks down to one of them only.
//!
//! Producer-only properties (C/P = "P" in librdkafka's CONFIGURATION.md) are left out of the
//! shared part: a consumer or admin client warns about each one it is given.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

/// librdkafka properties only a producer reads (librdkafka 2.12 CONFIGURATION.md), plus
/// `statistics.interval.ms`, which is the producer's metrics callback: other clients have none.
const NOT_SHARED: &[&str] = &[
    // Global properties.
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "dr_cb",
    "dr_msg_cb",
    "sticky.partitioning.linger.ms",
    // Topic properties (set globally, they apply to the default topic config).
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queuing.strategy",
    "produce.offset.report",
    "partitioner",
    "partitioner_cb",
    "msg_order_cmp",
    "compression.level",
    // Ours, for the producer's statistics callback.
    "statistics.interval.ms",
];

/// True for a property that only the producer may be given.
pub fn is_producer_only(key: &str) -> bool {
    NOT_SHARED.contains(&key)
}

/// The settings every client shares: `brokers`, `client.id = eventpipe`, then every raw
/// librdkafka override that is not producer-only (`security.protocol`, `sasl.*`, `ssl.*`,
/// `client.id`, socket and DNS settings...). Callers add their own role's settings on top.
pub fn client_config(brokers: &str, librdkafka: &BTreeMap<String, String>) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("client.id", "eventpipe");
    for (k, v) in librdkafka {
        if !is_producer_only(k) {
            cfg.set(k, v);
        }
    }
    cfg
}

/// The shared part of a producer's settings (what the readiness probe connects with).
pub fn shared_part(producer: &ClientConfig) -> ClientConfig {
    let all: BTreeMap<String, String> = producer
        .config_map()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    client_config(producer.get("bootstrap.servers").unwrap_or_default(), &all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::kafka::producer_config;

    fn secured() -> BTreeMap<String, String> {
        [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.username", "gw"),
            ("sasl.password", "secret"),
            ("client.id", "gw-7"),
            ("acks", "all"),
            ("linger.ms", "20"),
            ("message.timeout.ms", "60000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn assert_shared(cfg: &ClientConfig, brokers: &str) {
        assert_eq!(cfg.get("bootstrap.servers"), Some(brokers));
        assert_eq!(cfg.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(cfg.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(cfg.get("sasl.username"), Some("gw"));
        assert_eq!(cfg.get("sasl.password"), Some("secret"));
        assert_eq!(cfg.get("client.id"), Some("gw-7"));
        for key in [
            "acks",
            "linger.ms",
            "message.timeout.ms",
            "enable.idempotence",
            "compression.type",
            "statistics.interval.ms",
        ] {
            assert_eq!(cfg.get(key), None, "{key} given to a non-producer client");
        }
    }

    #[test]
    fn probe_and_tools_carry_the_security_settings_but_no_producer_keys() {
        // `eventpipe tail` / `topics create`: from the config's brokers and overrides.
        assert_shared(&client_config("k:9092", &secured()), "k:9092");
        // The readiness probe: from the producer's settings.
        let producer = producer_config("k:9093", &secured());
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_shared(&shared_part(&producer), "k:9093");
    }

    #[test]
    fn the_shared_settings_are_accepted_by_a_consumer_and_an_admin_client() {
        use rdkafka::admin::AdminClient;
        use rdkafka::client::DefaultClientContext;
        use rdkafka::consumer::BaseConsumer;
        let cfg = shared_part(&producer_config("127.0.0.1:1", &secured()));
        let _: BaseConsumer = cfg.create().expect("consumer");
        let _: AdminClient<DefaultClientContext> = cfg.create().expect("admin client");
        // And a setting librdkafka refuses is not dropped on the way.
        let mut bad = secured();
        bad.insert("security.protocol".into(), "bogus".into());
        let err = client_config("127.0.0.1:1", &bad)
            .create::<BaseConsumer>()
            .err()
            .expect("bogus security.protocol refused");
        assert!(err.to_string().contains("security.protocol"), "{err}");
    }
}
