//! A fleet on loopback: one durable Tansu broker (SQLite engine), three gateway processes (each
//! with its own ports, spool directory and group id) and a real HAProxy in front of them, run
//! with the production config `deploy/haproxy/haproxy.cfg`. HAProxy's runtime API (its stats
//! socket, admin level) tells what the load balancer sees and lets a test drain or disable a
//! server. Load goes through HAProxy with `fault::spawn_load`; the audit is `fault::audit`.
//!
//! One host's broker traffic can be cut alone (`BrokerCut`): Tansu advertises a single listener
//! address, so a proxy in front of it would be bypassed after the first metadata answer; instead
//! each gateway runs with its own group id and a firewall rule (iptables, owner match on the
//! loopback interface, that broker port and that group only) resets its connections.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::fault::{spawn_load, GatewayProc, Ledger};
use super::{free_port, root, Broker, Topics};

pub const INSTALL_HAPROXY: &str =
    "apt-get install haproxy (Debian's, 2.6 or later; scripts/setup.sh installs it)";
pub const INSTALL_IPTABLES: &str =
    "apt-get install iptables, and run as root (the cut needs CAP_NET_ADMIN)";

/// The server names `deploy/haproxy/haproxy.cfg` gives the gateways, in order.
pub const SERVERS: [&str; 3] = ["gw1", "gw2", "gw3"];

/// Locates haproxy: $HAPROXY_BIN, then PATH, then /usr/sbin. Missing is a failure with an
/// install hint, never a skip.
pub fn haproxy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HAPROXY_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("haproxy"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/sbin/haproxy"));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("haproxy is not installed; install it with: {INSTALL_HAPROXY}"))
}

