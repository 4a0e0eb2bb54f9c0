//! A tiny service using the `Spill` policy, run as a child process by the workspace's
//! `tests/client.rs` (it is killed with `kill -9` while events are spilled, then run again).
//!
//! `spill_child URL DIR send N`: tracks N `click/1` events with a one-event memory queue, prints
//! `id <uuid>` for each, prints `ready` once every event that did not fit in memory is fsynced in
//! DIR, then waits to be killed.
//! `spill_child URL DIR drain EXPECT`: opens DIR again (its records are replayed), waits until
//! EXPECT events are delivered (60 s at most), shuts down and prints `delivered N`; exits 0 when
//! N >= EXPECT.

use std::io::Write;
use std::time::{Duration, Instant};

use eventpipe_client::{Client, QueueConfig, QueuePolicy, RetryConfig, SpillConfig};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, dir, mode, n] = &args[..] else {
        eprintln!("usage: spill_child URL DIR send|drain N");
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("N");
    let mut retry = RetryConfig::default();
    retry.base = Duration::from_millis(50);
    retry.max_backoff = Duration::from_millis(500);
    let client = Client::builder(url)
        .batch_max_events(1)
        .concurrency(1)
        .linger(Duration::ZERO)
        .retry(retry)
        .queue(QueueConfig::new(
            1,
            1 << 20,
            QueuePolicy::Spill(SpillConfig::new(dir)),
        ))
        .build()
        .expect("client");
    let mut out = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(60);
    match mode.as_str() {
        "send" => {
            for k in 0..n {
                let id = client.track("click/1", serde_json::json!({"element": format!("b{k}")}));
                writeln!(out, "id {id}").unwrap();
            }
            // Everything but what fits in memory (one in flight, one queued) goes to disk.
            while client.stats().spilled < n.saturating_sub(2) {
                assert!(
                    Instant::now() < deadline,
                    "not spilled: {:?}",
                    client.stats()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::future::pending::<()>().await;
        }
        "drain" => {
            let delivered = || {
                let s = client.stats();
                s.accepted_kafka + s.accepted_spool
            };
            while delivered() < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let report = client.shutdown(Duration::from_secs(10)).await;
            writeln!(out, "delivered {} report {report:?}", delivered()).unwrap();
            std::process::exit(if delivered() >= n { 0 } else { 1 });
        }
        _ => std::process::exit(2),
    }
}
