//! A flood of large gzip bodies against the real gateway binary: memory stays under a bound
//! derived from the limits, `/healthz` keeps answering, and every client gets an HTTP answer
//! (2xx, 413, or 503 + Retry-After), never a reset.
//!
//! No broker: the gateway spools. The events are schema violations and dead letters are capped
//! at 256 bytes, so what is written is small and the memory measured is the decoding's: 1 MiB of
//! gzip on the wire, just under 8 MiB decompressed, 500 events parsed and validated.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault::GatewayProc;
use common::{free_port, Topics};

const CLIENTS: usize = 64;
const REQUESTS_PER_CLIENT: usize = 4;
/// The test's in-flight budget: one maximal request (1 + 2 × 8 MiB) plus change.
const MAX_INFLIGHT_BYTES: u64 = 32 << 20;

/// RSS bound: an idle gateway (binary, librdkafka, runtime, schemas: 63 MiB measured for the
/// debug build) taken as 64 MiB, plus three times the in-flight budget (what is charged, plus
/// what is not: allocator slack and pages not yet returned, per-event values being validated,
/// answers being written; 2.0× measured), plus 64 KiB of hyper buffers per connection.
fn rss_bound() -> u64 {
    (64 << 20) + 3 * MAX_INFLIGHT_BYTES + CLIENTS as u64 * (64 << 10)
}

/// 500 server_log events whose `level` violates the schema, ~16 KB each, with a 2-letter
/// alphabet so the gzip is about 1/8 of the JSON.
fn flood_body() -> (Vec<u8>, usize) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut message = String::with_capacity(16_200);
    let events: Vec<String> = (0..500)
        .map(|_| {
            message.clear();
            for _ in 0..16_200 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                message.push(if seed.is_multiple_of(7) { 'b' } else { 'a' });
            }
            format!(
                r#"{{"schema":"server_log/1","event_id":"{}","data":{{"service":"flood","level":"loud","message":"{message}"}}}}"#,
                uuid::Uuid::new_v4()
            )
        })
        .collect();
    let json = format!(r#"{{"events":[{}]}}"#, events.join(","));
    assert!(json.len() < 8 << 20, "{}", json.len());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20, "gzip is {} bytes", gz.len());
    (gz, json.len())
}

/// One `/healthz` probe on a fresh connection; Err when it takes longer than 2 s or fails.
fn probe(admin_port: u16) -> Result<(), String> {
    let mut conn = TcpStream::connect(("127.0.0.1", admin_port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| format!("no answer within 2 s: {e}"))?;
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(answer)
    }
}

fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_gzip_bodies_is_bounded_and_liveness_keeps_answering() {
    let (body, json_len) = flood_body();
    let spool = tempfile::tempdir().unwrap();
    let inflight = MAX_INFLIGHT_BYTES.to_string();
    let gw = GatewayProc::new(
        &format!("127.0.0.1:{}", free_port()), // nothing listens: Kafka is down, the spool takes it
        &Topics::unique(),
        spool.path().to_path_buf(),
        &[
            ("EVENTPIPE_LIMITS__MAX_INFLIGHT_BYTES", inflight.as_str()),
            ("EVENTPIPE_LIMITS__DEAD_LETTER_MAX_BYTES", "256"),
            ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "60000"),
        ],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let admin_port = gw.admin_port;
    let prober = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut probes = 0;
            while !stop.load(Ordering::Relaxed) {
                probes += 1;
                let started = Instant::now();
                if let Err(e) = probe(admin_port) {
                    failures.push(format!("after {:?}: {e}", started.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (probes, failures)
        })
    };

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_gzip()
        .build()
        .unwrap();
    let body = bytes::Bytes::from(body);
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url, body, outcomes) =
                (http.clone(), gw.url(), body.clone(), outcomes.clone());
            tokio::spawn(async move {
                for _ in 0..REQUESTS_PER_CLIENT {
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("content-encoding", "gzip")
                        .body(body.clone())
                        .send()
                        .await;
                    let outcome = match sent {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let retry_after = resp.headers().contains_key("retry-after");
                            let text = resp.text().await.unwrap_or_default();
                            let code = serde_json::from_str::<serde_json::Value>(&text)
                                .ok()
                                .and_then(|v| v["error"].as_str().map(str::to_owned))
                                .unwrap_or_default();
                            Ok((status, retry_after, code))
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    outcomes.lock().unwrap().push(outcome);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (probes, probe_failures) = prober.join().unwrap();
    let peak = peak_rss_bytes(gw.pid());
    let outcomes = outcomes.lock().unwrap().clone();

    let mut by_answer = std::collections::BTreeMap::<String, usize>::new();
    for o in &outcomes {
        let key = match o {
            Ok((status, _, code)) => format!("{status} {code}"),
            Err(e) => format!("transport error: {e}"),
        };
        *by_answer.entry(key).or_default() += 1;
    }
    eprintln!(
        "flood: {} requests of {} B gzip ({json_len} B JSON); answers {by_answer:?}; \
         peak RSS {} MiB (bound {} MiB); {probes} /healthz probes",
        outcomes.len(),
        body.len(),
        peak >> 20,
        rss_bound() >> 20
    );
    assert!(
        probe_failures.is_empty(),
        "/healthz missed during the flood: {probe_failures:?}\n{}",
        gw.log_tail()
    );
    for o in &outcomes {
        match o {
            Ok((200 | 202 | 413, _, _)) => {}
            Ok((503, retry_after, code)) => {
                assert!(*retry_after, "503 {code} without Retry-After");
                assert!(code == "overloaded" || code == "unavailable", "{code}");
            }
            other => panic!("unexpected answer {other:?}; all: {by_answer:?}"),
        }
    }
    assert!(
        by_answer.keys().any(|k| k.starts_with("503 overloaded")),
        "the flood never reached the in-flight limit: {by_answer:?}"
    );
    assert!(
        by_answer
            .keys()
            .any(|k| k.starts_with("200") || k.starts_with("202")),
        "nothing was admitted: {by_answer:?}"
    );
    assert!(
        peak <= rss_bound(),
        "peak RSS {} MiB over the bound {} MiB",
        peak >> 20,
        rss_bound() >> 20
    );
}
