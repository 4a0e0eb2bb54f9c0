//! Hostile input against a real gateway process: each attack an anonymous client can send, what
//! the gateway answers, and what it costs in memory. After all of them the host must still be
//! ready, its spool empty (nothing poisoned or stuck), and a good bundle must land in Kafka.
//!
//! `cargo test --test attacks -- --nocapture` prints the table that RELIABILITY.md quotes
//! ("Hostile input").

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::fault::GatewayProc;
use common::{consume_until, Broker, Topics};
use serde_json::{json, Value};

/// One HTTP/1.1 exchange over a raw socket: the whole request is written before anything is
/// read, as browsers and Python's http.client do.
struct Answer {
    status: u16,
    headers: String,
    body: Value,
}

fn exchange(port: u16, head: &str, body: &[u8]) -> Result<Answer, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = head.as_bytes().to_vec();
    request.extend_from_slice(body);
    s.write_all(&request).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Answer, String> {
    let text = String::from_utf8_lossy(raw);
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response ({} bytes)", raw.len()))?;
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = serde_json::from_str(body.trim()).unwrap_or(Value::String(body.to_string()));
    Ok(Answer {
        status,
        headers: headers.to_ascii_lowercase(),
        body,
    })
}

fn post(port: u16, extra_headers: &str, body: &[u8]) -> Result<Answer, String> {
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    exchange(port, &head, body)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn page_view(id: &str) -> Value {
    json!({"schema": "page_view/1", "event_id": id, "data": {"url": "https://example.com/"}})
}

/// Peak and current resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn reasons(a: &Answer) -> Vec<String> {
    a.body["rejected"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| x["reason"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn summary(a: &Result<Answer, String>) -> String {
    match a {
        Err(e) => format!("no answer: {e}"),
        Ok(a) => {
            if let Some(code) = a.body["error"].as_str() {
                format!("{} {code}", a.status)
            } else {
                let rejected = reasons(a);
                format!(
                    "{} accepted {} rejected {:?}",
                    a.status, a.body["accepted"], rejected
                )
            }
        }
    }
}

/// Records of the spool directory still waiting for replay.
fn spooled_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name().to_string_lossy().ends_with(".seg")
                        && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cannot_poison_amplify_or_stall_the_gateway() {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let spool = tempfile::tempdir().unwrap();
    let gw = GatewayProc::new(
        &broker.brokers(),
        &topics,
        spool.path().to_path_buf(),
        &[
            ("EVENTPIPE_LIMITS__HEADER_TIMEOUT_MS", "1000"),
            ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "3000"),
            ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "2000"),
            // Large enough that a body of twice the limit does not fit in loopback's socket
            // buffers: without lingering close its writer would see a reset.
            ("EVENTPIPE_LIMITS__MAX_BODY_BYTES", "4194304"),
        ],
    );
    let port = gw.port;
    let pid = gw.pid();
    let mut table: Vec<(String, String, u64)> = Vec::new();
    let mut row = |name: &str, answer: String| {
        let (hwm, _) = memory_mib(pid);
        table.push((name.to_string(), answer, hwm));
    };

    // 1. A 700 KB event id: rejected alone, its dead letter must still fit in Kafka.
    let poison = json!({"events": [
        {"schema": "page_view/1", "event_id": "x".repeat(700_000), "data": {"url": "https://e/"}},
        page_view(&uuid::Uuid::new_v4().to_string()),
    ]});
    let a = post(port, "", poison.to_string().as_bytes());
    row("700 KB event_id", summary(&a));
    let a = a.expect("answer to the poison event id");
    assert_eq!(
        a.status, 200,
        "poison id must not push the request into the spool"
    );
    assert_eq!(
        a.body["accepted"], 1,
        "the good event of the batch survives"
    );
    let id = a.body["rejected"][0]["event_id"].as_str().unwrap_or("");
    assert!(
        id.len() <= 128,
        "a huge id is echoed back cut: {} bytes",
        id.len()
    );

    // 2. A big batch context copied into every event: refused before any record is built.
    let ctx = json!({"context": {"blob": "y".repeat(300_000)},
        "events": (0..500).map(|_| page_view(&uuid::Uuid::new_v4().to_string())).collect::<Vec<_>>()});
    let gz = gzip(ctx.to_string().as_bytes());
    let a = post(port, "content-encoding: gzip\r\n", &gz);
    row(
        &format!("300 KB batch context x 500 events ({} B gzipped)", gz.len()),
        summary(&a),
    );
    let a = a.expect("answer to the amplifying context");
    assert_eq!(a.status, 413, "{}", a.body);

    // 3. A decompression bomb: 64 MiB of zeros.
    let bomb = gzip(&vec![b' '; 64 << 20]);
    let a = post(port, "content-encoding: gzip\r\n", &bomb);
    row(
        &format!("gzip bomb, 64 MiB in {} KB", bomb.len() >> 10),
        summary(&a),
    );
    assert_eq!(a.expect("answer to the bomb").status, 413);

    // 4. A 30,000-level event next to a good one: rejected alone.
    let deep = format!(
        r#"{{"events":[{{"schema":"page_view/1","data":{}{}}},{}]}}"#,
        "[".repeat(30_000),
        "]".repeat(30_000),
        page_view(&uuid::Uuid::new_v4().to_string())
    );
    let a = post(port, "", deep.as_bytes());
    row("event nested 30,000 levels", summary(&a));
    let a = a.expect("answer to the deep event");
    assert_eq!((a.status, a.body["accepted"].clone()), (200, json!(1)));

    // 5. Too many events.
    let many = json!({"events": (0..501).map(|_| json!({})).collect::<Vec<_>>()});
    let a = post(port, "", many.to_string().as_bytes());
    row("501 events", summary(&a));
    assert_eq!(a.expect("answer to 501 events").status, 413);

    // 6. A body twice the limit, written in full before reading: the 413 must reach the client.
    let big = vec![b' '; 8 << 20];
    let a = post(port, "", &big);
    row(
        "8 MiB body (limit 4 MiB), written before reading",
        summary(&a),
    );
    let a = a.expect("the client must read its 413, not a reset");
    assert_eq!(a.status, 413);
    assert_eq!(a.body["error"], "body_too_large");

    // 7. Not UTF-8.
    let a = post(port, "", b"{\"events\":[\xff\xfe]}");
    row("body not UTF-8", summary(&a));
    assert_eq!(a.expect("answer to bad UTF-8").status, 400);

    // 8. A body that never finishes: 408 in the error shape, with CORS.
    let started = Instant::now();
    let slow = (|| -> Result<Answer, String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = "POST /v1/events HTTP/1.1\r\nhost: x\r\norigin: https://shop.example\r\n\
                    content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"events\":[";
        s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_response(&raw)
    })();
    row("body stalls after 10 bytes", summary(&slow));
    let slow = slow.expect("a stalled body is answered");
    assert_eq!(slow.status, 408);
    assert_eq!(slow.body["error"], "request_timeout", "{}", slow.body);
    assert!(
        slow.headers.contains("access-control-allow-origin"),
        "408 without CORS headers: {}",
        slow.headers
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // 9. A request head that never finishes (slowloris): the connection is cut.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(_) => row("request head never finished", "connection closed".into()),
        Err(e) => panic!("a stalled request head kept its connection: {e}"),
    }

    // Afterwards: ready, nothing stuck in the spool, and a good bundle lands in Kafka.
    let good_id = uuid::Uuid::new_v4().to_string();
    let a = post(
        port,
        "",
        json!({"events": [page_view(&good_id)]})
            .to_string()
            .as_bytes(),
    )
    .expect("a good bundle after the attacks");
    assert_eq!(a.status, 200, "{}", a.body);
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", gw.admin_port))
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200, "the host must stay ready");
    assert_eq!(
        spooled_segments(spool.path()),
        0,
        "nothing may be waiting in the spool with Kafka healthy"
    );
    let found = consume_until(
        &broker.brokers(),
        &[&topics.topic("page_view")],
        &topics.dead_letter,
        1,
        std::slice::from_ref(&good_id),
    );
    assert!(found
        .iter()
        .any(|e| e["value"]["event_id"] == good_id.as_str()));

    let (hwm, rss) = memory_mib(pid);
    println!("\n| attack | answer | gateway peak RSS after it (MiB) |\n|---|---|---:|");
    for (name, answer, peak) in &table {
        println!("| {name} | {answer} | {peak} |");
    }
    println!("final: peak {hwm} MiB, now {rss} MiB");
    assert!(hwm < 1024, "peak RSS {hwm} MiB");
}
