//! `eventpipe send` against a real `eventpipe serve` process and a real Tansu broker, checked with
//! the independent consumer: a large file lands complete while the gateway is `kill -9`ed and
//! restarted twice; events the gateway rejects are reported with their reasons (exit 0); a
//! gateway that never comes back makes the command give up and count what it did not deliver
//! (exit 1); a bad input line is named with its line number and never sent (exit 3).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::fault::{audit, GatewayProc, Ledger};
use common::{consume_until, eventpipe_cli, Broker, Topics};
use serde_json::{json, Value};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `eventpipe send --json` with quick retries; the caller adds the rest.
fn send_cmd(url: &str) -> Command {
    let mut c = eventpipe_cli();
    c.args(["send", "--json", "--max-backoff", "1s", "--url", url]);
    c
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// A click event line with a fixed id.
fn click(id: &str, i: usize) -> String {
    json!({"schema": "click/1", "event_id": id, "context": {"session_id": "send"},
           "data": {"element": format!("button#{i}"), "x": i}})
    .to_string()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

/// Events the gateway accepted so far (Kafka or spool), from its metrics.
fn accepted(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("eventpipe_events_total{")
                && (l.contains("outcome=\"kafka\"") || l.contains("outcome=\"spool\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (generously) until the running gateway process has accepted at least `n` events.
async fn wait_accepted(gw: &GatewayProc, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = accepted(&gw.metrics().await);
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "gateway accepted {got} events, waited for {n}: {}",
            gw.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Waits for `send` with a generous limit (it is killed and the test fails past it).
fn finish(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("send did not finish in {limit:?}: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("send stderr: {}", text(&out.stderr));
    out
}

/// Runs `send` on `file` to the end (at most 3 minutes).
fn run_send(url: &str, file: &Path, extra: &[&str]) -> Output {
    let child = send_cmd(url)
        .args(extra)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, Duration::from_secs(180))
}

async fn start(topics: &Topics, spool: PathBuf) -> (Broker, GatewayProc) {
    let broker = Broker::memory();
    topics.create(&broker.brokers()).await;
    let gw = GatewayProc::new(&broker.brokers(), topics, spool, &[]);
    (broker, gw)
}

/// A 20 000-line file fed through a FIFO (so the kills land mid-stream whatever the speed)
/// while the gateway is `kill -9`ed twice and restarted on the same port and spool: `send`
/// retries what was in flight with the same ids, exits 0, and the independent consumer finds
/// every event (duplicates allowed, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_file_lands_complete_through_two_gateway_kills() {
    let work = tempfile::tempdir().unwrap();
    let topics = Topics::unique();
    let (broker, mut gw) = start(&topics, work.path().join("spool")).await;
    let fifo = work.path().join("events.jsonl");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let all = ids(20_000);
    let child = send_cmd(&gw.url())
        .args(["--batch-size", "200", "--timeout", "120s"])
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Opening the FIFO for writing waits for `send` to open it for reading.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let mut kills = 0;
    for (part, chunk) in all.chunks(7_000).enumerate() {
        let lines: String = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| click(id, part * 7_000 + i) + "\n")
            .collect();
        writer.write_all(lines.as_bytes()).unwrap();
        writer.flush().unwrap();
        if part < 2 {
            // Some of this part accepted, the rest queued or in flight: kill now.
            wait_accepted(&gw, 2_000.0).await;
            gw.kill9();
            kills += 1;
            gw.start();
        }
    }
    drop(writer);
    let out = tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(300)))
        .await
        .unwrap();
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert_eq!(s["outcome"], "complete", "{s}");
    assert_eq!(s["events"], 20_000, "{s}");
    assert_eq!(
        s["kafka"].as_u64().unwrap() + s["spooled"].as_u64().unwrap(),
        20_000,
        "{s}"
    );
    assert_eq!(
        (s["rejected"].as_u64(), s["not_delivered"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    // Mid-stream by construction: each kill comes before the next part of the file is written.
    // (Whether it costs retries depends on whether a request was in flight at that instant.)
    assert_eq!(kills, 2);

    let ledger = Ledger::default();
    ledger.sent.lock().unwrap().extend(all.iter().cloned());
    ledger.acked.lock().unwrap().extend(all.iter().cloned());
    let found = audit(
        "send_two_kills",
        kills,
        &broker.brokers(),
        &topics.topic("click"),
        &ledger,
    );
    println!(
        "send through two kill -9: {} events, {} found, {} duplicates, {} retries",
        all.len(),
        found.seen_ids.len(),
        found.duplicates,
        s["retries"]
    );
    assert_eq!(found.acked_but_missing, 0, "{found:?}");
    assert_eq!(found.unacked_but_present, 0, "{found:?}");
}

/// Events the gateway rejects are reported with their reasons and their line numbers; the
/// command still exits 0 (rejected is an answer: not to be resent), the valid events land and
/// the rejected ones are in the dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_are_reported_with_reasons_and_exit_0() {
    let work = tempfile::tempdir().unwrap();
    let topics = Topics::unique();
    let (broker, gw) = start(&topics, work.path().join("spool")).await;
    let good = ids(20);
    let bad = ids(4);
    let mut lines: Vec<String> = good
        .iter()
        .enumerate()
        .map(|(i, id)| click(id, i))
        .collect();
    // Lines 21..24: a schema violation (no `element`) twice, an unknown schema, a bad `ts`.
    lines.push(json!({"schema": "click/1", "event_id": bad[0], "data": {"x": 1}}).to_string());
    lines.push(json!({"schema": "click/1", "event_id": bad[1], "data": {"x": 2}}).to_string());
    lines.push(json!({"schema": "nosuch/1", "event_id": bad[2], "data": {}}).to_string());
    lines.push(
        json!({"schema": "click/1", "event_id": bad[3], "ts": "yesterday", "data": {"element": "a"}})
            .to_string(),
    );
    let file = work.path().join("events.jsonl");
    write_lines(&file, &lines);
    let out = run_send(&gw.url(), &file, &[]);
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(0), "{s}");
    assert_eq!(s["outcome"], "complete", "{s}");
    assert_eq!(
        s["kafka"].as_u64().unwrap() + s["spooled"].as_u64().unwrap(),
        20,
        "{s}"
    );
    assert_eq!(s["rejected"], 4, "{s}");
    assert_eq!(s["rejected_by_reason"]["schema_violation"], 2, "{s}");
    assert_eq!(s["rejected_by_reason"]["unknown_schema"], 1, "{s}");
    assert_eq!(s["rejected_by_reason"]["invalid_envelope"], 1, "{s}");
    let rejections = s["rejections"].as_array().unwrap();
    let at_of = |id: &str| {
        rejections
            .iter()
            .find(|r| r["event_id"] == id)
            .map(|r| r["at"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(at_of(&bad[0]).ends_with(":21"), "{s}");
    assert!(at_of(&bad[3]).ends_with(":24"), "{s}");

    let mut want = good.clone();
    want.extend(bad.iter().cloned());
    let found = consume_until(
        &broker.brokers(),
        &[&topics.topic("click"), &topics.dead_letter],
        &topics.dead_letter,
        24,
        &want,
    );
    let ids_in = |topic: &str| -> Vec<String> {
        found
            .iter()
            .filter(|m| m["topic"] == topic)
            .map(|m| m["headers"]["event_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let (data, dead) = (ids_in(&topics.topic("click")), ids_in(&topics.dead_letter));
    assert!(good.iter().all(|id| data.contains(id)), "{data:?}");
    assert!(bad.iter().all(|id| dead.contains(id)), "{dead:?}");
}

/// The gateway is gone for good: `send` gives up after `--timeout` of no progress, exits 1, and
/// its summary names how many events were not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_comes_back_exits_1_and_counts_the_undelivered() {
    let work = tempfile::tempdir().unwrap();
    let topics = Topics::unique();
    let (_broker, mut gw) = start(&topics, work.path().join("spool")).await;
    let url = gw.url();
    gw.kill9();
    let file = work.path().join("events.jsonl");
    let sent = ids(500);
    let lines: Vec<String> = sent
        .iter()
        .enumerate()
        .map(|(i, id)| click(id, i))
        .collect();
    write_lines(&file, &lines);

    let rerun = work.path().join("undelivered.jsonl");
    let rerun_arg = rerun.display().to_string();
    let out = run_send(
        &url,
        &file,
        &["--timeout", "3s", "--undelivered", &rerun_arg],
    );
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert_eq!(s["outcome"], "not_delivered", "{s}");
    assert_eq!(
        (s["events"].as_u64(), s["not_delivered"].as_u64()),
        (Some(500), Some(500)),
        "{s}"
    );
    assert_eq!(
        s["kafka"].as_u64().unwrap() + s["spooled"].as_u64().unwrap(),
        0,
        "{s}"
    );
    // The undelivered events are written out with their ids, ready for a rerun.
    let written: Vec<Value> = std::fs::read_to_string(&rerun)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut written_ids: Vec<String> = written
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    written_ids.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(written_ids, want);
    assert_eq!(written[0]["schema"], "click/1");
    assert!(written[0]["data"]["element"].is_string(), "{}", written[0]);

    // The text summary says it in words.
    let out = eventpipe_cli()
        .args([
            "send",
            "--timeout",
            "2s",
            "--max-backoff",
            "1s",
            "--url",
            &url,
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("NOT DELIVERED: 500 events"), "{said}");
}

/// A line that is not an event is reported with its line number, counted, never sent, and the
/// command exits 3 (the other events are delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_json_line_is_named_with_its_line_number_and_exits_3() {
    let work = tempfile::tempdir().unwrap();
    let topics = Topics::unique();
    let (broker, gw) = start(&topics, work.path().join("spool")).await;
    let good = ids(4);
    let lines = vec![
        click(&good[0], 0),
        click(&good[1], 1),
        r#"{"schema": "click/1", "data": {"element": "cut off"#.to_string(),
        click(&good[2], 2),
        String::new(),
        r#"{"schema": "click/1", "data": {"element": "a"}, "colour": "red"}"#.to_string(),
        click(&good[3], 3),
    ];
    let file = work.path().join("events.jsonl");
    write_lines(&file, &lines);
    let out = run_send(&gw.url(), &file, &[]);
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(3), "{s}");
    assert_eq!(s["outcome"], "bad_input", "{s}");
    assert_eq!(s["bad_lines"], 2, "{s}");
    let shown = format!("{}:3: bad input, not sent: not JSON", file.display());
    assert!(text(&out.stderr).contains(&shown), "{}", text(&out.stderr));
    let examples = s["bad_line_examples"].as_array().unwrap();
    assert_eq!(examples[0]["at"], format!("{}:3", file.display()), "{s}");
    assert_eq!(examples[1]["at"], format!("{}:6", file.display()), "{s}");
    assert!(
        examples[1]["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{s}"
    );
    assert_eq!(s["events"], 4, "{s}");
    assert_eq!(
        s["kafka"].as_u64().unwrap() + s["spooled"].as_u64().unwrap(),
        4,
        "{s}"
    );
    let found = consume_until(&broker.brokers(), &[&topics.topic("click")], "", 4, &good);
    assert_eq!(found.len(), 4, "only the 4 events were sent: {found:?}");
}

/// SIGINT while requests hang (a "gateway" that accepts connections and never answers): `send`
/// stops at once with its summary, exits 130, and counts and writes out every event it read as
/// not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_send_exits_130_and_writes_out_what_it_did_not_deliver() {
    let work = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let file = work.path().join("events.jsonl");
    let lines: Vec<String> = ids(300)
        .iter()
        .enumerate()
        .map(|(i, id)| click(id, i))
        .collect();
    write_lines(&file, &lines);
    let rerun = work.path().join("undelivered.jsonl");
    let child = send_cmd(&url)
        .args(["--timeout", "0", "--undelivered"])
        .arg(&rerun)
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A request arrives: events were read and are in flight. Keep the connection open, unanswered.
    let (_conn, _) = silent.accept().unwrap();
    common::fault::signal(child.id(), "INT");
    let out = tokio::task::spawn_blocking(move || finish(child, Duration::from_secs(60)))
        .await
        .unwrap();
    let s = summary(&out);
    assert_eq!(out.status.code(), Some(130), "{s}");
    assert_eq!(s["outcome"], "interrupted", "{s}");
    let events = s["events"].as_u64().unwrap();
    assert!(events >= 1, "{s}");
    assert_eq!(s["not_delivered"].as_u64(), Some(events), "{s}");
    let written = std::fs::read_to_string(&rerun).unwrap().lines().count() as u64;
    assert_eq!(written, events, "{s}");
}
