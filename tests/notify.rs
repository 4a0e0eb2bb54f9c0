//! `Type=notify` end to end: the real binary under a fake systemd (a unix datagram socket named by
//! `NOTIFY_SOCKET`) says `READY=1` once `/readyz` is true and `STOPPING=1` when SIGTERM starts the
//! shutdown. The unit in `deploy/systemd/eventpipe.service` depends on both: without READY=1,
//! `systemctl start` times out and the unit is restarted in a loop.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::fault::{signal, GatewayProc};
use common::{free_port, Topics};

/// Every notification until one contains `wanted` (or the deadline passes).
fn until(sock: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = msg.lines().any(|l| l == wanted);
                seen.push(msg);
                if found {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_readyz_is_true_and_stopping_at_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // No broker at all: with the spool on, the gateway is ready at once (events go to the spool).
    let brokers = format!("127.0.0.1:{}", free_port());
    let socket = socket_path.display().to_string();
    let mut gw = GatewayProc::new(
        &brokers,
        &Topics::unique(),
        dir.path().join("spool"),
        // A long grace: /readyz is still answering (false) when STOPPING=1 is checked.
        &[
            ("NOTIFY_SOCKET", socket.as_str()),
            ("EVENTPIPE_SHUTDOWN_GRACE_SECS", "5"),
        ],
    );

    let mut seen = Vec::new();
    assert!(
        until(&sock, "READY=1", &mut seen),
        "no READY=1 from the gateway; got {seen:?}\n{}",
        gw.log_tail()
    );
    // READY=1 means what a load balancer's check means.
    assert_eq!(gw.ready().await, Some(true), "READY=1 but /readyz not 200");

    signal(gw.pid(), "TERM");
    assert!(
        until(&sock, "STOPPING=1", &mut seen),
        "no STOPPING=1 after SIGTERM; got {seen:?}\n{}",
        gw.log_tail()
    );
    // STOPPING=1 comes with readiness already off (the load balancer and systemd agree).
    assert_eq!(gw.ready().await, Some(false), "STOPPING=1 but /readyz true");
    gw.terminate();
    let ready_count = seen
        .iter()
        .filter(|m| m.lines().any(|l| l == "READY=1"))
        .count();
    assert_eq!(ready_count, 1, "READY=1 sent {ready_count} times: {seen:?}");
}
