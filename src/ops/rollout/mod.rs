//! `eventpipe rollout`: the rolling restart that checks the fleet's health between hosts.
//!
//! For each host in `--admin` order (from `--resume-from` on):
//! 1. the fleet is healthy ([`probe::judge`]): every host's `/readyz` is 200 at the start and the
//!    end of a `--check-interval` window; no spool grew within the window
//!    (`eventpipe_spool_records`); and the 5xx answers since the last check
//!    (`eventpipe_http_requests_total{status=~"5.."}`; a restarted process counts from zero) are
//!    at most `--max-5xx-ratio` (default 1%) of the host's requests. An absolute bound, not a
//!    comparison with the start: a fleet that already answers 5xx must not be rolled, and a
//!    healthy one answers none. Before the first host this check is what refuses to start.
//! 2. with `--haproxy-socket`: the host's server is set to `drain` through HAProxy's runtime API
//!    and the rollout waits until it holds no session and no queued request;
//! 3. the restart command runs (`sh -c`, `{admin}` replaced by the host's admin URL, also in
//!    `EVENTPIPE_ROLLOUT_ADMIN`); it must exit 0;
//! 4. the host must go down (`/readyz` not 200 or not answering, or a new
//!    `eventpipe_start_time_seconds`) and come back: ready (as a new process when the start time
//!    is known) for `--ready-checks` consecutive checks, all within `--host-timeout`;
//! 5. with HAProxy: `state ready`, and the rollout waits for the server's health check to say UP;
//! 6. the fleet check again (the next host's step 1).
//!
//! Any failure aborts with an error naming the host and the failed check, and the
//! `--resume-from` URL that continues the run. One progress line per step goes to stderr.

pub mod haproxy;
pub mod probe;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use haproxy::Haproxy;
use probe::{AdminUrl, Scrape, Thresholds};

/// Timeout of one admin request.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a restarting host is polled to see it go down (and HAProxy while it drains).
pub(crate) const DOWN_POLL: Duration = Duration::from_millis(200);

/// The command line of `eventpipe rollout`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shell command that restarts one host (run with `sh -c`; `{admin}` is replaced by the host's
    /// admin URL, also given as EVENTPIPE_ROLLOUT_ADMIN). Must exit 0.
    #[arg(long, value_name = "CMD")]
    pub restart_command: String,
    /// A host's admin URL (http://HOST:PORT), once per host, in rollout order.
    #[arg(long = "admin", value_name = "URL", required = true)]
    pub admins: Vec<String>,
    /// Continue an aborted rollout at this host (one of the --admin URLs); hosts before it are
    /// not restarted (still checked).
    #[arg(long, value_name = "URL")]
    pub resume_from: Option<String>,
    /// Consecutive ready checks a restarted host must pass before the next host.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub ready_checks: u32,
    /// Time between checks (also the window in which spools must not grow): 500ms, 2s, 1m.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub check_interval: Duration,
    /// Limit for one host: from the restart command's start until it is back and stable.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub host_timeout: Duration,
    /// Largest share of 5xx answers a host may give between two checks.
    #[arg(long = "max-5xx-ratio", default_value_t = 0.01)]
    pub max_5xx_ratio: f64,
    /// HAProxy runtime API socket (its `stats socket ... level admin`): drain each host there
    /// before restarting it, put it back after.
    #[arg(long, value_name = "PATH", requires = "haproxy_servers")]
    pub haproxy_socket: Option<PathBuf>,
    /// The HAProxy backend whose servers are the gateways.
    #[arg(long, value_name = "NAME", default_value = "gateways")]
    pub haproxy_backend: String,
    /// ADMIN_URL=SERVER: the HAProxy server name of a host, once per --admin URL.
    #[arg(
        long = "haproxy-server",
        value_name = "URL=NAME",
        requires = "haproxy_socket"
    )]
    pub haproxy_servers: Vec<String>,
}

/// `500ms`, `2s`, `1.5s`, `3m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s, 5m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// The validated plan of one rollout.
struct Plan {
    command: String,
    hosts: Vec<AdminUrl>,
    start: usize,
    ready_checks: u32,
    interval: Duration,
    host_timeout: Duration,
    thresholds: Thresholds,
    haproxy: Option<(Haproxy, HashMap<String, String>)>,
}

