//! The shipped observability cannot drift from the code: every metric the Grafana dashboard
//! (`deploy/grafana/eventpipe.json`) or the alert rules (`deploy/prometheus/alerts.yml`) name is
//! exported by a real gateway process after real traffic; the rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`); every panel is described in
//! `deploy/grafana/README.md`; and `X-Request-Id` reaches the dead-letter topic of a real broker.
//! The audit checker's metrics come from a real `eventpipe audit --watch` over the same traffic.

mod common;
#[path = "observability/promql.rs"]
mod promql;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fault::GatewayProc;
use common::{consume, root, Broker, Topics};
use promql::{base_name, equality_matchers, exported_labels, exported_names, metric_names};
use serde_json::{json, Value};

/// Series Prometheus makes itself, not any exporter.
const PROMETHEUS_SERIES: &[&str] = &["up"];

const INSTALL_PROMTOOL: &str =
    "promtool missing: apt-get install prometheus (Debian), or scripts/setup.sh";

// ---------------------------------------------------------------------------------------------
// What the dashboard and the rules reference.

fn dashboard() -> Value {
    let path = root().join("deploy/grafana/eventpipe.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("eventpipe.json is JSON")
}

/// Every panel (rows included, nested or not).
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (where, expression) for every PromQL query of the dashboard, variables included.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or_default();
                out.push((format!("panel '{title}'"), expr.to_string()));
            }
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let query = v["query"]["query"].as_str().or(v["query"].as_str());
        if v["type"] == "query" {
            let query = query.expect("a query variable has a query");
            // label_values(selector, label): the selector is PromQL, the label is not a metric.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map(|(selector, _)| selector.to_string())
                .unwrap_or_else(|| query.to_string());
            let name = v["name"].as_str().unwrap_or_default();
            out.push((format!("variable '{name}'"), selector));
        }
    }
    out
}

/// alerts.yml as JSON, read with PyYAML (installed with the test requirements).
fn rule_files() -> Vec<(String, Value)> {
    let dir = root().join("deploy/prometheus");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".yml") || name.ends_with(".test.yml") {
            continue;
        }
        let out_json = Command::new("python3")
            .args([
                "-c",
                "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
            ])
            .arg(&path)
            .output()
            .expect("python3");
        assert!(
            out_json.status.success(),
            "reading {name}: {} (pip install -r tests/py/requirements.txt)",
            String::from_utf8_lossy(&out_json.stderr)
        );
        out.push((name, serde_json::from_slice(&out_json.stdout).unwrap()));
    }
    assert!(!out.is_empty(), "no rule files in {}", dir.display());
    out
}

