//! The browser tracker (`clients/js`) in real headless Chromium against a real gateway process and
//! a Tansu broker; what landed is read back with the independent consumer (tests/py).
//!
//! Each test runs `clients/js/test/run.mjs` (playwright-core driving /usr/bin/chromium) with one
//! scenario. The script serves the test pages itself on another 127.0.0.1 port, so every request
//! to the gateway is cross-origin (CORS), and prints what the page saw as one JSON line.
//! Needs `cd clients/js && npm ci` and Debian's `chromium`.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::fault::GatewayProc;
use common::{consume_until, free_port, root, Broker, Topics};

fn js_dir() -> PathBuf {
    root().join("clients/js")
}

/// Chromium, node and the npm packages are required: their absence fails, with the fix.
fn require_tools() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (apt-get install -y chromium)"
    );
    assert!(
        js_dir().join("node_modules/playwright-core").is_dir(),
        "clients/js/node_modules is missing: run: cd clients/js && npm ci"
    );
}

/// A running scenario: its one line of results, and the script (holding the browser open when
/// asked to, until `finish`).
struct Scenario {
    result: Value,
    child: Child,
}

impl Scenario {
    fn run(mut args: Value, hold: bool) -> Scenario {
        require_tools();
        args["hold"] = json!(hold);
        let mut child = Command::new("node")
            .arg("test/run.mjs")
            .arg(args.to_string())
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node is required (Node.js 20)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim().is_empty() {
            let status = child.wait().unwrap();
            panic!(
                "scenario {} failed ({status}); see stderr above",
                args["scenario"]
            );
        }
        Scenario {
            result: serde_json::from_str(&line).unwrap(),
            child,
        }
    }

    /// Closes the browser and waits for the script.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "scenario script exited {status}");
    }
}

struct Setup {
    broker: Broker,
    topics: Topics,
    gw: GatewayProc,
    dir: tempfile::TempDir,
}

/// A broker with the topics, and a gateway process configured by `extra` (started if `start`).
async fn setup(extra: &[(&str, &str)], start: bool) -> Setup {
    let broker = Broker::memory();
    let topics = Topics::unique();
    topics.create(&broker.brokers()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw =
        GatewayProc::configure(&broker.brokers(), &topics, dir.path().join("spool"), extra);
    if start {
        gw.start();
        wait_ready(&gw).await;
    }
    Setup {
        broker,
        topics,
        gw,
        dir,
    }
}

async fn wait_ready(gw: &GatewayProc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.ready().await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "gateway not ready: {}",
            gw.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Setup {
    fn args(&self, scenario: &str, more: Value) -> Value {
        let mut a = json!({
            "scenario": scenario,
            "endpoint": self.gw.url(),
            "port": free_port(),
            "userDataDir": self.dir.path().join("profile"),
        });
        for (k, v) in more.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    }

    /// page_view records (and dead letters) until every id in `want` was seen; count per id.
    fn landed(&self, expect: usize, want: &[String]) -> (HashMap<String, usize>, Vec<Value>) {
        let pv = self.topics.topic("page_view");
        let got = consume_until(
            &self.broker.brokers(),
            &[&pv, &self.topics.dead_letter],
            &self.topics.dead_letter,
            expect,
            want,
        );
        let mut counts = HashMap::new();
        let mut dead = Vec::new();
        for r in got {
            if r["topic"] == self.topics.dead_letter {
                dead.push(r);
            } else {
                *counts
                    .entry(r["headers"]["event_id"].as_str().unwrap().to_owned())
                    .or_insert(0) += 1;
            }
        }
        (counts, dead)
    }
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Every id of `want` landed exactly once, and nothing else did.
fn assert_exactly_once(counts: &HashMap<String, usize>, want: &[String]) {
    let want_set: HashSet<&String> = want.iter().collect();
    assert_eq!(want_set.len(), want.len(), "the tracker gave an id twice");
    let missing: Vec<_> = want.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} events lost: {missing:?}",
        missing.len()
    );
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "events in Kafka more than once: {dups:?}");
    let extra: Vec<_> = counts.keys().filter(|id| !want_set.contains(id)).collect();
    assert!(extra.is_empty(), "unexpected events: {extra:?}");
}