impl Plan {
    fn new(args: &Args) -> anyhow::Result<Plan> {
        let hosts = args
            .admins
            .iter()
            .map(|u| AdminUrl::parse(u).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (i, h) in hosts.iter().enumerate() {
            if hosts[..i].contains(h) {
                bail!("--admin {h} is given twice");
            }
        }
        let start = match &args.resume_from {
            None => 0,
            Some(url) => {
                let want = AdminUrl::parse(url).map_err(anyhow::Error::msg)?;
                hosts.iter().position(|h| *h == want).with_context(|| {
                    format!("--resume-from {url} is not one of the --admin URLs")
                })?
            }
        };
        if !(0.0..=1.0).contains(&args.max_5xx_ratio) {
            bail!("--max-5xx-ratio must be between 0 and 1");
        }
        let haproxy = match &args.haproxy_socket {
            None => None,
            Some(socket) => {
                let mut servers = HashMap::new();
                for pair in &args.haproxy_servers {
                    let (url, name) = pair
                        .rsplit_once('=')
                        .filter(|(_, n)| !n.is_empty())
                        .with_context(|| format!("--haproxy-server {pair:?} is not URL=NAME"))?;
                    let url = AdminUrl::parse(url).map_err(anyhow::Error::msg)?;
                    if !hosts.contains(&url) {
                        bail!("--haproxy-server {pair}: {url} is not one of the --admin URLs");
                    }
                    servers.insert(url.url, name.to_string());
                }
                if let Some(h) = hosts.iter().find(|h| !servers.contains_key(&h.url)) {
                    bail!("--haproxy-server names no HAProxy server for --admin {h}");
                }
                let lb = Haproxy {
                    socket: socket.clone(),
                    backend: args.haproxy_backend.clone(),
                };
                Some((lb, servers))
            }
        };
        Ok(Plan {
            command: args.restart_command.clone(),
            hosts,
            start,
            ready_checks: args.ready_checks,
            interval: args.check_interval,
            host_timeout: args.host_timeout,
            thresholds: Thresholds {
                max_5xx_ratio: args.max_5xx_ratio,
            },
            haproxy,
        })
    }

    fn server(&self, host: &AdminUrl) -> Option<(&Haproxy, &str)> {
        let (lb, servers) = self.haproxy.as_ref()?;
        Some((lb, servers.get(&host.url)?.as_str()))
    }
}

/// Progress lines: `<UTC timestamp> rollout: <what>`.
pub struct Progress<'a> {
    out: &'a mut (dyn Write + Send),
}

impl Progress<'_> {
    pub(crate) fn say(&mut self, what: impl std::fmt::Display) {
        let t = time::OffsetDateTime::now_utc();
        let now = crate::rfc3339_ms(t);
        let _ = writeln!(self.out, "{now} rollout: {what}");
        let _ = self.out.flush();
    }
}