/// (where, expression) for every rule, and the names recording rules define.
fn rule_queries() -> (Vec<(String, String)>, BTreeSet<String>) {
    let (mut queries, mut recorded) = (Vec::new(), BTreeSet::new());
    for (file, rules) in rule_files() {
        for group in rules["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
                if let Some(record) = rule["record"].as_str() {
                    recorded.insert(record.to_string());
                }
                queries.push((
                    format!("{file}: {name}"),
                    rule["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    (queries, recorded)
}

// ---------------------------------------------------------------------------------------------
// The tests.

async fn post(http: &reqwest::Client, url: &str, body: &str, id: &str) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(body.to_string())
        .send()
        .await
        .expect("the gateway answers")
}

/// `eventpipe audit --watch` as a child process, killed on drop.
struct Checker {
    child: Child,
    port: u16,
}

impl Checker {
    fn start(brokers: &str, topics: &Topics, audit_topic: &str) -> Checker {
        let port = common::free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventpipe"));
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("EVENTPIPE_")) {
            cmd.env_remove(key);
        }
        let child = cmd
            .args(["audit", "--watch", "--brokers", brokers])
            .args(["--audit-topic", audit_topic])
            .args(["--dead-letter-topic", &topics.dead_letter])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--since", "1h", "--grace", "1s", "--interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting eventpipe audit --watch");
        Checker { child, port }
    }

    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepted (with `sent_at`), rejected and refused traffic against a real gateway process on a
/// real broker, checked by a real `eventpipe audit --watch`; then every metric the dashboard and
/// the alerts read must be in the gateway's or the checker's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_read_only_metrics_a_real_gateway_exports() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let audit_topic = format!("{}audit", topics.prefix);
    eventpipe::ops::topics::create(&broker.brokers(), std::slice::from_ref(&audit_topic), 1, 1)
        .await
        .expect("creating the audit topic");
    let spool = tempfile::tempdir().unwrap();
    let gw = GatewayProc::new(
        &broker.brokers(),
        &topics,
        spool.path().to_path_buf(),
        &[
            ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "30000"),
            ("EVENTPIPE_AUDIT__TOPIC", &audit_topic),
            ("EVENTPIPE_AUDIT__WINDOW_SECS", "1"),
            ("EVENTPIPE_AUDIT__PUBLISH_DELAY_MS", "300"),
        ],
    );
    let http = reqwest::Client::new();
    let sent_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let bundle = json!({"sent_at": sent_at, "events": [
        {"schema": "click/1", "data": {"element": "button#go", "x": 1}},
        {"schema": "click/1", "data": {"element": 5}},
    ]});
    let resp = post(&http, &gw.url(), &bundle.to_string(), "drift-1").await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let resp = post(&http, &gw.url(), "{not json", "drift-2").await;
    assert_eq!(resp.status(), 400);
    let checker = Checker::start(&broker.brokers(), &topics, &audit_topic);

    let (queries, recorded) = {
        let (mut q, r) = rule_queries();
        q.extend(dashboard_queries());
        (q, r)
    };
    let referenced: BTreeSet<(String, String)> = queries
        .iter()
        .flat_map(|(place, expr)| {
            metric_names(expr)
                .into_iter()
                .map(move |n| (n, place.clone()))
        })
        .collect();
    assert!(
        referenced.len() > 20,
        "parsed too few names: {referenced:?}"
    );

    // Broker statistics arrive on librdkafka's stats interval, and the checker's per-topic
    // series once a window of the traffic is closed and judged: wait for both (generously).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (exported, labels) = loop {
        let text = gw.metrics().await + "\n" + &checker.metrics().await;
        let exported = exported_names(&text);
        let done = [
            "eventpipe_broker_rtt_seconds",
            "eventpipe_audit_missing_events",
        ]
        .iter()
        .all(|n| exported.contains(*n));
        if done || Instant::now() > deadline {
            break (exported, exported_labels(&text));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut missing: Vec<String> = referenced
        .iter()
        .filter(|(name, _)| {
            let base = base_name(name);
            if name.contains(':') {
                return !recorded.contains(name.as_str());
            }
            !exported.contains(name.as_str()) && !PROMETHEUS_SERIES.contains(&base)
        })
        .map(|(name, place)| format!("{name} (in {place})"))
        .collect();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts read metrics nothing exports:\n  {}\n(exported: {exported:?})\n{}",
        missing.join("\n  "),
        gw.log_tail()
    );
    // Label values too: `reason="overloaded"` matches nothing if the code says "overload".
    let mut unmatched: Vec<String> = queries
        .iter()
        .flat_map(|(place, expr)| {
            equality_matchers(expr)
                .into_iter()
                .map(move |m| (m, place.clone()))
        })
        .filter(|((name, _, _), _)| !PROMETHEUS_SERIES.contains(&name.as_str()))
        .filter(|(m, _)| !labels.contains(m))
        .map(|((name, label, value), place)| format!("{name}{{{label}=\"{value}\"}} (in {place})"))
        .collect();
    unmatched.dedup();
    assert!(
        unmatched.is_empty(),
        "the dashboard or the alerts select label values no exported series has:\n  {}",
        unmatched.join("\n  ")
    );
    // The metrics this change added are there from the first request.
    for name in [
        "eventpipe_ready",
        "eventpipe_client_clock_skew_seconds_bucket",
        "eventpipe_event_delivery_latency_seconds_bucket",
    ] {
        assert!(exported.contains(name), "{name} not exported");
    }
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{INSTALL_PROMTOOL} ({e})"))
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let files: Vec<String> = rule_files()
        .into_iter()
        .map(|(name, _)| format!("deploy/prometheus/{name}"))
        .collect();
    let mut args = vec!["check", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = promtool(&args);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = promtool(&["test", "rules", "deploy/prometheus/alerts.test.yml"]);
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert has a test of its own (firing and silent).
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/alerts.test.yml")).unwrap();
    for (place, _) in rule_queries().0 {
        let alert = place.rsplit(": ").next().unwrap();
        if alert.contains(':') {
            continue; // a recording rule
        }
        for case in ["fires", "stays silent when healthy"] {
            assert!(
                tests.contains(&format!("name: {alert} {case}")),
                "no '{alert} {case}' test"
            );
        }
    }
}

#[test]
fn every_dashboard_panel_is_described_and_reads_the_datasource_variable() {
    let readme = std::fs::read_to_string(root().join("deploy/grafana/README.md")).unwrap();
    let d = dashboard();
    assert!(
        d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "no datasource variable"
    );
    let mut undescribed = Vec::new();
    for p in panels(&d).into_iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        if !readme.contains(&format!("\n### {title}\n")) {
            undescribed.push(title.to_string());
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel '{title}' does not use the datasource variable"
        );
    }
    assert!(
        undescribed.is_empty(),
        "panels not described in deploy/grafana/README.md: {undescribed:?}"
    );
}

/// End to end: the id a client sends is echoed and stored in the dead letters of a real broker,
/// for a rejected event and for a refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_id_reaches_the_dead_letter_topic() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let spool = tempfile::tempdir().unwrap();
    let gw = GatewayProc::new(
        &broker.brokers(),
        &topics,
        spool.path().to_path_buf(),
        &[("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "30000")],
    );
    let http = reqwest::Client::new();
    let bundle = json!({"events": [{"schema": "click/1", "data": {"element": 5}}]});
    let resp = post(&http, &gw.url(), &bundle.to_string(), "client-req-1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-req-1");
    let resp = post(&http, &gw.url(), "{not json", "bad id!").await;
    assert_eq!(resp.status(), 400);
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::try_parse(&generated).is_ok(), "{generated}");

    let letters = consume(
        &broker.brokers(),
        &[&topics.dead_letter],
        &topics.dead_letter,
        2,
    );
    let mut by_reason: Vec<(String, String)> = letters
        .iter()
        .map(|l| {
            (
                l["value"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                l["value"]["request_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    by_reason.sort();
    assert_eq!(
        by_reason,
        [
            ("schema_violation".to_string(), "client-req-1".to_string()),
            ("undecodable_body".to_string(), generated),
        ]
    );
}

/// `eventpipe_ready` says what `/readyz` says: 1 on a gateway with a broker, 0 on one that can
/// make nothing durable (spool off, no broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_gauge_follows_readyz() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let (up_dir, down_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let up = GatewayProc::new(
        &broker.brokers(),
        &topics,
        up_dir.path().to_path_buf(),
        &[("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "30000")],
    );
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let down = GatewayProc::new(
        &nowhere,
        &topics,
        down_dir.path().to_path_buf(),
        &[
            ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "30000"),
            ("EVENTPIPE_SPOOL__ENABLED", "false"),
            ("EVENTPIPE_AUDIT__ENABLED", "false"),
        ],
    );
    let gauge = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("eventpipe_ready "))
            .map(str::to_string)
    };
    for (gw, want_ready, want) in [(&up, true, "1"), (&down, false, "0")] {
        // Readiness settles once the producer has (or has not) reached a broker.
        let deadline = Instant::now() + Duration::from_secs(60);
        while gw.ready().await != Some(want_ready) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(gw.ready().await, Some(want_ready), "{}", gw.log_tail());
        assert_eq!(gauge(&gw.metrics().await).as_deref(), Some(want));
    }
}