/// The tracker loaded first-party from the gateway (`GET /v1/tracker.js`): every tracked event
/// lands once under the id `track` returned; a schema violation is rejected, surfaced to the
/// page (`onRejected`, `stats().rejected`) and dead-lettered, and not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tracked_event_lands_under_its_id() {
    let s = setup(&[], true).await;
    let src = format!("http://127.0.0.1:{}/v1/tracker.js", s.gw.port);
    let run = Scenario::run(s.args("basic", json!({"n": 30, "trackerSrc": src})), false);
    let r = run.result.clone();
    run.finish();
    let want = ids(&r["ids"]);
    let invalid = r["invalid"].as_str().unwrap().to_owned();
    assert_eq!(r["stats"]["accepted"], 30, "{r}");
    assert_eq!(r["stats"]["rejected"], 1, "{r}");
    assert_eq!(r["stats"]["retries"], 0, "{r}");
    assert_eq!(r["rejections"][0]["event_id"], invalid.as_str(), "{r}");
    assert_eq!(r["rejections"][0]["reason"], "schema_violation", "{r}");

    let mut all = want.clone();
    all.push(invalid.clone());
    let (counts, dead) = s.landed(31, &all);
    assert_exactly_once(&counts, &want);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["headers"]["event_id"], invalid.as_str());
    assert_eq!(dead[0]["value"]["reason"], "schema_violation");
}

/// A queue bounded at 10 events, 15 tracked at once: the 5 oldest are dropped (drop-oldest
/// policy), counted in `stats().dropped`, and the count reaches the gateway in the next bundle's
/// `context.tracker.dropped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_and_reports_the_count() {
    let s = setup(&[], true).await;
    let run = Scenario::run(s.args("bounded", json!({"n": 15, "max": 10})), false);
    let r = run.result.clone();
    run.finish();
    assert_eq!(r["stats"]["dropped"], 5, "{r}");
    assert_eq!(r["stats"]["accepted"], 10, "{r}");
    let all = ids(&r["ids"]);
    let (kept, dropped) = (all[5..].to_vec(), &all[..5]);
    let pv = s.topics.topic("page_view");
    let got = consume_until(&s.broker.brokers(), &[&pv], "", 10, &kept);
    let mut counts = HashMap::new();
    for rec in &got {
        let id = rec["headers"]["event_id"].as_str().unwrap().to_owned();
        assert!(!dropped.contains(&id), "a dropped event landed: {id}");
        assert_eq!(rec["value"]["context"]["tracker"]["dropped"], 5, "{rec}");
        *counts.entry(id).or_insert(0) += 1;
    }
    assert_exactly_once(&counts, &kept);
}

/// Track, then navigate away in the same task, with the normal sender a minute away: the page-hide
/// path (keepalive fetch within 64 KiB, sendBeacon beyond) carries every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigating_away_right_after_track_loses_nothing() {
    let s = setup(&[], true).await;
    // 300 events of ~150 bytes (~45 KB): within the 64 KiB keepalive budget.
    let run = Scenario::run(s.args("navigate", json!({"n": 300})), true);
    let want = ids(&run.result["ids"]);
    let (counts, _) = s.landed(want.len(), &want);
    run.finish();
    assert_exactly_once(&counts, &want);
}

/// 600 events (~90 KB) then leave: page hide sends what fits Chromium's 64 KiB keepalive budget
/// (sendBeacon shares it there), the rest stays in IndexedDB and the next page with the tracker
/// sends it; each event lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_the_keepalive_budget_wait_for_the_next_page() {
    let s = setup(&[], true).await;
    let run = Scenario::run(
        s.args("navigate", json!({"n": 600, "comeBack": true})),
        false,
    );
    let r = run.result.clone();
    run.finish();
    let want = ids(&r["ids"]);
    let next = r["next"]["accepted"].as_u64().unwrap();
    eprintln!("keepalive budget: {next} of 600 sent by the next page");
    // Some left on page hide, the rest with the next page, which did not resend the first part.
    assert!(next > 0 && next < 600, "{}", r["next"]);
    assert_eq!(r["next"]["sent"], next, "{}", r["next"]);
    let (counts, _) = s.landed(600, &want);
    assert_exactly_once(&counts, &want);
}