/// Runs the rollout; progress goes to `out`. The error says which host and check failed and how
/// to resume.
pub async fn run(args: &Args, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let plan = Plan::new(args)?;
    let mut progress = Progress { out };
    let n = plan.hosts.len();
    let started = Instant::now();
    progress.say(format_args!(
        "{} host(s), starting at {}/{n} {}; restart command: {}",
        n - plan.start,
        plan.start + 1,
        plan.hosts[plan.start],
        plan.command
    ));
    let mut last: HashMap<String, Scrape> = HashMap::new();
    let first = &plan.hosts[plan.start];
    if let Err(why) = fleet_check(&plan, plan.start, &mut last, &mut progress).await {
        bail!(
            "rollout refused before {first} ({}/{n}): the fleet is not healthy: {why}. Nothing was restarted; fix it, then run the same command again",
            plan.start + 1
        );
    }
    for i in plan.start..n {
        let host = &plan.hosts[i];
        let step = format!("[{}/{n}] {host}", i + 1);
        if let Err(why) = restart_host(&plan, host, &step, &mut last, &mut progress).await {
            progress.say(format_args!("{step}: ABORT: {why}"));
            bail!(
                "rollout aborted at {host} ({}/{n}): {why}. Hosts before it are done; fix the cause, then resume: the same command with --resume-from {host}",
                i + 1
            );
        }
        if let Err(why) = fleet_check(&plan, i + 1, &mut last, &mut progress).await {
            progress.say(format_args!("{step}: ABORT: fleet unhealthy: {why}"));
            match plan.hosts.get(i + 1) {
                Some(next) => bail!(
                    "rollout aborted after {host} ({}/{n}): the fleet turned unhealthy: {why}. {host} was restarted; fix the cause, then resume: the same command with --resume-from {next}",
                    i + 1
                ),
                None => bail!(
                    "every host was restarted, but after the last one ({host}) the fleet is unhealthy: {why}"
                ),
            }
        }
    }
    progress.say(format_args!(
        "done: {} host(s) restarted in {:.1}s",
        n - plan.start,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Scrapes every host twice, `interval` apart, and judges each; `last` holds each host's
/// scrape from the previous check (5xx counts since then) and is updated. With HAProxy, every
/// server must be UP, except that hosts from `next` on (still to be restarted, and put back by
/// this run) may be in state drain, as an aborted run leaves its host.
async fn fleet_check(
    plan: &Plan,
    next: usize,
    last: &mut HashMap<String, Scrape>,
    progress: &mut Progress<'_>,
) -> Result<(), String> {
    let a = scrape_all(&plan.hosts).await;
    tokio::time::sleep(plan.interval).await;
    let b = scrape_all(&plan.hosts).await;
    let (mut requests, mut errors) = (0.0, 0.0);
    for (host, (a, b)) in plan.hosts.iter().zip(a.iter().zip(&b)) {
        let base = last.get(&host.url);
        probe::judge(a, b, base, plan.thresholds)
            .map_err(|(check, detail)| format!("{host} failed the {check} check: {detail}"))?;
        let base = base.filter(|l| l.metrics).unwrap_or(a);
        requests += probe::counter_delta(base.requests, b.requests);
        errors += probe::counter_delta(base.errors_5xx, b.errors_5xx);
    }
    for (i, host) in plan.hosts.iter().enumerate() {
        if let Some((lb, server)) = plan.server(host) {
            let stat = lb.stat(server, PROBE_TIMEOUT).await?;
            let drained = i >= next && stat.status == "DRAIN";
            if drained {
                progress.say(format_args!(
                    "note: HAProxy {}/{server} ({host}) is in state drain; this run puts it back after restarting it",
                    lb.backend
                ));
            } else if !stat.up() {
                return Err(format!(
                    "{host} failed the haproxy check: {}/{server} is {}",
                    lb.backend, stat.status
                ));
            }
        }
    }
    for (host, b) in plan.hosts.iter().zip(b) {
        last.insert(host.url.clone(), b);
    }
    progress.say(format_args!(
        "fleet healthy: {n}/{n} ready, no spool growing, {errors} of {requests} requests answered 5xx since the last check",
        n = plan.hosts.len()
    ));
    Ok(())
}

async fn scrape_all(hosts: &[AdminUrl]) -> Vec<Scrape> {
    let mut set = tokio::task::JoinSet::new();
    for (i, h) in hosts.iter().enumerate() {
        let h = h.clone();
        set.spawn(async move { (i, probe::scrape(&h, PROBE_TIMEOUT).await) });
    }
    let mut out = vec![Scrape::default(); hosts.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, s)) = joined {
            out[i] = s;
        }
    }
    out
}

/// Steps 2-5 for one host.
async fn restart_host(
    plan: &Plan,
    host: &AdminUrl,
    step: &str,
    last: &mut HashMap<String, Scrape>,
    progress: &mut Progress<'_>,
) -> Result<(), String> {
    let before = last.get(&host.url).and_then(|s| s.start_time);
    if let Some((lb, server)) = plan.server(host) {
        haproxy::drain(lb, server, plan.host_timeout, step, progress).await?;
    }
    let leave_drained = |why: String| {
        match plan.server(host) {
        Some((lb, server)) => format!(
            "{why} ({}/{server} is left in state drain in HAProxy: `set server {}/{server} state ready` on {} puts it back)",
            lb.backend,
            lb.backend,
            lb.socket.display()
        ),
        None => why,
    }
    };
    let started = Instant::now();
    let deadline = started + plan.host_timeout;
    progress.say(format_args!("{step}: running the restart command"));
    let command = plan.command.replace("{admin}", &host.url);
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("EVENTPIPE_ROLLOUT_ADMIN", &host.url)
        .stdin(std::process::Stdio::null())
        // Its own process group, so that giving up on it also stops what it started (ssh,
        // kubectl...), not only the shell.
        .process_group(0)
        .spawn()
        .map_err(|e| leave_drained(format!("cannot run the restart command: {e}")))?;
    let mut child = KillOnDrop(child);

    // Until the command has exited 0 and the host has been seen down. (tokio's `process`
    // feature is not enabled: the command is polled along with the host.)
    let mut command_done = false;
    let mut went_down = false;
    while !(command_done && went_down) {
        if Instant::now() >= deadline {
            let why = if !command_done {
                format!(
                    "the restart command still runs after {:?} (--host-timeout)",
                    plan.host_timeout
                )
            } else {
                format!(
                    "did not go down within {:?} (--host-timeout): /readyz stayed 200 and its start time did not change (does the restart command restart it?)",
                    plan.host_timeout
                )
            };
            return Err(leave_drained(why));
        }
        if !command_done {
            let status = child
                .0
                .try_wait()
                .map_err(|e| leave_drained(format!("waiting for the restart command: {e}")))?;
            if let Some(status) = status {
                if !status.success() {
                    return Err(leave_drained(format!(
                        "the restart command failed ({status})"
                    )));
                }
                command_done = true;
                progress.say(format_args!(
                    "{step}: restart command exited 0 after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if !went_down {
            let down = match probe::ready(host, PROBE_TIMEOUT).await {
                Err(why) => Some(why),
                Ok(()) => {
                    let now = probe::scrape(host, PROBE_TIMEOUT).await.start_time;
                    (before.is_some() && now.is_some() && now != before)
                        .then(|| "restarted (new start time)".to_string())
                }
            };
            if let Some(why) = down {
                went_down = true;
                progress.say(format_args!(
                    "{step}: down after {:.1}s: {why}",
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if !(command_done && went_down) {
            tokio::time::sleep(DOWN_POLL).await;
        }
    }

    // Back: ready as a new process for `ready_checks` consecutive checks.
    let mut streak = 0;
    let mut last_problem = String::from("never ready");
    loop {
        let s = probe::scrape(host, PROBE_TIMEOUT).await;
        let same_process = before.is_some() && s.start_time == before;
        if s.ready && !same_process {
            streak += 1;
            if streak == 1 {
                progress.say(format_args!(
                    "{step}: back ready after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
            }
            if streak >= plan.ready_checks {
                progress.say(format_args!(
                    "{step}: stayed ready for {} consecutive check(s)",
                    plan.ready_checks
                ));
                break;
            }
        } else {
            last_problem = if s.ready {
                "ready, but the same process as before the restart (start time unchanged)".into()
            } else {
                s.not_ready.clone()
            };
            if streak > 0 {
                progress.say(format_args!(
                    "{step}: not ready again ({last_problem}); counting again"
                ));
            }
            streak = 0;
        }
        if Instant::now() >= deadline {
            return Err(leave_drained(format!(
                "did not come back within {:?} (--host-timeout): {}",
                plan.host_timeout,
                if streak > 0 {
                    format!(
                        "ready for only {streak} of {} consecutive checks",
                        plan.ready_checks
                    )
                } else {
                    format!("last check: {last_problem}")
                }
            )));
        }
        tokio::time::sleep(plan.interval).await;
    }
    // The new process counts from zero: 5xx since the restart are all the new process's.
    last.insert(
        host.url.clone(),
        Scrape {
            metrics: true,
            ready: true,
            ..Scrape::default()
        },
    );

    if let Some((lb, server)) = plan.server(host) {
        haproxy::undrain(lb, server, plan.host_timeout, step, progress).await?;
    }
    Ok(())
}

/// The restart command, killed if the rollout gives up on it.
/// The restart command, killed with its whole process group if still running when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let group = format!("-{}", self.0.id());
            let killed_group = std::process::Command::new("kill")
                .args(["-KILL", "--", &group])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !killed_group {
                let _ = self.0.kill();
            }
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(
            ["rollout", "--restart-command", "true"].iter().chain(args),
        )?;
        Plan::new(&cli.args)
    }

    #[test]
    fn checks_the_command_line() {
        let two = ["--admin", "http://a:1", "--admin", "http://b:2"];
        let p = plan(&two).unwrap();
        assert_eq!((p.start, p.hosts.len()), (0, 2));
        let p = plan(&[&two[..], &["--resume-from", "http://b:2/"]].concat()).unwrap();
        assert_eq!(p.start, 1);
        let err = |args: &[&str]| plan(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&["--admin", "http://a:1", "--admin", "http://a:1"]).contains("given twice"));
        assert!(err(&[&two[..], &["--resume-from", "http://c:3"]].concat())
            .contains("not one of the --admin URLs"));
        assert!(err(&["--admin", "https://a:1"]).contains("must start with http://"));
        let lb = [
            "--haproxy-socket",
            "/run/lb.sock",
            "--haproxy-server",
            "http://a:1=gw1",
        ];
        assert!(err(&[&two[..], &lb[..]].concat())
            .contains("names no HAProxy server for --admin http://b:2"));
        let both = [&two[..], &lb[..], &["--haproxy-server", "http://b:2=gw2"]].concat();
        let p = plan(&both).unwrap();
        assert_eq!(p.server(&p.hosts[1]).map(|(_, s)| s), Some("gw2"));
        assert!(
            err(&[&two[..], &["--haproxy-socket", "/run/lb.sock"]].concat())
                .contains("--haproxy-server")
        );
        assert!(err(&[&two[..], &["--ready-checks", "0"]].concat()).contains("ready-checks"));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
