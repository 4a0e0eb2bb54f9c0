//! `eventpipe rollout`, the binary, against two kinds of fleets:
//! - fake admin listeners (axum on 127.0.0.1:0) whose readiness, spool and 5xx counters the test
//!   sets, and a restart command that only records which host it was run for: the decisions
//!   (refuse, abort, resume, progress lines);
//! - the fleet of `common::fleet` (three real gateway processes behind a real HAProxy running
//!   `deploy/haproxy/haproxy.cfg`, one Tansu broker) under load through HAProxy, each host
//!   restarted for real by the command (SIGTERM; the harness starts the gateway again on the same
//!   ports and spool, as systemd or a StatefulSet would), with and without the drain through
//!   HAProxy's runtime API: every host restarted, nothing acknowledged lost, client-visible
//!   errors counted. Each prints a row of RELIABILITY.md's fleet table:
//!   `cargo test --test rollout -- --nocapture --test-threads 1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use common::fault::{audit, spawn_load, GatewayProc, Ledger};
use common::fleet::{report_fleet, Fleet, FleetRow, Haproxy, FLEET_GATEWAY_ENV, SERVERS};
use common::{Broker, Topics};

/// Fleets run one at a time: each is five processes on a shared two-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const CLIENTS: usize = 3;
const WAIT: Duration = Duration::from_secs(60);

/// How a fake host behaves.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Behaviour {
    /// Ready; after a restart request, unready for a moment, then ready with a new start time.
    Healthy,
    /// Goes down when restarted and never comes back.
    NeverBack,
    /// Never ready.
    Unready,
    /// Its spool grows between scrapes.
    SpoolGrowing,
    /// One answer in ten is a 5xx.
    Answering5xx,
}

struct FakeState {
    behaviour: Behaviour,
    restarts: usize,
    down_until: Option<Instant>,
    start_time: f64,
    scrapes: u64,
}

struct Fake {
    url: String,
    log: PathBuf,
    state: Mutex<FakeState>,
}

impl Fake {
    /// Applies the restart requests the command wrote to the log since the last look.
    fn refresh(&self) -> std::sync::MutexGuard<'_, FakeState> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let asked = log
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(self.url.as_str()))
            .count();
        let mut s = self.state.lock().unwrap();
        if asked > s.restarts {
            s.restarts = asked;
            s.start_time += 1.0;
            let down = if s.behaviour == Behaviour::NeverBack {
                Duration::from_secs(3600)
            } else {
                Duration::from_millis(600)
            };
            s.down_until = Some(Instant::now() + down);
        }
        s
    }
}

async fn readyz(State(fake): State<Arc<Fake>>) -> (StatusCode, &'static str) {
    let s = fake.refresh();
    let down = s.down_until.is_some_and(|t| Instant::now() < t);
    if down || s.behaviour == Behaviour::Unready {
        (StatusCode::SERVICE_UNAVAILABLE, "{\"ready\":false}")
    } else {
        (StatusCode::OK, "{\"ready\":true}")
    }
}

async fn metrics(State(fake): State<Arc<Fake>>) -> String {
    let mut s = fake.refresh();
    s.scrapes += 1;
    let spool = if s.behaviour == Behaviour::SpoolGrowing {
        s.scrapes * 10
    } else {
        0
    };
    let errors = if s.behaviour == Behaviour::Answering5xx {
        s.scrapes * 10
    } else {
        0
    };
    format!(
        "# TYPE eventpipe_http_requests_total counter\n\
         eventpipe_http_requests_total{{status=\"200\"}} {}\n\
         eventpipe_http_requests_total{{status=\"503\"}} {errors}\n\
         eventpipe_spool_records {spool}\n\
         eventpipe_spool_bytes {}\n\
         eventpipe_start_time_seconds {}\n",
        s.scrapes * 100,
        spool * 300,
        s.start_time
    )
}

/// Starts a fake admin listener; returns its URL.
async fn fake_host(behaviour: Behaviour, log: &Path) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fake = Arc::new(Fake {
        url: url.clone(),
        log: log.to_path_buf(),
        state: Mutex::new(FakeState {
            behaviour,
            restarts: 0,
            down_until: None,
            start_time: 1_700_000_000.0,
            scrapes: 0,
        }),
    });
    let app = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

struct Run {
    ok: bool,
    stderr: String,
    /// The hosts the restart command ran for, in order.
    restarted: Vec<String>,
}

