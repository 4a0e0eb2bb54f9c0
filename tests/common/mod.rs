//! End-to-end harness: a real Tansu broker process, the gateway on port 0 in-process, and an
//! independent Python consumer. Each test gets fresh topics (a unique prefix).
#![allow(dead_code)]

pub mod fault;
pub mod fleet;
pub mod proxy;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eventpipe::config::{self, Config};
use serde_json::Value;

pub const INSTALL_TANSU: &str =
    "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql (or run .ci/run)";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Locates the tansu binary: $TANSU_BIN, then PATH, then ~/.cargo/bin. Missing is a failure
/// that says how to install it, never a skip.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("the Tansu broker is not installed; install it with: {INSTALL_TANSU}")
        })
}

/// The `eventpipe` binary, run from the repository root with only the EVENTPIPE_* variables a
/// test gives it (none inherited from the environment), logging warnings.
pub fn eventpipe_cli() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_eventpipe"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("EVENTPIPE_")) {
        c.env_remove(key);
    }
    c.current_dir(root())
        .env("EVENTPIPE_LOG", "warn")
        .env_remove("RUST_BACKTRACE");
    c
}

/// Copies a directory tree (e.g. the shipped schemas, to add one to a test's copy).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Tansu broker process, killed on drop.
pub struct Broker {
    pub port: u16,
    /// The address clients are told to use (a proxy's, when there is one).
    pub advertised_port: u16,
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    engine: String,
    /// Log length when the current process started.
    log_start: u64,
}

impl Broker {
    /// Memory engine: fast, not durable.
    pub fn memory() -> Broker {
        Broker::start_with(
            tempfile::tempdir().unwrap(),
            free_port(),
            "memory://tansu/".into(),
        )
    }

    /// SQLite engine in a temp directory: durable across kill -9.
    pub fn sqlite() -> Broker {
        Broker::start_with(
            tempfile::tempdir().unwrap(),
            free_port(),
            "sqlite://tansu.db".into(),
        )
    }

    /// SQLite engine advertising `advertised_port` (where a proxy forwards to it).
    pub fn sqlite_behind(advertised_port: u16) -> Broker {
        let mut b = Broker {
            port: free_port(),
            advertised_port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            engine: "sqlite://tansu.db".into(),
            log_start: 0,
        };
        b.start();
        b
    }

    /// A SQLite broker reached only through a [`proxy::Proxy`] (started here): cutting the proxy
    /// is a network outage while the broker's process and data stay.
    pub async fn sqlite_through_proxy() -> (Broker, proxy::Proxy) {
        let proxy_port = free_port();
        let broker = Broker::sqlite_behind(proxy_port);
        let proxy = proxy::Proxy::start(
            format!("127.0.0.1:{proxy_port}").parse().unwrap(),
            format!("127.0.0.1:{}", broker.port).parse().unwrap(),
        )
        .await;
        (broker, proxy)
    }

    fn start_with(dir: tempfile::TempDir, port: u16, engine: String) -> Broker {
        let mut b = Broker {
            port,
            advertised_port: port,
            child: None,
            dir,
            engine,
            log_start: 0,
        };
        b.start();
        b
    }

