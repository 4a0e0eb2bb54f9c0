//! The processes under test (a Tansu broker, eventpipe gateways) and what `/proc` says about them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process that is stopped on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&format!("/proc/{}/stat", self.pid())).unwrap_or(f64::NAN)
    }

    /// Peak resident set (VmHWM) in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmHWM:").map_or(f64::NAN, |k| k as f64 / 1024.0)
    }

    /// Current resident set (VmRSS) in MiB.
    pub fn rss_mib(&self) -> f64 {
        status_kib(self.pid(), "VmRSS:").map_or(f64::NAN, |k| k as f64 / 1024.0)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// utime + stime of a `/proc/<pid>/stat` file, in seconds.
fn cpu_secs(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name may hold spaces; fields after it are fixed. utime and stime are fields 14
    // and 15, i.e. the 12th and 13th after the ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// CPU used on the machine by everything except the processes being measured and this one
/// (user + system time; interrupt time, mostly loopback networking, is left out), and steal:
/// a benchmark on a shared machine should say when something else competed for the cores.
pub struct OtherLoad {
    pids: Vec<u32>,
    started: Instant,
    busy0: f64,
    steal0: f64,
    ours0: f64,
}

impl OtherLoad {
    pub fn start(pids: &[u32]) -> OtherLoad {
        OtherLoad {
            pids: pids.to_vec(),
            started: Instant::now(),
            busy0: system_secs(&[0, 1, 2]),
            steal0: system_secs(&[7]),
            ours0: ours(pids),
        }
    }

    /// Average cores used by other processes, and taken by the hypervisor (steal), since
    /// `start`.
    pub fn cores(&self) -> (f64, f64) {
        let secs = self.started.elapsed().as_secs_f64();
        let busy = system_secs(&[0, 1, 2]) - self.busy0;
        let mine = ours(&self.pids) - self.ours0;
        let steal = system_secs(&[7]) - self.steal0;
        (((busy - mine) / secs).max(0.0), steal / secs)
    }
}

fn ours(pids: &[u32]) -> f64 {
    let children: f64 = pids
        .iter()
        .filter_map(|p| cpu_secs(&format!("/proc/{p}/stat")))
        .sum();
    children + self_cpu_secs()
}

/// CPU seconds of the whole machine in the given /proc/stat columns (0 user, 1 nice, 2 system,
/// 3 idle, 4 iowait, 5 irq, 6 softirq, 7 steal).
fn system_secs(columns: &[usize]) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return f64::NAN;
    };
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let sum: u64 = columns.iter().filter_map(|&c| ticks.get(c)).sum();
    sum as f64 / clock_ticks()
}

/// This process's CPU seconds.
pub fn self_cpu_secs() -> f64 {
    cpu_secs("/proc/self/stat").unwrap_or(f64::NAN)
}

/// Raises the open-file limit to its hard limit (children inherit it): thousands of
/// connections need thousands of descriptors on both sides.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The tansu binary: `$TANSU_BIN`, then PATH, then ~/.cargo/bin.
pub fn find_tansu() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("tansu")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/tansu"));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "the Tansu broker is not installed: cargo install tansu --version 0.6.0 --locked \
         --features dynostore,libsql (or set TANSU_BIN)",
    )
}

/// The gateway binary next to this one (same target dir and profile), else
/// `<workspace>/target/release/eventpipe`.
pub fn find_gateway() -> anyhow::Result<PathBuf> {
    let sibling = std::env::current_exe()?.with_file_name("eventpipe");
    if sibling.is_file() {
        return Ok(sibling);
    }
    let default = workspace_root().join("target/release/eventpipe");
    if default.is_file() {
        return Ok(default);
    }
    bail!("no gateway binary; build it with `cargo build --release -p eventpipe` or pass --gateway-bin")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ has a parent")
        .to_path_buf()
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))?)
}

/// Starts a Tansu broker with the memory engine and waits until it listens.
pub fn start_broker(tansu: &Path, dir: &Path) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let log = log_file(dir, "tansu.log")?;
    let child = Command::new(tansu)
        .arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .current_dir(dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", tansu.display()))?;
    let mut proc = Proc { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = proc.exited() {
            bail!(
                "tansu exited ({status}); see {}",
                dir.join("tansu.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("tansu did not listen on {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, format!("127.0.0.1:{port}")))
}

/// `eventpipe topics create` for the schemas in `schemas`, with `prefix` and `dead_letter`, and
/// the gateway's `config` file if there is one (its routing decides the topics).
pub fn create_topics(
    gateway: &Path,
    brokers: &str,
    schemas: &Path,
    prefix: &str,
    dead_letter: &str,
    partitions: u32,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(gateway);
    cmd.args(["topics", "create", "--brokers", brokers]);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let out = cmd
        .arg("--schemas")
        .arg(schemas)
        .args(["--partitions", &partitions.to_string()])
        .args(["--topic-prefix", prefix, "--dead-letter-topic", dead_letter])
        .env("EVENTPIPE_LOG", "warn")
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!(
            "topics create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// How to start a gateway.
pub struct GatewayOptions<'a> {
    pub bin: &'a Path,
    pub brokers: &'a str,
    pub schemas: &'a Path,
    pub prefix: &'a str,
    pub dead_letter: &'a str,
    pub http_only: bool,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A TOML config file (`--config`).
    pub config: Option<&'a Path>,
    pub log_dir: &'a Path,
}

/// A running gateway process.
pub struct Gateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub https: bool,
}

impl Gateway {
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/v1/events", self.addr)
    }
}

/// Starts `eventpipe serve` on free ports and waits for `/readyz`.
pub fn start_gateway(o: &GatewayOptions<'_>) -> anyhow::Result<Gateway> {
    let (port, admin_port) = (free_port()?, free_port()?);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse()?;
    let log = log_file(o.log_dir, "gateway.log")?;
    let spool_dir = o.log_dir.join(format!("spool-{port}"));
    let mut cmd = Command::new(o.bin);
    cmd.arg("serve")
        .args(["--brokers", o.brokers])
        .args(["--listen", &addr.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--schemas")
        .arg(o.schemas)
        .args(["--topic-prefix", o.prefix])
        .args(["--dead-letter-topic", o.dead_letter])
        .env("EVENTPIPE_LOG", "warn")
        .env("EVENTPIPE_SHUTDOWN_GRACE_SECS", "0")
        .env("EVENTPIPE_BENCH__HTTP_ONLY", o.http_only.to_string())
        // The sweep's idle point holds 10,000 keep-alive connections: above the default
        // `limits.max_connections` (4096), which is a production guard, not what is measured.
        .env("EVENTPIPE_LIMITS__MAX_CONNECTIONS", "20000")
        // One spool directory per gateway process (it is locked), never in the caller's cwd.
        .env("EVENTPIPE_SPOOL__DIR", spool_dir)
        .current_dir(o.log_dir)
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(config) = o.config {
        cmd.arg("--config").arg(config);
    }
    if let Some((cert, key)) = &o.tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", o.bin.display()))?;
    let mut proc = Proc { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proc.exited() {
            bail!(
                "gateway exited ({status}); see {}",
                o.log_dir.join("gateway.log").display()
            );
        }
        if ready(admin) {
            break;
        }
        if Instant::now() > deadline {
            bail!("gateway not ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Gateway {
        proc,
        addr,
        https: o.tls.is_some(),
    })
}

/// `GET /readyz` answered 200.
fn ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.ends_with(b"200")
}

/// One line describing the machine: CPUs, model, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |m| m.trim().to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cpus} CPUs ({model}), {mem_gib:.1} GiB RAM")
}
