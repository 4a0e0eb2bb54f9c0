//! The `eventpipe` binary as an operator uses it: topics, tail, schemas check, config errors.

mod common;

use std::process::Command;

use common::{Broker, Gateway, Topics};
use serde_json::{json, Value};

fn eventpipe() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eventpipe"));
    c.current_dir(common::root()).env("EVENTPIPE_LOG", "warn");
    c
}

#[test]
fn schemas_check_passes_on_shipped_schemas_and_names_bad_examples() {
    let out = eventpipe().args(["schemas", "check"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok:"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("thing")).unwrap();
    std::fs::write(
        dir.path().join("thing/1.json"),
        r#"{"type": "object", "required": ["a"], "examples": [{"a": 1}, {"b": 2}]}"#,
    )
    .unwrap();
    let out = eventpipe()
        .args(["schemas", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("thing/1: example 1"), "{err}");
}

#[test]
fn bad_config_fails_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(&file, "[limits]\nmax_events = 10\nmax_bytes = 3\n").unwrap();
    let out = eventpipe()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_bytes"), "{err}");

    let out = eventpipe()
        .args(["serve"])
        .env("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.ack_timeout_ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_is_idempotent_and_tail_prints_decoded_events() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    let create = || {
        eventpipe()
            .args([
                "topics",
                "create",
                "--brokers",
                &broker.brokers(),
                "--partitions",
                "2",
            ])
            .args([
                "--topic-prefix",
                &topics.prefix,
                "--dead-letter-topic",
                &topics.dead_letter,
            ])
            .output()
            .unwrap()
    };
    let first = create();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains(&format!("created {}page_view", topics.prefix)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("created {}", topics.dead_letter)),
        "{stdout}"
    );
    // And the audit topic (`audit.topic`, on by default).
    assert!(stdout.contains("created events.audit"), "{stdout}");
    // The same topics, named by the gateway's config file instead of flags.
    let dir = tempfile::tempdir().unwrap();
    let gw_config = dir.path().join("gw.toml");
    std::fs::write(
        &gw_config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"{}\"\ndead_letter_topic = \"{}\"\n",
            broker.brokers(),
            topics.prefix,
            topics.dead_letter
        ),
    )
    .unwrap();
    let second = eventpipe()
        .args(["topics", "create", "--partitions", "2", "--config"])
        .arg(&gw_config)
        .output()
        .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains(&format!("exists  {}page_view", topics.prefix))
            && !stdout.contains("created"),
        "{stdout}"
    );

    let gw = Gateway::start(common::config(&broker.brokers(), &topics, &[])).await;
    gw.wait_ready().await;
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let resp = reqwest::Client::new()
        .post(gw.url())
        .json(&json!({"context": {"visitor_id": "v"}, "events": [
            {"schema": "purchase/1", "event_id": id, "data": {"order_id": "o-1", "currency": "EUR", "total_minor": 1999,
              "items": [{"sku": "s", "quantity": 1, "price_minor": 1999}]}},
            {"schema": "purchase/1", "data": {"order_id": "o-2"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let tail = |topic: &str| {
        let out = eventpipe()
            .args([
                "tail",
                "--brokers",
                &broker.brokers(),
                "--topic",
                topic,
                "--from-beginning",
            ])
            .args([
                "--count",
                "1",
                "--idle-timeout-ms",
                "20000",
                "--dead-letter-topic",
                &topics.dead_letter,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str::<Value>(line.trim()).unwrap()
    };
    let event = tail(&topics.topic("purchase"));
    assert_eq!(event["event_id"], id);
    assert_eq!(event["schema"], "purchase/1");
    assert_eq!(event["data"]["total_minor"], 1999);
    assert_eq!(event["context"]["visitor_id"], "v");
    let letter = tail(&topics.dead_letter);
    assert_eq!(letter["reason"], "schema_violation");
    // `tail --config` takes brokers and the dead-letter topic's name from the file.
    let out = eventpipe()
        .args(["tail", "--from-beginning", "--count", "1", "--topic"])
        .arg(&topics.dead_letter)
        .args(["--idle-timeout-ms", "20000", "--config"])
        .arg(&gw_config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let letter: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(letter["reason"], "schema_violation");
    assert_eq!(letter["index"], 1);
    gw.stop().await.unwrap();
}

#[test]
fn spool_quarantine_lists_refused_records_and_damaged_bytes() {
    use eventpipe::sink::spool::{encode_body, quarantine, Content, Quarantined};
    use eventpipe::sink::{Record, RecordKind};
    let dir = tempfile::tempdir().unwrap();
    let out = eventpipe()
        .args(["spool", "quarantine", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");

    let record = Record {
        topic: "events.click".into(),
        key: None,
        payload: vec![1, 2, 3],
        headers: vec![("schema", "click/1".into()), ("event_id", "e-1".into())],
        kind: RecordKind::Event { client_id: None },
    };
    let mut body = Vec::new();
    encode_body(&record, 1_700_000_000_000, &mut body);
    let entries = [
        Quarantined {
            quarantined_ms: 1_700_000_001_000,
            source_seq: 4,
            source_offset: 16,
            source_len: body.len() as u64 + 12,
            reason: "kafka_rejected:msg_size_too_large".into(),
            content: Content::Record(body),
        },
        Quarantined {
            quarantined_ms: 1_700_000_002_000,
            source_seq: 4,
            source_offset: 200,
            source_len: 7,
            reason: "corrupt".into(),
            content: Content::Raw(vec![0; 7]),
        },
    ];
    quarantine::append(dir.path(), 4, &entries).unwrap();

    let out = eventpipe()
        .args(["spool", "quarantine", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let want = json!({
        "kind": "record", "segment": 4, "offset": 16, "topic": "events.click",
        "reason": "kafka_rejected:msg_size_too_large", "event_id": "e-1", "schema": "click/1",
        "appended": "2023-11-14T22:13:20Z", "quarantined": "2023-11-14T22:13:21Z",
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&lines[0][k], v, "{k}: {}", lines[0]);
    }
    assert_eq!(
        (&lines[1]["kind"], &lines[1]["reason"], &lines[1]["offset"]),
        (&json!("corrupt"), &json!("corrupt"), &json!(200))
    );

    let out = eventpipe()
        .args(["spool", "quarantine", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("segment=4 offset=16 reason=kafka_rejected:msg_size_too_large topic=events.click event_id=e-1 schema=click/1"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 quarantined entries"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_quarantine_replay_resends_refused_records() {
    use eventpipe::sink::spool::{encode_body, quarantine, Content, Quarantined};
    use eventpipe::sink::{Record, RecordKind};
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let dir = tempfile::tempdir().unwrap();
    let id = "6a1f7c5e-3b8e-4d7a-9d0c-2f4b8e1a9c33";
    let record = Record {
        topic: topics.topic("click").into(),
        key: Some(b"k".to_vec()),
        payload: vec![0],
        headers: vec![("schema", "click/1".into()), ("event_id", id.into())],
        kind: RecordKind::Event { client_id: None },
    };
    let mut body = Vec::new();
    encode_body(&record, 1_700_000_000_000, &mut body);
    let entry = Quarantined {
        quarantined_ms: 1_700_000_001_000,
        source_seq: 1,
        source_offset: 16,
        source_len: body.len() as u64 + 12,
        reason: "kafka_rejected:unknown_topic_or_part".into(),
        content: Content::Record(body),
    };
    quarantine::append(dir.path(), 1, &[entry]).unwrap();
    let out = eventpipe()
        .args([
            "spool",
            "quarantine",
            "--replay",
            "--brokers",
            &broker.brokers(),
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("sent segment=1 offset=16"), "{stdout}");
    let got = tokio::task::block_in_place(|| {
        std::process::Command::new("python3")
            .arg(common::root().join("tests/py/consume.py"))
            .args([
                "--brokers",
                &broker.brokers(),
                "--topic",
                &topics.topic("click"),
            ])
            .args([
                "--ids-only",
                "--want",
                id,
                "--idle",
                "1.5",
                "--timeout",
                "60",
            ])
            .output()
            .unwrap()
    });
    assert!(
        String::from_utf8_lossy(&got.stdout).contains(id),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
}

/// A config whose librdkafka security setting librdkafka refuses: the tools must fail on it,
/// not connect in plaintext as if it were not there.
#[test]
fn tail_and_topics_create_connect_with_the_configs_librdkafka_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n[kafka.librdkafka]\n\"security.protocol\" = \"bogus\"\n\"sasl.mechanism\" = \"PLAIN\"\n\"linger.ms\" = 5\n",
    )
    .unwrap();
    for args in [
        &["tail", "--topic", "t", "--idle-timeout-ms", "100"][..],
        &["topics", "create"][..],
    ] {
        let out = eventpipe()
            .args(args)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("security.protocol") && err.contains("bogus"),
            "{args:?}: {err}"
        );
    }
    // The same through the environment, as in the gateway's pod.
    let out = eventpipe()
        .args(["tail", "--topic", "t", "--idle-timeout-ms", "100"])
        .env("EVENTPIPE_KAFKA__LIBRDKAFKA__security.protocol", "bogus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("security.protocol"));
}

#[test]
fn spool_dir_flag_sets_the_spool_directory() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be: opening the spool fails, naming the path we gave.
    let not_a_dir = dir.path().join("taken");
    std::fs::write(&not_a_dir, "x").unwrap();
    let out = eventpipe()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--brokers",
            "127.0.0.1:1",
            "--spool-dir",
        ])
        .arg(&not_a_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spool.dir") && err.contains(&not_a_dir.display().to_string()),
        "{err}"
    );
}

/// Which certificate a new TLS connection to `port` is given.
async fn certificate_served(port: u16, roots: &[&str]) -> Option<Vec<u8>> {
    let mut b = reqwest::Client::builder()
        .tls_info(true)
        .resolve("localhost", ([127, 0, 0, 1], port).into());
    for pem in roots {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    let resp = b
        .build()
        .unwrap()
        .get(format!("https://localhost:{port}/"))
        .send()
        .await
        .ok()?;
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>()?;
    info.peer_certificate().map(<[u8]>::to_vec)
}

/// The server process, killed on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pair = || rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (a, b) = (pair(), pair());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, a.cert.pem()).unwrap();
    std::fs::write(&key, a.key_pair.serialize_pem()).unwrap();
    let roots = [a.cert.pem(), b.cert.pem()];
    let roots: Vec<&str> = roots.iter().map(String::as_str).collect();
    let port = common::free_port();
    let server = eventpipe()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", "127.0.0.1:0", "--brokers", "127.0.0.1:1"])
        .arg("--spool-dir")
        .arg(dir.path().join("spool"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        // Polling off: only the signal can reload.
        .env("EVENTPIPE_TLS__RELOAD_INTERVAL_MS", "0")
        // What Kubernetes injects for a Service named `eventpipe` must not stop start-up.
        .env("EVENTPIPE_SERVICE_HOST", "10.96.0.12")
        .env("EVENTPIPE_PORT_8080_TCP_ADDR", "10.96.0.12")
        .spawn()
        .unwrap();
    let mut server = Running(server);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let first = loop {
        if let Some(der) = certificate_served(port, &roots).await {
            break der;
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("serve exited: {status}");
        }
        assert!(std::time::Instant::now() < deadline, "serve never answered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(first, a.cert.der().to_vec());

    std::fs::write(&cert, b.cert.pem()).unwrap();
    std::fs::write(&key, b.key_pair.serialize_pem()).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let served = certificate_served(port, &roots).await;
        if served.as_deref() == Some(&b.cert.der()[..]) {
            break;
        }
        assert!(server.0.try_wait().unwrap().is_none(), "SIGHUP ended serve");
        assert!(
            std::time::Instant::now() < deadline,
            "still the old certificate after SIGHUP"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
