//! HAProxy's runtime API (the `stats socket` of the load balancer's config), used by
//! `eventpipe rollout --haproxy-socket`: take a server out of rotation before its host restarts
//! (`set server B/S state drain`, then wait until it holds no session and no queued request),
//! and put it back (`state ready`, then wait until its health check says UP).
//!
//! Each command is one connection in the API's non-interactive mode: write the line, read the
//! answer until HAProxy closes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Progress, DOWN_POLL, PROBE_TIMEOUT};

/// Largest answer read (`show stat` of a few backends is a few kilobytes).
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// One backend server as `show stat` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStat {
    /// Current sessions (`scur`).
    pub sessions: u64,
    /// Requests queued for this server (`qcur`).
    pub queued: u64,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/3` (going down), `DOWN 1/2` (going up), `no check`.
    pub status: String,
}

impl ServerStat {
    /// In rotation and passing its health check.
    pub fn up(&self) -> bool {
        self.status == "UP" || self.status == "no check"
    }
}

/// The runtime API of one HAProxy and the backend whose servers are the gateways.
#[derive(Debug, Clone)]
pub struct Haproxy {
    pub socket: PathBuf,
    pub backend: String,
}

impl Haproxy {
    /// Runs one command and returns HAProxy's answer.
    pub async fn command(&self, line: &str, timeout: Duration) -> Result<String, String> {
        tokio::time::timeout(timeout, command(&self.socket, line))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
            .map_err(|e| {
                format!(
                    "HAProxy runtime API {}: {line:?}: {e}",
                    self.socket.display()
                )
            })
    }

    /// `set server BACKEND/SERVER state STATE` (`drain`, `ready`, `maint`).
    pub async fn set_state(
        &self,
        server: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let line = format!("set server {}/{server} state {state}", self.backend);
        let answer = self.command(&line, timeout).await?;
        // Success is an empty answer; anything else is HAProxy's complaint.
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("HAProxy refused {line:?}: {}", answer.trim()))
        }
    }

    /// The backend's server `server` from `show stat`.
    pub async fn stat(&self, server: &str, timeout: Duration) -> Result<ServerStat, String> {
        let answer = self.command("show stat", timeout).await?;
        parse_stat(&answer, &self.backend, server).ok_or_else(|| {
            format!(
                "HAProxy's `show stat` lists no server {}/{server}",
                self.backend
            )
        })
    }
}

async fn command(socket: &Path, line: &str) -> Result<String, String> {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!("{line}\n");
    let answer = super::probe::exchange(&mut stream, request.as_bytes(), MAX_ANSWER_BYTES).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Finds `backend/server` in `show stat` CSV (columns located by the `# pxname,...` header).
pub fn parse_stat(csv: &str, backend: &str, server: &str) -> Option<ServerStat> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, scur, qcur, status) = (
        col("pxname")?,
        col("svname")?,
        col("scur")?,
        col("qcur")?,
        col("status")?,
    );
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(px) == Some(&backend) && f.get(sv) == Some(&server))
        .map(|f| {
            let num = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            ServerStat {
                sessions: num(scur),
                queued: num(qcur),
                status: f.get(status).unwrap_or(&"").to_string(),
            }
        })
}

/// `state drain`, then wait until the server holds no session and no queued request.
pub(crate) async fn drain(
    lb: &Haproxy,
    server: &str,
    limit: Duration,
    step: &str,
    progress: &mut Progress<'_>,
) -> Result<(), String> {
    let started = Instant::now();
    lb.set_state(server, "drain", PROBE_TIMEOUT).await?;
    progress.say(format_args!(
        "{step}: HAProxy {}/{server} set to drain",
        lb.backend
    ));
    loop {
        let stat = lb.stat(server, PROBE_TIMEOUT).await?;
        if stat.sessions == 0 && stat.queued == 0 {
            progress.say(format_args!(
                "{step}: drained in HAProxy after {:.1}s (0 sessions)",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(format!(
                "HAProxy {}/{server} still holds {} session(s), {} queued after {limit:?} (--host-timeout); it is left in state drain",
                lb.backend, stat.sessions, stat.queued
            ));
        }
        tokio::time::sleep(DOWN_POLL).await;
    }
}

/// `state ready`, then wait until HAProxy's health check says UP.
pub(crate) async fn undrain(
    lb: &Haproxy,
    server: &str,
    limit: Duration,
    step: &str,
    progress: &mut Progress<'_>,
) -> Result<(), String> {
    let started = Instant::now();
    lb.set_state(server, "ready", PROBE_TIMEOUT).await?;
    loop {
        let stat = lb.stat(server, PROBE_TIMEOUT).await?;
        if stat.up() {
            progress.say(format_args!(
                "{step}: HAProxy {}/{server} back in rotation (UP) after {:.1}s",
                lb.backend,
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(format!(
                "HAProxy {}/{server} is {} after {limit:?} (--host-timeout): its health check does not pass",
                lb.backend, stat.status
            ));
        }
        tokio::time::sleep(DOWN_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_server_in_show_stat() {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
            front,FRONTEND,,,3,5,100,9,0,0,0,0,0,,,,,OPEN,\n\
            gateways,gw1,0,0,2,4,,9,0,0,,0,,0,0,0,0,DRAIN,1\n\
            gateways,gw2,1,1,0,4,,9,0,0,,0,,0,0,0,0,UP,1\n\
            gateways,BACKEND,0,0,2,4,,9,0,0,0,0,,0,0,0,0,UP,2\n";
        let gw1 = parse_stat(csv, "gateways", "gw1").unwrap();
        assert_eq!(
            gw1,
            ServerStat {
                sessions: 2,
                queued: 0,
                status: "DRAIN".into()
            }
        );
        assert!(!gw1.up());
        let gw2 = parse_stat(csv, "gateways", "gw2").unwrap();
        assert_eq!((gw2.sessions, gw2.queued, gw2.up()), (0, 1, true));
        assert_eq!(parse_stat(csv, "gateways", "gw9"), None);
        assert_eq!(parse_stat(csv, "other", "gw1"), None);
    }
}