/// A real HAProxy process in the foreground (`-db`), killed on drop.
pub struct Haproxy {
    pub port: u16,
    /// The runtime API socket (`stats socket ... level admin`).
    pub socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy with `deploy/haproxy/haproxy.cfg` in front of `servers`, given as
    /// (public port, admin port) on 127.0.0.1, in the order gw1, gw2, gw3.
    pub fn start(servers: &[(u16, u16)]) -> Haproxy {
        assert_eq!(
            servers.len(),
            SERVERS.len(),
            "the config names three servers"
        );
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("haproxy.sock");
        let port = free_port();
        let logs = root().join("target/fault-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("haproxy-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(haproxy_bin());
        cmd.arg("-db")
            .arg("-f")
            .arg(root().join("deploy/haproxy/haproxy.cfg"))
            .env("EVENTPIPE_LB_LISTEN", format!("127.0.0.1:{port}"))
            .env("EVENTPIPE_LB_STATS_SOCKET", &socket)
            .env_remove("EVENTPIPE_LB_USER")
            .env_remove("EVENTPIPE_LB_GROUP")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (i, (public, admin)) in servers.iter().enumerate() {
            cmd.env(
                format!("EVENTPIPE_GW{}", i + 1),
                format!("127.0.0.1:{public}"),
            )
            .env(
                format!("EVENTPIPE_GW{}_ADMIN_PORT", i + 1),
                admin.to_string(),
            );
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("starting haproxy: {e}; install it with: {INSTALL_HAPROXY}")
        });
        let mut lb = Haproxy {
            port,
            socket,
            child: Some(child),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !lb.socket.exists() {
            if let Some(status) = lb.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("haproxy exited at start-up ({status}): {}", lb.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen within 30 s: {}",
                lb.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        lb
    }

    /// The public URL of the event endpoint, through the load balancer.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/events", self.port)
    }

    /// One runtime API command (e.g. `set server gateways/gw1 state drain`); its answer.
    pub fn command(&self, command: &str) -> String {
        // HAProxy renames the socket into place before it calls listen(), so a connect right
        // after start-up can be refused for a moment: retry that, and only that, briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match std::os::unix::net::UnixStream::connect(&self.socket) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!(
                    "haproxy stats socket {}: {e}\n{}",
                    self.socket.display(),
                    self.log_tail()
                ),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    /// `show stat` for the `gateways` backend's servers: server name -> column -> value (e.g.
    /// `status` = `UP`, `DOWN`, `UP 1/2`, `DRAIN`, `MAINT`; `wretr` retries; `wredis`
    /// redispatches; `econ` connection errors; `eresp` response errors).
    pub fn server_stats(&self) -> HashMap<String, HashMap<String, String>> {
        let csv = self.command("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        lines
            .filter(|l| l.starts_with("gateways,"))
            .map(|l| {
                header
                    .iter()
                    .zip(l.split(','))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>()
            })
            .filter(|row| SERVERS.contains(&row["svname"].as_str()))
            .map(|row| (row["svname"].clone(), row))
            .collect()
    }

    /// Each server's check status as HAProxy sees it (`UP`, `DOWN`, `UP 1/2`, `MAINT`, ...).
    pub fn server_states(&self) -> HashMap<String, String> {
        self.server_stats()
            .into_iter()
            .map(|(name, row)| (name, row["status"].clone()))
            .collect()
    }

    /// A counter column summed over the servers (e.g. `wretr`, `wredis`).
    pub fn server_total(&self, column: &str) -> u64 {
        self.server_stats()
            .values()
            .filter_map(|row| row.get(column)?.parse::<u64>().ok())
            .sum()
    }

    /// Polls until `server`'s status satisfies `want`, or `limit` passes; the last status seen.
    pub fn wait_state(
        &self,
        server: &str,
        limit: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let state = self
                .server_states()
                .remove(server)
                .unwrap_or_else(|| "absent".into());
            if want(&state) {
                return Ok(state);
            }
            if Instant::now() >= deadline {
                return Err(state);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every server is UP (ready, and past `rise` checks).
    pub fn wait_all_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let states = self.server_states();
            if SERVERS
                .iter()
                .all(|s| states.get(*s).is_some_and(|st| st == "UP"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy: not every server UP within {limit:?}: {states:?}\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The environment every fleet gateway gets (on top of `GatewayProc`'s): the load balancer is a
/// trusted proxy, and the shutdown grace outlasts HAProxy's time to mark a server DOWN
/// (3.5 s at most with the shipped config; see its header).
pub const FLEET_GATEWAY_ENV: [(&str, &str); 2] = [
    ("EVENTPIPE_TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
    ("EVENTPIPE_SHUTDOWN_GRACE_SECS", "5"),
];

/// One broker, three gateways, HAProxy in front. Dropped in field order: the load balancer
/// first, the broker last.
pub struct Fleet {
    pub lb: Haproxy,
    pub gateways: Vec<GatewayProc>,
    pub topics: Topics,
    pub broker: Broker,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    /// Starts the fleet and waits until HAProxy sees every gateway UP. `extra` is added to each
    /// gateway's environment (and overrides `FLEET_GATEWAY_ENV`).
    pub async fn start(extra: &[(&str, &str)]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::sqlite();
        let topics = Topics::unique();
        topics.create(&broker.brokers()).await;
        let mut env: Vec<(&str, &str)> = FLEET_GATEWAY_ENV.to_vec();
        env.extend_from_slice(extra);
        let gateways: Vec<GatewayProc> = (0..SERVERS.len())
            .map(|i| {
                let spool = dir.path().join(format!("spool-{}", SERVERS[i]));
                let mut env = env.clone();
                env.push(("EVENTPIPE_COLLECTOR_ID", SERVERS[i]));
                let mut g = GatewayProc::configure(&broker.brokers(), &topics, spool, &env);
                g.gid = Some(fleet_gid(i));
                g.start();
                g
            })
            .collect();
        let lb = Haproxy::start(
            &gateways
                .iter()
                .map(|g| (g.port, g.admin_port))
                .collect::<Vec<_>>(),
        );
        tokio::task::block_in_place(|| lb.wait_all_up(Duration::from_secs(60)));
        Fleet {
            lb,
            gateways,
            topics,
            broker,
            dir,
        }
    }

    /// The topic the load (`spawn_load`'s click events) lands in.
    pub fn click_topic(&self) -> String {
        self.topics.topic("click")
    }

    /// Cuts gateway `i`'s connections to the broker (and only its) until the guard is dropped.
    pub fn cut_broker(&self, i: usize) -> BrokerCut {
        BrokerCut::new(self.broker.port, self.gateways[i].gid.expect("fleet gid"))
    }

    /// Waits until every running gateway's spool is empty.
    pub async fn wait_spools_empty(&mut self, limit: Duration) {
        for (name, gw) in SERVERS.iter().zip(self.gateways.iter_mut()) {
            if gw.running() {
                assert!(
                    gw.wait_spool_empty(limit).await,
                    "{name}'s spool did not drain: {}",
                    gw.log_tail()
                );
            }
        }
    }
}

/// A group id of our own for fleet gateway `i` (no other process has it, so a firewall rule on
/// it touches nothing else on the machine).
fn fleet_gid(i: usize) -> u32 {
    100_000 + (std::process::id() % 1_000_000) * 4 + i as u32
}

/// A firewall rule that resets one gateway's connections to the broker (on loopback, that
/// broker's port, that gateway's group id only) and refuses new ones; removed on drop.
pub struct BrokerCut {
    rule: Vec<String>,
}

impl BrokerCut {
    pub fn new(broker_port: u16, gid: u32) -> BrokerCut {
        let rule: Vec<String> = [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &broker_port.to_string(),
            "-m",
            "owner",
            "--gid-owner",
            &gid.to_string(),
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        iptables("-I", &rule);
        BrokerCut { rule }
    }
}

impl Drop for BrokerCut {
    fn drop(&mut self) {
        // Never panic here: during a test's unwinding that would abort the process and leave
        // the rule behind.
        match Command::new("iptables")
            .arg("-w")
            .arg("-D")
            .args(&self.rule)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "iptables -D {} failed: {}",
                self.rule.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("iptables -D {}: {e}", self.rule.join(" ")),
        }
    }
}

fn iptables(op: &str, rule: &[String]) {
    let out = Command::new("iptables")
        .arg("-w")
        .arg(op)
        .args(rule)
        .output()
        .unwrap_or_else(|e| panic!("iptables: {e}; {INSTALL_IPTABLES}"));
    assert!(
        out.status.success(),
        "iptables {op} {} failed: {}; {INSTALL_IPTABLES}",
        rule.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Clients posting unique events to one URL (the load balancer's), with their ledger.
pub struct Load {
    pub ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` loops, each posting bundles of 5 events with a 50 ms pause (a few hundred
    /// events a second: enough to cross every fault, few enough for a quick audit, as Tansu's
    /// SQLite engine reads large topics slowly).
    pub fn start(url: &str, clients: usize) -> Load {
        let ledger = Arc::new(Ledger::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = spawn_load(
            url.to_string(),
            clients,
            5,
            Duration::from_millis(50),
            ledger.clone(),
            stop.clone(),
        );
        Load {
            ledger,
            stop,
            tasks,
        }
    }

    /// Waits until `more` events beyond `since` are acknowledged; panics after `limit`.
    pub async fn wait_acked(&self, since: usize, more: usize, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let acked = self.ledger.acked_count();
            if acked >= since + more {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} acknowledged events in {limit:?}, wanted {more}; errors {:?}",
                acked - since.min(acked),
                self.ledger.error_counts()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the clients and waits for their last requests.
    pub async fn stop(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.ledger
    }
}

/// Replays a dead host's spool directory to the broker with `eventpipe spool drain`, as an
/// operator would from the dead host's disk; the drain must end `drained` with nothing left or
/// quarantined. Returns how many records it replayed. Blocking: call it in `block_in_place`.
pub fn drain_orphaned_spool(dir: &Path, brokers: &str) -> u64 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventpipe"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("EVENTPIPE_")) {
        cmd.env_remove(key);
    }
    let out = cmd
        .args([
            "spool",
            "drain",
            "--json",
            "--timeout",
            "2m",
            "--brokers",
            brokers,
        ])
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("running eventpipe spool drain");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "spool drain of {} failed ({}): {stderr}",
        dir.display(),
        out.status
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("spool drain --json: {e}: {stderr}"));
    assert_eq!(summary["outcome"], "drained", "{summary}\n{stderr}");
    assert_eq!(summary["remaining"], 0, "{summary}");
    assert_eq!(summary["quarantined"], 0, "{summary}");
    summary["replayed"].as_u64().unwrap_or(0)
}

/// One row of the fleet table in RELIABILITY.md.
#[derive(Debug, serde::Serialize)]
pub struct FleetRow {
    pub hosts: usize,
    pub fault: String,
    pub acked: usize,
    pub acked_but_missing: usize,
    pub duplicates: usize,
    /// Client-visible errors by kind (`fault::Ledger::errors`).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// HAProxy's retries and redispatches (`show stat` wretr, wredis over the servers).
    pub lb_retries: u64,
    pub lb_redispatches: u64,
}

/// Prints the row (JSON and Markdown) and appends the JSON to `target/fleet-audit.jsonl`.
pub fn report_fleet(row: &FleetRow) -> String {
    let line = serde_json::to_string(row).unwrap();
    let errors = if row.errors.is_empty() {
        "0".to_string()
    } else {
        let total: u64 = row.errors.values().sum();
        let kinds: Vec<String> = row
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!("{total} ({})", kinds.join(", "))
    };
    println!("FLEET-AUDIT {line}");
    println!(
        "| {} | {} | {} | **{}** | {} | {} | {} / {} |",
        row.hosts,
        row.fault,
        row.acked,
        row.acked_but_missing,
        row.duplicates,
        errors,
        row.lb_retries,
        row.lb_redispatches
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root().join("target/fleet-audit.jsonl"))
    {
        let _ = writeln!(f, "{line}");
    }
    line
}