/// Runs `eventpipe rollout` over `hosts` with a restart command that appends
/// "{admin} $EVENTPIPE_ROLLOUT_ADMIN" to `log` and then runs `then`.
async fn rollout(hosts: &[String], log: &Path, then: &str, extra: &[&str]) -> Run {
    let command = format!(
        "echo \"{{admin}} $EVENTPIPE_ROLLOUT_ADMIN\" >> '{}'; {then}",
        log.display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventpipe"));
    cmd.args(["rollout", "--restart-command", &command])
        .args(["--check-interval", "200ms", "--ready-checks", "2"])
        .args(["--host-timeout", "5s"])
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for h in hosts {
        cmd.args(["--admin", h]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let restarted = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            assert_eq!(a, b, "{{admin}} and EVENTPIPE_ROLLOUT_ADMIN differ");
            a.to_string()
        })
        .collect();
    Run {
        ok: out.status.success(),
        stderr,
        restarted,
    }
}

/// The error `eventpipe` ended with.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"))
}

/// Every progress line is "<RFC 3339 UTC time> rollout: ..."; the error (last) line is anyhow's.
fn assert_progress_lines(stderr: &str) {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("Error: "))
        .collect();
    assert!(!lines.is_empty(), "no progress lines: {stderr}");
    for line in lines {
        let (time, rest) = line.split_once(' ').unwrap_or(("", line));
        let parsed =
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339);
        assert!(
            parsed.is_ok() && rest.starts_with("rollout: "),
            "not a progress line: {line:?}\n{stderr}"
        );
    }
}