/// Gateway down: the events stay queued (IndexedDB) through a reload and a browser restart, and
/// land once the gateway is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_down_events_survive_a_reload_and_land_when_it_returns() {
    let mut s = setup(&[], false).await;
    let port = free_port();
    let run = Scenario::run(s.args("down1", json!({"n": 25, "port": port})), false);
    let r = run.result.clone();
    run.finish();
    assert_eq!(r["queuedAfterReload"], 25, "{r}");
    assert!(
        r["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == 0),
        "the gateway was down: {r}"
    );
    let want = ids(&r["ids"]);

    s.gw.start();
    wait_ready(&s.gw).await;
    let run = Scenario::run(s.args("down2", json!({"n": 25, "port": port})), false);
    let r2 = run.result.clone();
    run.finish();
    assert_eq!(r2["stats"]["accepted"], 25, "{r2}");
    let (counts, _) = s.landed(25, &want);
    assert_exactly_once(&counts, &want);
}

/// Two tabs of one origin track into the shared queue and both flush: one sends at a time, no id
/// goes on the wire twice, and (dedup window off, so a resend would show) each lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_send_each_event_once() {
    let s = setup(&[("EVENTPIPE_DEDUP__WINDOW", "0")], true).await;
    let run = Scenario::run(s.args("tabs", json!({"n": 20, "rounds": 5})), false);
    let r = run.result.clone();
    run.finish();
    let want = ids(&r["ids"]);
    assert_eq!(want.len(), 200);
    assert_eq!(r["wireDuplicates"], json!([]), "{r}");
    assert_eq!(r["wireIds"], 200, "{r}");
    let (counts, _) = s.landed(200, &want);
    assert_exactly_once(&counts, &want);
}

/// A 503 with `Retry-After: 2`, then a 429 with `Retry-After: 1` (answered by Chromium's request
/// interception, then the real gateway): each retry starts at least that long after the answer,
/// though the backoff alone would be ~10 ms; the same ids land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_503_and_429_is_a_floor() {
    let s = setup(&[], true).await;
    let run = Scenario::run(s.args("retryAfter", json!({"n": 5})), false);
    let r = run.result.clone();
    run.finish();
    let a = r["attempts"].as_array().unwrap();
    assert!(a.len() >= 3, "{r}");
    let num = |v: &Value| v.as_f64().unwrap();
    assert_eq!(a[0]["status"], 503, "{r}");
    assert_eq!(a[1]["status"], 429, "{r}");
    assert_eq!(a[2]["status"], 200, "{r}");
    assert_eq!(num(&a[0]["retryAfterMs"]), 2000.0, "{r}");
    assert_eq!(num(&a[1]["retryAfterMs"]), 1000.0, "{r}");
    let gap1 = num(&a[1]["started"]) - num(&a[0]["ended"]);
    let gap2 = num(&a[2]["started"]) - num(&a[1]["ended"]);
    eprintln!("Retry-After 2 s -> retry after {gap1} ms; Retry-After 1 s -> {gap2} ms");
    assert!(gap1 >= 2000.0, "retry after 503 came {gap1} ms later: {r}");
    assert!(gap2 >= 1000.0, "retry after 429 came {gap2} ms later: {r}");
    assert_eq!(r["stats"]["retries"], 2, "{r}");
    let want = ids(&r["ids"]);
    let (counts, _) = s.landed(5, &want);
    assert_exactly_once(&counts, &want);
}