    /// Starts the broker and waits until it listens. A restart right after `kill -9` can find
    /// the port still held (Tansu binds without SO_REUSEADDR and then idles with no listener),
    /// so a start that logs AddrInUse is retried.
    pub fn start(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log_start = std::fs::metadata(self.log_path())
                .map(|m| m.len())
                .unwrap_or(0);
            self.spawn();
            loop {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!("tansu exited at start ({status}): {}", self.log());
                }
                let log = self.log();
                if log
                    .get(log_start as usize..)
                    .is_some_and(|l| l.contains("AddrInUse"))
                {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(500));
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "tansu did not listen on {} within 60s: {}",
                    self.port,
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", &self.engine])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting tansu: {e}; install it with: {INSTALL_TANSU}"));
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// The address clients use (the proxy's, when there is one).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// `kill -9`: the broker dies mid-whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Tansu 0.6.0's SQLite engine can panic in its storage task after a `kill -9` restart when
    /// an idempotent producer resumes ("more or less than one row"); from then on it fails every
    /// request. That is a broker bug, not a gateway one: the harness restarts such a broker, and
    /// when the restarted broker crashes again on the same producer's next request (a crash loop
    /// seen once in the long form), it also restarts the gateway, whose new producer id the
    /// broker accepts; the spool carries the gateway's acknowledged events across the restart.
    pub fn storage_crashed(&self) -> bool {
        let log = self.log();
        log.get(self.log_start as usize..)
            .is_some_and(|l| l.contains("panicked"))
    }

    /// Broker logs outlive the test's temp dirs: target/fault-logs/tansu-<port>.log
    pub fn log_path(&self) -> PathBuf {
        let dir = root().join("target/fault-logs");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("tansu-{}.log", self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Unique topic names for one test.
pub struct Topics {
    pub prefix: String,
    pub dead_letter: String,
}

impl Topics {
    pub fn unique() -> Topics {
        let prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
        Topics {
            dead_letter: format!("{prefix}invalid"),
            prefix,
        }
    }

    pub fn topic(&self, schema_name: &str) -> String {
        format!("{}{schema_name}", self.prefix)
    }

    /// Creates every topic the shipped schemas need.
    pub async fn create(&self, brokers: &str) {
        let registry = eventpipe::schema::Registry::load(&root().join("schemas")).unwrap();
        let mut names =
            eventpipe::ops::topics::needed_topics(&registry, &self.prefix, &self.dead_letter);
        // The audit topic (`audit.topic`'s default): gateways publish their books there.
        names.push("events.audit".into());
        eventpipe::ops::topics::create(brokers, &names, 2, 1)
            .await
            .expect("creating topics");
    }
}

impl Topics {
    /// Creates every topic the schemas under `schemas` need (e.g. a test's copy with Iglu
    /// schemas added), the dead-letter topic and the audit topic.
    pub async fn create_for(&self, brokers: &str, schemas: &Path) {
        let registry = eventpipe::schema::Registry::load(schemas).unwrap();
        let mut names =
            eventpipe::ops::topics::needed_topics(&registry, &self.prefix, &self.dead_letter);
        names.push("events.audit".into());
        eventpipe::ops::topics::create(brokers, &names, 2, 1)
            .await
            .expect("creating topics");
    }
}

/// An in-process gateway on port 0; shut down (gracefully) on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Config for a test gateway: the shipped schemas, the given broker and topics, no grace period.
pub fn config(brokers: &str, topics: &Topics, extra: &[(&str, &str)]) -> Config {
    let mut env = vec![
        ("EVENTPIPE_KAFKA__BROKERS".to_string(), brokers.to_string()),
        (
            "EVENTPIPE_KAFKA__TOPIC_PREFIX".to_string(),
            topics.prefix.clone(),
        ),
        (
            "EVENTPIPE_KAFKA__DEAD_LETTER_TOPIC".to_string(),
            topics.dead_letter.clone(),
        ),
        (
            "EVENTPIPE_SCHEMAS".to_string(),
            root().join("schemas").display().to_string(),
        ),
        ("EVENTPIPE_SHUTDOWN_GRACE_SECS".to_string(), "0".to_string()),
        ("EVENTPIPE_COLLECTOR_ID".to_string(), "e2e-host".to_string()),
        // Each gateway gets its own spool directory (a directory has one owner at a time).
        (
            "EVENTPIPE_SPOOL__DIR".to_string(),
            tempfile::tempdir().unwrap().keep().display().to_string(),
        ),
    ];
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    config::load(None, env, vec![]).unwrap()
}

/// `EVENTPIPE_TEST_LOG=debug cargo test ... -- --nocapture` shows the in-process gateway's log.
fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("EVENTPIPE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

impl Gateway {
    pub async fn start(config: Config) -> Gateway {
        init_test_log();
        let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(eventpipe::server::serve(config, public, admin, async {
            let _ = rx.await;
        }));
        Gateway {
            addr,
            admin: admin_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/events", self.addr)
    }

    /// The admin listener's Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until `/readyz` says ready (Kafka metadata reachable).
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
            {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "gateway not ready within 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads topics with the independent Python consumer (confluent-kafka + thriftpy2).
pub fn consume(brokers: &str, topics: &[&str], dead_letter: &str, expect: usize) -> Vec<Value> {
    consume_until(brokers, topics, dead_letter, expect, &[])
}

/// Like `consume`, but also keeps reading until every event id in `want` has been seen (a count
/// alone can be met early by duplicates).
pub fn consume_until(
    brokers: &str,
    topics: &[&str],
    dead_letter: &str,
    expect: usize,
    want: &[String],
) -> Vec<Value> {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/py/consume.py"))
        .args(["--brokers", brokers, "--dead-letter-topic", dead_letter])
        .args([
            "--expect",
            &expect.to_string(),
            "--idle",
            "1.5",
            "--timeout",
            "60",
        ]);
    for t in topics {
        cmd.args(["--topic", t]);
    }
    for id in want {
        cmd.args(["--want", id]);
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .expect("python3 is required for the independent consumer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "independent consumer failed ({}): {stderr}\n(dependencies: pip install confluent-kafka thriftpy2)",
        out.status
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