async fn fakes(behaviours: &[Behaviour]) -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("restarted.log");
    let mut hosts = vec![];
    for b in behaviours {
        hosts.push(fake_host(*b, &log).await);
    }
    (dir, log, hosts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_every_host_in_order_with_a_progress_line_per_step() {
    let (_dir, log, hosts) = fakes(&[Behaviour::Healthy; 3]).await;
    let run = rollout(&hosts, &log, "true", &[]).await;
    assert!(run.ok, "rollout failed: {}", run.stderr);
    assert_eq!(run.restarted, hosts);
    assert_progress_lines(&run.stderr);
    for (i, h) in hosts.iter().enumerate() {
        let step = format!("[{}/3] {h}", i + 1);
        for what in [
            "running the restart command",
            "down after",
            "back ready",
            "stayed ready for 2 consecutive check(s)",
        ] {
            assert!(
                run.stderr.contains(&format!("{step}: {what}")),
                "no {what:?} line for {h}: {}",
                run.stderr
            );
        }
    }
    // Before the first host and after each one.
    assert_eq!(
        run.stderr.matches("rollout: fleet healthy").count(),
        4,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("rollout: done: 3 host(s) restarted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_come_back_aborts_the_rollout_naming_it() {
    let (_dir, log, hosts) =
        fakes(&[Behaviour::Healthy, Behaviour::NeverBack, Behaviour::Healthy]).await;
    let run = rollout(&hosts, &log, "true", &[]).await;
    assert!(!run.ok, "rollout succeeded: {}", run.stderr);
    assert_eq!(run.restarted, hosts[..2], "went on past the dead host");
    let last = error_line(&run.stderr);
    assert!(
        last.contains(&format!("rollout aborted at {} (2/3)", hosts[1]))
            && last.contains("did not come back within 5s (--host-timeout)")
            && last.contains(&format!("--resume-from {}", hosts[1])),
        "unclear abort: {last}"
    );
    assert_progress_lines(&run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_fleet_is_not_rolled() {
    for (bad, check) in [
        (Behaviour::Unready, "ready"),
        (Behaviour::SpoolGrowing, "spool"),
        (Behaviour::Answering5xx, "5xx"),
    ] {
        let (_dir, log, hosts) = fakes(&[Behaviour::Healthy, Behaviour::Healthy, bad]).await;
        let run = rollout(&hosts, &log, "true", &[]).await;
        assert!(!run.ok, "{bad:?}: rollout succeeded: {}", run.stderr);
        assert!(
            run.restarted.is_empty(),
            "{bad:?}: restarted {:?}",
            run.restarted
        );
        assert!(
            run.stderr.contains("rollout refused before")
                && run
                    .stderr
                    .contains(&format!("{} failed the {check} check", hosts[2])),
            "{bad:?}: unclear refusal: {}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_skips_the_hosts_before_it() {
    let (_dir, log, hosts) = fakes(&[Behaviour::Healthy; 3]).await;
    let run = rollout(&hosts, &log, "true", &["--resume-from", &hosts[1]]).await;
    assert!(run.ok, "rollout failed: {}", run.stderr);
    assert_eq!(run.restarted, hosts[1..]);
    assert!(run
        .stderr
        .contains(&format!("starting at 2/3 {}", hosts[1])));

    let run = rollout(
        &hosts,
        &log,
        "true",
        &["--resume-from", "http://127.0.0.1:1"],
    )
    .await;
    assert!(
        !run.ok && run.stderr.contains("is not one of the --admin URLs"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_restart_command_aborts_the_rollout() {
    let (_dir, log, hosts) = fakes(&[Behaviour::Healthy; 3]).await;
    let run = rollout(&hosts, &log, "exit 3", &[]).await;
    assert!(!run.ok, "rollout succeeded: {}", run.stderr);
    assert_eq!(run.restarted, hosts[..1], "went on after a failed command");
    let last = error_line(&run.stderr);
    assert!(
        last.contains(&format!("rollout aborted at {} (1/3)", hosts[0]))
            && last.contains("the restart command failed (exit status: 3)")
            && last.contains(&format!("--resume-from {}", hosts[0])),
        "unclear abort: {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_command_given_up_on_is_stopped_with_what_it_started() {
    let (dir, log, hosts) = fakes(&[Behaviour::Healthy; 3]).await;
    // A command that starts a child (as ssh or kubectl would) and hangs past --host-timeout.
    let pid_file = dir.path().join("child.pid");
    let then = format!(
        "sleep 60 >/dev/null 2>&1 & echo $! > '{}'; wait",
        pid_file.display()
    );
    let run = rollout(&hosts, &log, &then, &[]).await;
    assert!(!run.ok, "rollout succeeded: {}", run.stderr);
    let last = error_line(&run.stderr);
    assert!(
        last.contains("the restart command still runs after 5s (--host-timeout)"),
        "unclear abort: {last}"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    // Gone, or at most a zombie waiting for its new parent to reap it: no longer running.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z'));
    if running {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    assert!(!running, "the command's child {pid} still runs: {state}");
}

// ---- the real fleet ----

/// The restart command's view of the fleet: `<dir>/<admin port>` holds that gateway's pid.
fn write_pid(dir: &Path, gw: &GatewayProc) {
    std::fs::write(dir.join(gw.admin_port.to_string()), gw.pid().to_string()).unwrap();
}

/// Waits until at least `n` events are acknowledged.
async fn wait_acked(ledger: &Ledger, n: usize, what: &str) {
    let deadline = Instant::now() + WAIT;
    while ledger.acked_count() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} events acknowledged in {WAIT:?}; errors {:?}",
            ledger.acked_count(),
            ledger.error_counts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `common::fleet::Fleet` on Tansu's memory engine: the broker is not a fault here, and the
/// SQLite engine's reads slow down as the topic grows (the audit reads it all back).
async fn fleet_on_memory_broker(extra: &[(&str, &str)]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let gateways: Vec<GatewayProc> = SERVERS
        .iter()
        .map(|name| {
            let spool = dir.path().join(format!("spool-{name}"));
            let mut env = FLEET_GATEWAY_ENV.to_vec();
            env.push(("EVENTPIPE_COLLECTOR_ID", name));
            env.extend_from_slice(extra);
            GatewayProc::new(&broker.brokers(), &topics, spool, &env)
        })
        .collect();
    let servers: Vec<(u16, u16)> = gateways.iter().map(|g| (g.port, g.admin_port)).collect();
    let lb = Haproxy::start(&servers);
    tokio::task::block_in_place(|| lb.wait_all_up(WAIT));
    Fleet {
        lb,
        gateways,
        topics,
        broker,
        dir,
    }
}

/// Rolls the fleet (`common::fleet`: three gateway processes behind HAProxy with
/// `deploy/haproxy/haproxy.cfg`, one broker) with `eventpipe rollout` while clients post through
/// HAProxy; with `drain`, through HAProxy's runtime API. Returns the fleet-table row.
async fn rolling_restart(drain: bool, extra: &[(&str, &str)], fault: &str) -> FleetRow {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = fleet_on_memory_broker(extra).await;
    let pids = fleet.dir.path().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let admins: Vec<String> = fleet
        .gateways
        .iter()
        .map(|g| format!("http://127.0.0.1:{}", g.admin_port))
        .collect();
    for gw in &fleet.gateways {
        write_pid(&pids, gw);
    }

    // The supervisor (systemd's Restart=, a StatefulSet): a gateway that exited is started
    // again on the same ports and spool. Its exit after SIGTERM must be clean.
    let gws = Arc::new(Mutex::new(std::mem::take(&mut fleet.gateways)));
    let done = Arc::new(AtomicBool::new(false));
    let mut supervisor = Supervisor {
        done: done.clone(),
        thread: None,
    };
    supervisor.thread = Some({
        let (gws, done, pids) = (gws.clone(), done.clone(), pids.clone());
        std::thread::spawn(move || {
            let mut restarts = [0u32; 3];
            while !done.load(Ordering::Relaxed) {
                for (i, gw) in gws.lock().unwrap().iter_mut().enumerate() {
                    if !gw.running() {
                        gw.wait_clean_exit();
                        gw.start();
                        write_pid(&pids, gw);
                        restarts[i] += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            restarts
        })
    });

    // A light load: the audit reads all of it back.
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Duration::from_millis(100);
    let load = spawn_load(
        fleet.lb.url(),
        CLIENTS,
        5,
        pause,
        ledger.clone(),
        stop.clone(),
    );
    wait_acked(&ledger, 100, "before the rollout").await;

    let command = format!(
        "kill -TERM \"$(cat '{}'/\"${{EVENTPIPE_ROLLOUT_ADMIN##*:}}\")\"",
        pids.display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eventpipe"));
    cmd.args(["rollout", "--restart-command", &command])
        .args(["--check-interval", "1s", "--ready-checks", "3"])
        .args(["--host-timeout", "90s"]);
    for a in &admins {
        cmd.args(["--admin", a]);
    }
    if drain {
        // As an aborted run leaves its host: gw1 is already drained; this run puts it back.
        assert_eq!(
            fleet
                .lb
                .command("set server gateways/gw1 state drain")
                .trim(),
            ""
        );
        cmd.arg("--haproxy-socket").arg(&fleet.lb.socket);
        for (a, server) in admins.iter().zip(SERVERS) {
            cmd.args(["--haproxy-server", &format!("{a}={server}")]);
        }
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    wait_acked(&ledger, ledger.acked_count() + 100, "after the rollout").await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let restarts = supervisor.stop();
    fleet.gateways = Arc::try_unwrap(gws).ok().unwrap().into_inner().unwrap();
    assert!(out.status.success(), "rollout failed: {stderr}");
    assert_eq!(restarts, [1, 1, 1], "every host restarted once: {stderr}");
    assert_progress_lines(&stderr);
    if drain {
        for server in SERVERS {
            assert!(
                stderr.contains(&format!("HAProxy gateways/{server} set to drain"))
                    && stderr.contains(&format!("HAProxy gateways/{server} back in rotation")),
                "{server} not drained and put back: {stderr}"
            );
        }
        assert!(stderr.contains("note: HAProxy gateways/gw1 ("), "{stderr}");
        let states = fleet.lb.server_states();
        assert!(
            SERVERS
                .iter()
                .all(|s| states.get(*s).is_some_and(|st| st == "UP")),
            "not every server back UP in HAProxy: {states:?}"
        );
    }

    fleet.wait_spools_empty(Duration::from_secs(120)).await;
    let (brokers, topic) = (fleet.broker.brokers(), fleet.click_topic());
    let result = tokio::task::block_in_place(|| audit(fault, 3, &brokers, &topic, &ledger));
    let row = FleetRow {
        hosts: SERVERS.len(),
        fault: fault.into(),
        acked: result.acked,
        acked_but_missing: result.acked_but_missing,
        duplicates: result.duplicates,
        errors: ledger.error_counts(),
        lb_retries: fleet.lb.server_total("wretr"),
        lb_redispatches: fleet.lb.server_total("wredis"),
    };
    let line = report_fleet(&row);
    assert!(result.acked > 0, "nothing was acknowledged: {line}");
    assert_eq!(
        result.acked_but_missing, 0,
        "acknowledged events missing from Kafka: {line}\nconsumer: {}",
        result.consumer_errors
    );
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_drained_through_haproxy_restarts_every_host_without_client_errors() {
    // A shutdown grace far shorter than HAProxy's time to mark a server DOWN (3.5 s): without
    // the drain, requests would reach a closed port (and be retried elsewhere by HAProxy).
    let row = rolling_restart(
        true,
        &[("EVENTPIPE_SHUTDOWN_GRACE_SECS", "0.5")],
        "rolling restart of every host (`eventpipe rollout`, drained through HAProxy's runtime API; shutdown grace 0.5 s)",
    )
    .await;
    assert!(
        row.errors.is_empty(),
        "clients saw errors during a drained rollout: {:?}",
        row.errors
    );
    assert_eq!(
        (row.lb_retries, row.lb_redispatches),
        (0, 0),
        "HAProxy had to retry requests sent to a host being restarted: it was not drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_without_drain_relies_on_the_health_checks_and_loses_nothing() {
    // The gateways' shutdown grace (5 s) outlasts HAProxy's time to mark a server DOWN, so the
    // health checks alone should take each host out before it stops accepting; the row says
    // what the clients saw.
    rolling_restart(
        false,
        &[],
        "rolling restart of every host (`eventpipe rollout`, HAProxy health checks only; shutdown grace 5 s)",
    )
    .await;
}

/// The supervisor thread restarting gateways; stopped and joined on drop too, so a failing test
/// does not leave it (and the gateway processes it owns) running.
struct Supervisor {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<[u32; 3]>>,
}

impl Supervisor {
    /// Stops it; how often each gateway was restarted.
    fn stop(&mut self) -> [u32; 3] {
        self.done.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("supervisor (did a gateway exit uncleanly?)")
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
