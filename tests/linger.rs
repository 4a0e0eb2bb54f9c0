//! Clients that write their whole body before reading (browsers, Python's `http.client`) must
//! read an early 413, not a connection reset: the gateway on a real socket, an in-memory sink.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use eventpipe::config;
use eventpipe::schema::Registry;
use eventpipe::sink::memory::MemorySink;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A gateway with 4 MiB body limits on 127.0.0.1:0, on its own runtime thread.
fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let env = [
                ("EVENTPIPE_SHUTDOWN_GRACE_SECS", "0"),
                ("EVENTPIPE_LIMITS__MAX_BODY_BYTES", "4194304"),
                ("EVENTPIPE_LIMITS__MAX_DECOMPRESSED_BYTES", "4194304"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()));
            let config = config::load(None, env, vec![]).unwrap();
            let registry = Registry::load(&root().join("schemas")).unwrap();
            let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(public.local_addr().unwrap()).unwrap();
            eventpipe::server::serve_with_sink(
                config,
                registry,
                Arc::new(MemorySink::new()),
                public,
                admin,
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
            .unwrap();
        });
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

/// 8 MiB: over the 4 MiB limit, within the 2 × limit the gateway drains, and more than
/// loopback's socket buffers hold (a 2 MiB body fits in the client's 4 MiB send buffer here, so
/// it would pass even without the drain).
const BODY: usize = 8 << 20;

#[test]
fn a_client_that_writes_its_whole_body_first_reads_the_413() {
    let (addr, _stop) = start();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {BODY}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).unwrap();
    // One blocking write loop, reading nothing until the whole body is out.
    let body = vec![b' '; BODY];
    conn.write_all(&body)
        .expect("the gateway kept reading the body it refused");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .expect("the answer arrived before the connection closed (no reset)");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains(r#""error":"body_too_large""#), "{answer}");
}

#[test]
fn python_http_client_reads_the_413() {
    let (addr, _stop) = start();
    let script = r#"
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=30)
conn.request("POST", "/v1/events", body=b" " * (8 << 20), headers={"Content-Type": "application/json"})
resp = conn.getresponse()
print(resp.status, json.loads(resp.read())["error"])
"#;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python's http.client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "413 body_too_large");
}

#[test]
fn a_request_head_over_max_header_bytes_is_431() {
    let (addr, _stop) = start();
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // 40 KiB of headers, over the 32 KiB default of `limits.max_header_bytes`.
    let big = "x".repeat(40 << 10);
    let head = format!("POST /v1/events HTTP/1.1\r\nHost: gateway\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\n{{}}");
    conn.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}