/// A gateway with an 8 KiB body limit: a 20 KiB batch gets 413 and is split until it fits; the
/// one event too large alone is dropped as rejected (counted, surfaced), the others land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_batches_split_and_a_lone_oversize_event_is_rejected() {
    let s = setup(&[("EVENTPIPE_LIMITS__MAX_BODY_BYTES", "8192")], true).await;
    let run = Scenario::run(
        s.args("split", json!({"n": 40, "pad": 400, "hugePad": 10000})),
        false,
    );
    let r = run.result.clone();
    run.finish();
    let statuses: Vec<i64> = r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    eprintln!("413 split: statuses {statuses:?}");
    assert!(statuses.contains(&413), "no 413 seen: {statuses:?}");
    assert_eq!(r["stats"]["accepted"], 40, "{r}");
    assert_eq!(r["stats"]["rejected"], 1, "{r}");
    assert_eq!(r["rejections"][0]["event_id"], r["huge"], "{r}");
    assert_eq!(r["rejections"][0]["reason"], "body_too_large", "{r}");
    let want = ids(&r["ids"]);
    let (counts, _) = s.landed(40, &want);
    assert_exactly_once(&counts, &want);
}

/// The gateway refuses the tracker's write key (401: not in its keys file, as after a rotation or
/// a keys-file mistake): the events stay queued and are retried at the longest backoff, counted in
/// `stats().authFailures`, not rejected; once the keys file has the key (re-read on change), every
/// event lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_key_keeps_the_events_until_it_works() {
    const KEY: &str = "wk_test_tracker_0001";
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "[[keys]]\nkey = \"wk_test_other_00001\"\nname = \"other\"\n",
    )
    .unwrap();
    let s = setup(
        &[
            ("EVENTPIPE_AUTH__KEYS_FILE", keys.to_str().unwrap()),
            ("EVENTPIPE_AUTH__RELOAD_INTERVAL_MS", "100"),
        ],
        true,
    )
    .await;
    let fixed = format!("[[keys]]\nkey = \"{KEY}\"\nname = \"web\"\n");
    let run = Scenario::run(
        s.args(
            "authRefused",
            json!({"n": 12, "key": KEY, "keysFile": keys, "keysFixed": fixed}),
        ),
        false,
    );
    let r = run.result.clone();
    run.finish();
    let statuses: Vec<i64> = r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    eprintln!("refused key: statuses {statuses:?}");
    assert_eq!(&statuses[..3], &[401, 401, 401], "{r}");
    assert_eq!(r["refused"]["rejected"], 0, "{r}");
    assert_eq!(r["queuedWhileRefused"], 12, "{r}");
    assert_eq!(r["stats"]["accepted"], 12, "{r}");
    assert_eq!(r["stats"]["rejected"], 0, "{r}");
    let want = ids(&r["ids"]);
    let (counts, _) = s.landed(12, &want);
    assert_exactly_once(&counts, &want);
}

/// The tab is hidden (a tab switch) while its batch is in flight by plain fetch: that fetch goes
/// on and the batch is not resent by keepalive; no id goes on the wire twice and
/// `stats().accepted` counts each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hiding_the_tab_does_not_resend_the_batch_in_flight() {
    let s = setup(&[], true).await;
    let run = Scenario::run(s.args("hideInFlight", json!({"n": 20})), false);
    let r = run.result.clone();
    run.finish();
    assert_eq!(r["wireDuplicates"], json!([]), "{r}");
    assert_eq!(r["stats"]["sent"], 20, "{r}");
    assert_eq!(r["stats"]["accepted"], 20, "{r}");
    let want = ids(&r["ids"]);
    let (counts, _) = s.landed(20, &want);
    assert_exactly_once(&counts, &want);
}

/// A browser without BroadcastChannel, two tabs: `flush()` in the tab that does not send resolves
/// only once its events have left the shared queue (the sending tab finds them by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_broadcast_channel_waits_for_the_sending_tab() {
    let s = setup(&[], true).await;
    let run = Scenario::run(s.args("flushNoBroadcast", json!({"n": 15})), false);
    let r = run.result.clone();
    run.finish();
    assert_eq!(r["bLeader"], false, "{r}");
    assert_eq!(r["queuedAfterFlush"], 0, "{r}");
    let want = ids(&r["ids"]);
    let (counts, _) = s.landed(15, &want);
    assert_exactly_once(&counts, &want);
}
