//! Config loading: precedence, env parsing, validation messages.

use super::*;

/// `(key, value)` pairs as the environment `load` reads (also used by the submodules' tests).
pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = load(None, vec![], vec![]).unwrap();
    assert_eq!(c.kafka.topic_prefix, "events.");
    assert_eq!(c.kafka.dead_letter_topic, "events.invalid");
    assert_eq!(c.limits.max_body_bytes, 1 << 20);
    assert_eq!(c.limits.max_decompressed_bytes, 8 << 20);
    assert_eq!(c.limits.max_events, 500);
    assert_eq!(c.limits.max_event_bytes, 64 << 10);
    assert_eq!(c.limits.max_depth, 64);
    assert_eq!(c.cors.allowed_origins, vec!["*"]);
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[kafka]\ntopic_prefix = \"file.\"\nbrokers = \"f:1\"\n[limits]\nmax_events = 7\n",
    )
    .unwrap();
    let c = load(
        Some(&file),
        env(&[
            ("EVENTPIPE_KAFKA__BROKERS", "e:2"),
            ("EVENTPIPE_LIMITS__MAX_EVENTS", "9"),
            ("OTHER", "x"),
        ]),
        vec![("kafka.brokers", toml::Value::String("flag:3".into()))],
    )
    .unwrap();
    assert_eq!(c.kafka.topic_prefix, "file.");
    let raw = load(
        None,
        env(&[("EVENTPIPE_KAFKA__LIBRDKAFKA__linger.ms", "10")]),
        vec![],
    )
    .unwrap();
    assert_eq!(
        raw.kafka.librdkafka.get("linger.ms").map(String::as_str),
        Some("10")
    );
    assert_eq!(c.kafka.brokers, "flag:3");
    assert_eq!(c.limits.max_events, 9);
}

#[test]
fn unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[limits]\nmax_eventz = 7\n").unwrap();
    let err = load(Some(&file), vec![], vec![]).unwrap_err().to_string();
    assert!(
        err.contains("limits") && err.contains("max_eventz"),
        "{err}"
    );
    let err = load(None, env(&[("EVENTPIPE_LISTN", "x")]), vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listn"), "{err}");
}

#[test]
fn bad_values_are_named() {
    let err = load(
        None,
        env(&[("EVENTPIPE_LIMITS__MAX_EVENTS", "lots")]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("limits.max_events"), "{err}");
    let err = load(None, env(&[("EVENTPIPE_LISTEN", "nowhere")]), vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("listen"), "{err}");
    let err = load(None, env(&[("EVENTPIPE_LIMITS__MAX_DEPTH", "0")]), vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_depth"), "{err}");
    let err = load(
        None,
        env(&[("EVENTPIPE_TRUSTED_PROXIES", "[\"10.0.0.0/33\"]")]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("trusted_proxies"), "{err}");
    for producers in ["0", "33"] {
        let err = load(
            None,
            env(&[("EVENTPIPE_KAFKA__PRODUCERS", producers)]),
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kafka.producers"), "{producers}: {err}");
    }
    let ok = load(None, env(&[("EVENTPIPE_KAFKA__PRODUCERS", "4")]), vec![]).unwrap();
    assert_eq!(ok.kafka.producers, 4);
}

#[test]
fn client_ip_header_is_configurable_and_checked() {
    use crate::http::client_ip::ClientIpHeader;
    let c = load(None, vec![], vec![]).unwrap();
    assert_eq!(c.client_ip_header, ClientIpHeader::default());
    let c = load(
        None,
        env(&[("EVENTPIPE_CLIENT_IP_HEADER", "CF-Connecting-IP")]),
        vec![],
    )
    .unwrap();
    assert_eq!(
        c.client_ip_header,
        ClientIpHeader::List(axum::http::HeaderName::from_static("cf-connecting-ip"))
    );
    let err = load(
        None,
        env(&[("EVENTPIPE_CLIENT_IP_HEADER", "x forwarded")]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("client_ip_header"), "{err}");
}

#[test]
fn in_flight_limits_default_and_are_validated() {
    let c = load(None, vec![], vec![]).unwrap();
    assert_eq!(c.limits.max_concurrent_requests, 1024);
    assert_eq!(c.limits.max_inflight_bytes, 128 << 20);
    assert_eq!(c.limits.max_connections, 4096);
    assert_eq!(c.limits.http2_max_streams, 100);
    assert_eq!(c.limits.max_header_bytes, 32 << 10);
    // A budget that could never admit one request at the size limits is refused by name.
    let err = load(
        None,
        env(&[("EVENTPIPE_LIMITS__MAX_INFLIGHT_BYTES", "1000000")]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("limits.max_inflight_bytes"), "{err}");
    let err = load(
        None,
        env(&[("EVENTPIPE_LIMITS__MAX_CONNECTIONS", "0")]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("limits.max_connections"), "{err}");
}
