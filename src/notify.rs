//! Readiness to systemd (`Type=notify`): the sd_notify protocol without libsystemd — one datagram
//! per state change to the unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name
//! written with a leading `@`).
//!
//! What is sent and when (`server::serve_with_sink`):
//! - `READY=1` once both listeners are bound, the admin listener serves, and `/readyz` would answer
//!   ready — the same check (`admin::Readiness`), so "systemctl start returned" and "a load
//!   balancer may send traffic" mean the same thing. With the spool on (the default) that is at
//!   once: an empty or healthy spool accepts events while Kafka is still being reached. With
//!   `spool.enabled = false` and Kafka away, or a spool that is full or too old, it waits (a
//!   `STATUS=` line says why) and systemd's `TimeoutStartSec` decides; nothing is lost by a restart
//!   then, the spool is on disk.
//! - `STOPPING=1` when shutdown starts (SIGTERM), then a `STATUS=` line per shutdown step, which
//!   `systemctl status` shows.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call does nothing. A send
//! that fails is logged, never fatal: notification is advice to the supervisor, not part of
//! serving.

use std::ffi::OsStr;
use std::io;
use std::time::Duration;

/// Where notifications go: `$NOTIFY_SOCKET`, or nowhere.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<std::ffi::OsString>,
}

impl Notifier {
    /// The supervisor named by `$NOTIFY_SOCKET`; a no-op notifier when it is unset or empty.
    pub fn from_env() -> Notifier {
        Notifier::to(std::env::var_os("NOTIFY_SOCKET").unwrap_or_default())
    }

    /// Notifications to `socket` (a path, or `@name` for an abstract socket); empty: none.
    pub fn to(socket: impl Into<std::ffi::OsString>) -> Notifier {
        let socket = socket.into();
        Notifier {
            socket: (!socket.is_empty()).then_some(socket),
        }
    }

    /// Whether anything is listening for notifications.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments); a failure is logged.
    pub fn send(&self, state: &str) {
        if let Some(socket) = &self.socket {
            if let Err(e) = send_to(socket, state) {
                tracing::warn!(error = %e, socket = ?socket, "sd_notify failed");
            }
        }
    }

    /// Sends `READY=1` (with `status`) the first time `is_ready` holds, polling every `every`.
    /// While it does not, a `STATUS=` line says the gateway is waiting.
    pub async fn ready_when(&self, is_ready: impl Fn() -> bool, every: Duration, status: &str) {
        if !self.enabled() {
            return;
        }
        let mut said_waiting = false;
        while !is_ready() {
            if !said_waiting {
                self.send("STATUS=listening; waiting until /readyz is true (schemas loaded, Kafka or the spool accepting)");
                said_waiting = true;
            }
            tokio::time::sleep(every).await;
        }
        self.send(&format!("READY=1\nSTATUS={status}"));
    }
}

/// One datagram to the socket named `socket`.
fn send_to(socket: &OsStr, state: &str) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::net::UnixDatagram;
        let sock = UnixDatagram::unbound()?;
        let name = socket.as_bytes();
        let sent = match name.strip_prefix(b"@") {
            Some(abstract_name) => send_abstract(&sock, abstract_name, state.as_bytes())?,
            None => sock.send_to(state.as_bytes(), std::path::Path::new(socket))?,
        };
        if sent != state.len() {
            return Err(io::Error::other("short datagram write"));
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = (socket, state);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "sd_notify needs unix sockets",
        ))
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(
    sock: &std::os::unix::net::UnixDatagram,
    name: &[u8],
    msg: &[u8],
) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn send_abstract(
    _sock: &std::os::unix::net::UnixDatagram,
    _name: &[u8],
    _msg: &[u8],
) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets are Linux-only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn receiver(path: &std::path::Path) -> UnixDatagram {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        sock
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("no notification arrived");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_a_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = receiver(&path);
        Notifier::to(path.as_os_str()).send("STOPPING=1");
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket_written_with_at() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("eventpipe-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Notifier::to(format!("@{name}")).send("READY=1");
        assert_eq!(recv(&sock), "READY=1");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::to("");
        assert!(!n.enabled());
        n.send("READY=1");
        // A socket that is gone is logged, not a panic or an error to the caller.
        Notifier::to("/nonexistent/eventpipe/notify.sock").send("READY=1");
    }

    #[tokio::test]
    async fn ready_is_sent_only_once_the_check_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = receiver(&path);
        let ready = Arc::new(AtomicBool::new(false));
        let notifier = Notifier::to(path.as_os_str());
        let task = tokio::spawn({
            let ready = ready.clone();
            async move {
                notifier
                    .ready_when(
                        move || ready.load(Ordering::SeqCst),
                        Duration::from_millis(10),
                        "serving",
                    )
                    .await
            }
        });
        // Not ready yet: the first datagram says it is waiting, not READY=1.
        let first = tokio::task::spawn_blocking({
            let sock = sock.try_clone().unwrap();
            move || recv(&sock)
        })
        .await
        .unwrap();
        assert!(first.starts_with("STATUS="), "{first}");
        assert!(!first.contains("READY=1"), "{first}");
        ready.store(true, Ordering::SeqCst);
        task.await.unwrap();
        let second = recv(&sock);
        assert_eq!(second, "READY=1\nSTATUS=serving");
    }
}
