//! Jepsen-style harness pieces: the gateway as a real process (so it can be `kill -9`ed),
//! signals, a load of unique event ids with a record of what was acknowledged, and the
//! completeness check against what an independent consumer finds in Kafka.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{free_port, root, Topics};

/// Sends a signal to a process by pid (SIGKILL, SIGSTOP, SIGCONT, SIGTERM).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// The gateway binary as a child process, restartable on the same ports and spool directory.
pub struct GatewayProc {
    pub port: u16,
    pub admin_port: u16,
    pub spool_dir: PathBuf,
    /// The process's group id, when set before `start` (the fleet harness gives each gateway its
    /// own, so a firewall rule can cut one host's broker traffic: `fleet::BrokerCut`).
    pub gid: Option<u32>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl GatewayProc {
    pub fn new(
        brokers: &str,
        topics: &Topics,
        spool_dir: PathBuf,
        extra: &[(&str, &str)],
    ) -> GatewayProc {
        let mut g = GatewayProc::configure(brokers, topics, spool_dir, extra);
        g.start();
        g
    }

    /// Like `new`, without starting the process (set `gid` first, then `start`).
    pub fn configure(
        brokers: &str,
        topics: &Topics,
        spool_dir: PathBuf,
        extra: &[(&str, &str)],
    ) -> GatewayProc {
        // Two free ports in a row can be the same one (each is released before the next pick).
        let port = free_port();
        let admin_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("EVENTPIPE_LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "EVENTPIPE_ADMIN_LISTEN".into(),
                format!("127.0.0.1:{admin_port}"),
            ),
            ("EVENTPIPE_KAFKA__BROKERS".into(), brokers.into()),
            (
                "EVENTPIPE_KAFKA__TOPIC_PREFIX".into(),
                topics.prefix.clone(),
            ),
            (
                "EVENTPIPE_KAFKA__DEAD_LETTER_TOPIC".into(),
                topics.dead_letter.clone(),
            ),
            ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS".into(), "1000".into()),
            (
                "EVENTPIPE_SCHEMAS".into(),
                root().join("schemas").display().to_string(),
            ),
            (
                "EVENTPIPE_SPOOL__DIR".into(),
                spool_dir.display().to_string(),
            ),
            ("EVENTPIPE_SHUTDOWN_GRACE_SECS".into(), "0.5".into()),
            ("EVENTPIPE_LOG".into(), "info".into()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        // Logs outlive the test's temp dirs, for post-mortems: target/fault-logs/<port>.log
        let logs = root().join("target/fault-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("gateway-{port}.log"));
        GatewayProc {
            port,
            admin_port,
            spool_dir,
            gid: None,
            env,
            child: None,
            log,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventpipe"));
        // The gateway reads every EVENTPIPE_* variable as config: pass only ours.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("EVENTPIPE_")) {
            cmd.env_remove(key);
        }
        if let Some(gid) = self.gid {
            std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        }
        let child = cmd
            .arg("serve")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the gateway binary");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Both listeners: a port picked for another process meanwhile must not be one of ours.
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).is_err()
        {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited at start-up ({status}): {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not listen: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/events", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the graceful drain; the exit must be clean.
    pub fn terminate(&mut self) {
        if let Some(c) = &self.child {
            signal(c.id(), "TERM");
            self.wait_clean_exit();
        }
    }

    /// Whether the process is still running (false once it exited or was never started).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits (up to 60 s) for the process to exit after a signal; the exit must be clean.
    pub fn wait_clean_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "gateway exited {status} after SIGTERM: {}",
                        self.log_tail()
                    );
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "gateway did not exit after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin_port);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub async fn ready(&self) -> Option<bool> {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        reqwest::get(url).await.ok().map(|r| r.status() == 200)
    }

    /// Waits until the spool holds nothing (gauges are refreshed every second).
    pub async fn wait_spool_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let m = self.metrics().await;
            if gauge(&m, "eventpipe_spool_records") == Some(0.0)
                && gauge(&m, "eventpipe_spool_bytes") == Some(0.0)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    /// A gauge's value in `metrics` text (None if absent or unreadable).
    pub async fn gauge(&self, name: &str) -> Option<f64> {
        gauge(&self.metrics().await, name)
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "(full log: {})\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

/// An unlabelled gauge's value in Prometheus text.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What the load saw: every event id sent, and which were acknowledged with a 2xx.
#[derive(Default)]
pub struct Ledger {
    pub sent: Mutex<Vec<String>>,
    pub acked: Mutex<HashSet<String>>,
    pub statuses: Mutex<HashMap<String, u64>>,
    /// Client-visible errors (every answer but a 2xx, and every failed request) by kind:
    /// `connect` (no connection), `conn_error` (connection lost mid-request), `timeout`, or the
    /// status with the gateway's `error` field (`503 overloaded`), or `(no JSON)` for answers
    /// that did not come from a gateway (e.g. a load balancer's own 502/503).
    pub errors: Mutex<HashMap<String, u64>>,
}

impl Ledger {
    fn count(&self, status: String) {
        *self.statuses.lock().unwrap().entry(status).or_default() += 1;
    }

    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// How many events have been acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Client-visible errors so far, by kind, sorted.
    pub fn error_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

/// The kind of a non-2xx answer: its status and the gateway's `error` field, if it has one.
fn error_kind(status: reqwest::StatusCode, body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
    {
        Some(error) => format!("{} {error}", status.as_str()),
        None => format!("{} (no JSON)", status.as_str()),
    }
}

/// Runs `clients` loops posting bundles of `events` unique click events until `stop`.
pub fn spawn_load(
    url: String,
    clients: usize,
    events: usize,
    pause: Duration,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    (0..clients)
        .map(|_| {
            let (http, url, ledger, stop) = (http.clone(), url.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<String> = (0..events).map(|_| uuid::Uuid::new_v4().to_string()).collect();
                    let body = json!({"context": {"session_id": "fault"}, "events": ids.iter().map(|id| json!({
                        "schema": "click/1", "event_id": id, "data": {"element": "button#go", "x": 1}
                    })).collect::<Vec<_>>()});
                    ledger.sent.lock().unwrap().extend(ids.iter().cloned());
                    match http.post(&url).json(&body).send().await {
                        Ok(resp) => {
                            let status = resp.status();
                            ledger.count(status.as_str().to_string());
                            if status.is_success() {
                                ledger.acked.lock().unwrap().extend(ids);
                            } else {
                                let body = resp.text().await.unwrap_or_default();
                                ledger.error(error_kind(status, &body));
                            }
                        }
                        Err(e) => {
                            ledger.count(if e.is_timeout() { "timeout".into() } else { "conn_error".into() });
                            ledger.error(if e.is_timeout() { "timeout" } else if e.is_connect() { "connect" } else { "conn_error" }.into());
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect()
}

/// The completeness audit of one scenario.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Audit {
    pub scenario: String,
    pub faults: u64,
    pub sent: usize,
    pub acked: usize,
    pub acked_but_missing: usize,
    pub duplicates: usize,
    pub unacked_but_present: usize,
    pub statuses: HashMap<String, u64>,
    /// Extra broker restarts the harness made because Tansu's storage task had crashed.
    pub broker_repairs: u64,
    /// Gateway restarts (kill -9, same spool) the harness made because the broker kept crashing
    /// on the gateway's idempotent producer state after repairs (see `storage_crashed`).
    #[serde(skip_serializing_if = "is_zero")]
    pub gateway_restarts: u64,
    /// What the independent consumer said on stderr (errors while reading), cut short.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub consumer_errors: String,
    /// Every id the consumer found.
    #[serde(skip)]
    pub seen_ids: HashSet<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Reads the topic from the beginning with the independent consumer and compares with the ledger.
pub fn audit(scenario: &str, faults: u64, brokers: &str, topic: &str, ledger: &Ledger) -> Audit {
    let acked = ledger.acked.lock().unwrap().clone();
    let sent = ledger.sent.lock().unwrap().len();
    let want_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        want_file.path(),
        acked.iter().cloned().collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    // Reads until every acknowledged id is seen (a message count can be met early by
    // duplicates), then until idle; gives up after the timeout.
    let out = Command::new("python3")
        .arg(root().join("tests/py/consume.py"))
        .args([
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--ids-only",
            "--want-file",
        ])
        .arg(want_file.path())
        .args(["--idle", "3", "--timeout", "400"])
        .output()
        .expect("python3 for the independent consumer");
    assert!(
        out.status.success(),
        "independent consumer failed: {}\n(pip install confluent-kafka thriftpy2)",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen: HashMap<String, u32> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((_, id)) = line.split_once(' ') {
            *seen.entry(id.to_string()).or_default() += 1;
        }
    }
    Audit {
        scenario: scenario.into(),
        faults,
        sent,
        acked: acked.len(),
        acked_but_missing: acked.iter().filter(|id| !seen.contains_key(*id)).count(),
        duplicates: seen.values().map(|n| (*n as usize).saturating_sub(1)).sum(),
        unacked_but_present: seen.keys().filter(|id| !acked.contains(*id)).count(),
        statuses: ledger.statuses.lock().unwrap().clone(),
        broker_repairs: 0,
        gateway_restarts: 0,
        consumer_errors: String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(2000)
            .collect(),
        seen_ids: seen.keys().cloned().collect(),
    }
}

/// Counts injected faults across a scenario.
#[derive(Default)]
pub struct FaultCounter(pub AtomicU64);

impl FaultCounter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What `eventpipe spool quarantine --json` lists for a spool directory, one value per entry.
pub fn quarantine_entries(spool_dir: &std::path::Path) -> Vec<serde_json::Value> {
    let listed = Command::new(env!("CARGO_BIN_EXE_eventpipe"))
        .args(["spool", "quarantine", "--json", "--dir"])
        .arg(spool_dir)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Prints an audit and appends it to `target/fault-audit.jsonl` (scripts/fault-table.py reads
/// it); returns the JSON line for assertion messages.
pub fn report_audit(result: &Audit) -> String {
    use std::io::Write;
    let line = serde_json::to_string(result).unwrap();
    println!("FAULT-AUDIT {line}");
    let report = root().join("target/fault-audit.jsonl");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report)
    {
        let _ = writeln!(f, "{line}");
    }
    line
}
