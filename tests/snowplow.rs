//! Snowplow's own trackers against a real gateway and a real broker, checked with the
//! independent consumer: the Python tracker (PyPI `snowplow-tracker`), the Node tracker
//! (`@snowplow/node-tracker`) and the browser tracker (`@snowplow/browser-tracker`) in headless
//! Chromium, each pointed at the gateway by its documented endpoint options, over POST and GET.
//! Self-describing events and contexts name schemas of a committed Iglu-layout repository
//! (`tests/sdk/snowplow/iglu`). Plus the native pixel, from Chromium and over plain HTTP.
//!
//! Needs: `pip install snowplow-tracker==1.1.0`, `cd tests/sdk/snowplow && npm ci` (run here
//! when `node_modules` is missing), Chromium at /usr/bin/chromium. Missing ones fail with the
//! command to install them.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use common::{Broker, Gateway, Topics};
use serde_json::{json, Value};

const CHECKOUT: &str = "iglu:com.acme/checkout/jsonschema/1-0-0";
const USER: &str = "iglu:com.acme/user/jsonschema/1-0-0";
/// The trackers send this in a self-describing event: its base64 holds `+`/`/` (`-`/`_`).
const NOTE: &str = "~~~???~~>>>??~";

struct Setup {
    broker: Broker,
    topics: Topics,
    gw: Gateway,
    _schemas: tempfile::TempDir,
}

/// A broker, topics and a gateway with Snowplow on and the shipped schemas plus the Iglu fixtures.
async fn setup() -> Setup {
    setup_with(&[]).await
}

/// [`setup`] with more config (`EVENTPIPE_*` variables).
async fn setup_with(extra: &[(&str, &str)]) -> Setup {
    let broker = Broker::memory();
    let topics = Topics::unique();
    let schemas = tempfile::tempdir().unwrap();
    common::copy_dir(&common::root().join("schemas"), schemas.path());
    common::copy_dir(&sdk_dir().join("iglu"), schemas.path());
    topics.create_for(&broker.brokers(), schemas.path()).await;
    let dir = schemas.path().display().to_string();
    let mut env = vec![
        ("EVENTPIPE_SCHEMAS", dir.as_str()),
        ("EVENTPIPE_SNOWPLOW__ENABLED", "true"),
    ];
    env.extend_from_slice(extra);
    let config = common::config(&broker.brokers(), &topics, &env);
    let gw = Gateway::start(config).await;
    gw.wait_ready().await;
    Setup {
        broker,
        topics,
        gw,
        _schemas: schemas,
    }
}

fn sdk_dir() -> PathBuf {
    common::root().join("tests/sdk/snowplow")
}

/// `npm ci` once when the pinned packages are not installed.
fn npm_packages() {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = sdk_dir();
    let installed = [
        "@snowplow/node-tracker",
        "@snowplow/browser-tracker",
        "playwright-core",
    ]
    .iter()
    .all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .is_file()
    });
    if *done || installed {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "installing the Snowplow npm packages failed ({status:?}); install node 20 + npm, then: cd tests/sdk/snowplow && npm ci"
    );
    *done = true;
}

/// Runs a driver script (off the runtime the gateway serves on) and parses its JSON lines.
async fn run(program: &str, script: &str, args: Vec<String>) -> Vec<Value> {
    let (program, script) = (program.to_owned(), sdk_dir().join(script));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&program)
            .arg(&script)
            .args(&args)
            .current_dir(sdk_dir())
            .output()
            .unwrap_or_else(|e| panic!("{program} is required to run {}: {e}", script.display()))
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stderr}",
        out.status,
        script = script_name(&stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn script_name(stderr: &str) -> &'static str {
    if stderr.contains("MISSING-SDK") {
        "a tracker is not installed (see the install command below)"
    } else {
        "the tracker script"
    }
}

/// What a tracker script said it sent.
#[derive(Debug)]
struct Sent {
    kind: String,
    method: String,
    eid: String,
}

fn sent(lines: &[Value]) -> Vec<Sent> {
    lines
        .iter()
        .filter(|l| l.get("eid").is_some())
        .map(|l| Sent {
            kind: l["kind"].as_str().unwrap().into(),
            method: l["method"].as_str().unwrap().into(),
            eid: l["eid"].as_str().unwrap().into(),
        })
        .collect()
}

/// Reads every topic the Snowplow events go to, until each sent eid was seen.
fn landed(s: &Setup, sent: &[Sent]) -> Vec<Value> {
    let topics: Vec<String> = [
        "snowplow_page_view",
        "snowplow_page_ping",
        "snowplow_structured",
        "snowplow_transaction",
        "snowplow_transaction_item",
        "com.acme.checkout",
    ]
    .iter()
    .map(|t| s.topics.topic(t))
    .chain([s.topics.dead_letter.clone()])
    .collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let want: Vec<String> = sent.iter().map(|e| e.eid.clone()).collect();
    common::consume_until(
        &s.broker.brokers(),
        &refs,
        &s.topics.dead_letter,
        sent.len(),
        &want,
    )
}

/// The one record of `eid` (fails on none or a duplicate).
fn one<'a>(records: &'a [Value], eid: &str) -> &'a Value {
    let found: Vec<&Value> = records
        .iter()
        .filter(|r| r["headers"]["event_id"] == eid)
        .collect();
    assert_eq!(found.len(), 1, "eid {eid}: {found:#?}");
    found[0]
}

/// Checks what every tracker's events must come to; returns the records by kind and method.
fn check_common(s: &Setup, sent: &[Sent], records: &[Value]) -> HashMap<String, Value> {
    let mut by = HashMap::new();
    for e in sent {
        let r = one(records, &e.eid);
        let topic = r["topic"].as_str().unwrap();
        let v = &r["value"];
        let what = format!("{} over {}: {r}", e.kind, e.method);
        match e.kind.as_str() {
            "pv" => {
                assert_eq!(topic, s.topics.topic("snowplow_page_view"), "{what}");
                assert_eq!(v["schema"], "snowplow_page_view/1", "{what}");
                assert!(
                    v["data"]["url"].as_str().unwrap().starts_with("http"),
                    "{what}"
                );
            }
            "se" | "retried" => {
                assert_eq!(topic, s.topics.topic("snowplow_structured"), "{what}");
                assert!(v["data"]["category"].is_string(), "{what}");
            }
            "ue_valid" => {
                assert_eq!(topic, s.topics.topic("com.acme.checkout"), "{what}");
                assert_eq!(v["schema"], "com.acme.checkout/1", "{what}");
                assert_eq!(r["headers"]["schema"], CHECKOUT, "{what}");
                assert!(v["data"]["total"].is_number(), "{what}");
                let contexts = v["context"]["contexts"].as_array().unwrap();
                assert!(contexts.iter().any(|c| c["schema"] == USER), "{what}");
            }
            "ue_invalid" => {
                assert_eq!(topic, s.topics.dead_letter, "{what}");
                assert_eq!(v["reason"], "schema_violation", "{what}");
                assert!(v["path"].as_str().unwrap().starts_with("/data"), "{what}");
                assert_eq!(r["headers"]["reason"], "schema_violation", "{what}");
            }
            "pp" => {
                assert_eq!(topic, s.topics.topic("snowplow_page_ping"), "{what}");
                assert!(v["data"]["max_y"].is_i64(), "{what}");
            }
            "tr" => {
                assert_eq!(topic, s.topics.topic("snowplow_transaction"), "{what}");
                assert!(v["data"]["total"].is_number(), "{what}");
            }
            "ti" => {
                assert_eq!(topic, s.topics.topic("snowplow_transaction_item"), "{what}");
                assert!(v["data"]["quantity"].is_i64(), "{what}");
            }
            "ctx_invalid" => {
                assert_eq!(topic, s.topics.dead_letter, "{what}");
                assert_eq!(v["reason"], "schema_violation", "{what}");
                assert_eq!(v["path"], "/context/contexts/0/data/tier", "{what}");
            }
            other => panic!("unexpected kind {other}"),
        }
        if !e.kind.ends_with("_invalid") {
            // Atomic fields in the context, and the event time from dtm.
            assert!(v["context"]["snowplow"]["tv"].is_string(), "{what}");
            assert!(v["context"]["snowplow"]["p"].is_string(), "{what}");
            assert!(v["ts"].as_str().unwrap().ends_with('Z'), "{what}");
            assert_eq!(
                r["key"], v["context"]["visitor_id"],
                "partition key: {what}"
            );
        }
        by.insert(format!("{}/{}", e.kind, e.method), r.clone());
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tracker_posts_and_gets_through_eventpipe() {
    let s = setup().await;
    let lines = run("python3", "python_tracker.py", vec![s.gw.addr.to_string()]).await;
    let sent = sent(&lines);
    assert_eq!(sent.len(), 8, "{lines:?}");
    let done = lines.last().unwrap();
    assert_eq!(done["attempts"], 2, "the lost answer was retried: {done}");
    assert_eq!(
        done["failed_batches"], 1,
        "only the lost answer failed: {done}"
    );
    let records = landed(&s, &sent);
    let by = check_common(&s, &sent, &records);
    let pv = &by["pv/post"]["value"];
    assert_eq!(
        pv["data"],
        json!({"url": "https://py.example/home", "title": "Home", "referrer": "https://ref.example/"})
    );
    assert_eq!(pv["context"]["visitor_id"], "py-user-1");
    assert_eq!(pv["context"]["snowplow"]["aid"], "py-app");
    assert_eq!(pv["context"]["snowplow"]["lang"], "de-DE");
    assert!(pv["context"]["snowplow"]["tv"]
        .as_str()
        .unwrap()
        .starts_with("py-"));
    assert_eq!(by["pv/get"]["value"]["data"]["title"], "Über");
    assert_eq!(
        by["se/post"]["value"]["data"],
        json!({"category": "shop", "action": "add", "label": "red shoes", "property": "sku-42", "value": 2.5})
    );
    assert_eq!(by["se/get"]["value"]["data"]["value"], 1);
    let ue = &by["ue_valid/post"]["value"];
    assert_eq!(
        ue["data"],
        json!({"total": 59.9, "currency": "EUR", "note": NOTE})
    );
    assert_eq!(
        ue["context"]["contexts"][0],
        json!({"schema": USER, "data": {"tier": "pro"}})
    );
    assert_eq!(by["ue_invalid/post"]["value"]["path"], "/data/total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tracker_posts_and_gets_through_eventpipe() {
    npm_packages();
    let s = setup().await;
    let lines = run("node", "node_tracker.mjs", vec![s.gw.addr.to_string()]).await;
    let sent = sent(&lines);
    assert_eq!(sent.len(), 10, "{lines:?}");
    let done = lines.last().unwrap();
    assert_eq!(done["attempts"], 2, "the lost answer was retried: {done}");
    assert_eq!(done["failures"].as_array().unwrap().len(), 1, "{done}");
    let records = landed(&s, &sent);
    let by = check_common(&s, &sent, &records);
    let pv = &by["pv/post"]["value"];
    assert_eq!(pv["data"]["title"], "A");
    assert_eq!(pv["context"]["visitor_id"], "node-user-1");
    assert_eq!(pv["context"]["snowplow"]["duid"], "node-duid-1");
    assert_eq!(pv["context"]["snowplow"]["aid"], "node-app");
    assert_eq!(
        by["pv/get"]["value"]["data"]["url"],
        "https://node.example/get?x=1&y=é"
    );
    assert_eq!(by["se/post"]["value"]["data"]["value"], 3);
    // ue_pr/co as plain JSON over POST, ue_px/cx base64 over GET.
    assert_eq!(
        by["ue_valid/post"]["value"]["data"],
        json!({"total": 12.5, "currency": "USD"})
    );
    assert_eq!(
        by["ue_valid/get"]["value"]["data"],
        json!({"total": 7, "note": NOTE})
    );
    assert_eq!(
        by["ue_valid/get"]["value"]["context"]["contexts"][0]["data"],
        json!({"tier": "free"})
    );
    assert_eq!(by["ue_invalid/post"]["value"]["path"], "/data/total");
    assert_eq!(
        by["pp/post"]["value"]["data"],
        json!({"url": "https://node.example/a", "min_x": 1, "max_x": 10, "min_y": 5, "max_y": 900})
    );
    assert_eq!(
        by["tr/post"]["value"]["data"],
        json!({"order_id": "o-1", "total": 59.9, "tax": 9.98, "city": "Lyon", "currency": "EUR"})
    );
    assert_eq!(
        by["ti/post"]["value"]["data"],
        json!({"order_id": "o-1", "sku": "sku-42", "name": "Red shoes", "price": 29.95, "quantity": 2})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_tracker_in_chromium_and_the_native_pixel() {
    npm_packages();
    chromium();
    // The page's origin is the one CORS origin configured (none by default).
    let page_port = common::free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let origins = format!("[\"{page_origin}\"]");
    let s = setup_with(&[("EVENTPIPE_SNOWPLOW__CORS_ORIGINS", &origins)]).await;
    let pixel =
        |event: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(event.to_string());
    let (good, bad) = (
        "5e0c8d3a-4a8e-4f7f-9d61-9c7f3f0b1a01",
        "5e0c8d3a-4a8e-4f7f-9d61-9c7f3f0b1a02",
    );
    let pixels = json!([
        pixel(
            json!({"schema": "click/1", "event_id": good, "context": {"visitor_id": "mail-7"}, "data": {"element": "a#open"}})
        ),
        pixel(json!({"schema": "click/1", "event_id": bad, "data": {}})),
    ]);
    let lines = run(
        "node",
        "browser_tracker.mjs",
        vec![
            s.gw.addr.to_string(),
            pixels.to_string(),
            page_port.to_string(),
        ],
    )
    .await;
    let sent = sent(&lines);
    assert_eq!(sent.len(), 6, "{lines:?}");
    for l in lines.iter().filter(|l| l.get("pixel").is_some()) {
        assert_eq!(
            (l["loaded"].as_bool(), l["width"].as_u64()),
            (Some(true), Some(1)),
            "{l}"
        );
    }
    let origin = lines.last().unwrap()["origin"].as_str().unwrap().to_owned();
    assert_eq!(origin, page_origin);
    let records = landed(&s, &sent);
    let by = check_common(&s, &sent, &records);
    let pv = &by["pv/post"]["value"];
    assert_eq!(pv["data"]["url"], format!("{origin}/"));
    assert_eq!(pv["data"]["title"], "Shop");
    assert_eq!(pv["context"]["visitor_id"], "web-user-1");
    assert_eq!(
        pv["enrichment"]["origin"], origin,
        "a cross-origin, credentialed request"
    );
    // The tracker's own web_page context has no schema here: kept unvalidated.
    let contexts = pv["context"]["contexts"].as_array().unwrap();
    assert!(
        contexts
            .iter()
            .any(|c| c["schema"].as_str().unwrap().contains("/web_page/")),
        "{contexts:?}"
    );
    assert_eq!(
        by["ue_valid/post"]["value"]["data"],
        json!({"total": 99, "currency": "GBP"})
    );
    assert_eq!(
        by["ue_valid/get"]["value"]["data"],
        json!({"total": 5, "note": NOTE})
    );
    // The pixel's events: one in its topic, one dead-lettered with its reason.
    let got = common::consume_until(
        &s.broker.brokers(),
        &[&s.topics.topic("click"), &s.topics.dead_letter],
        &s.topics.dead_letter,
        2,
        &[good.to_string(), bad.to_string()],
    );
    let click = one(&got, good);
    assert_eq!(click["value"]["data"], json!({"element": "a#open"}));
    assert_eq!(click["key"], "mail-7");
    let letter = one(&got, bad);
    assert_eq!(letter["value"]["reason"], "schema_violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_pixel_answers_and_limits_over_http() {
    let s = setup().await;
    let client = reqwest::Client::new();
    let url = |q: &str| format!("http://{}/v1/pixel.gif?{q}", s.gw.addr);
    let id = "6b7d0f3e-8a1b-4c2d-9e3f-0a1b2c3d4e5f";
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"schema": "click/1", "event_id": id, "data": {"element": "img"}}).to_string(),
    );
    // Sent twice (an email client reloading the image): stored once.
    for _ in 0..2 {
        let r = client.get(url(&format!("e={e}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/gif");
        assert_eq!(
            r.headers()["cache-control"],
            "no-cache, no-store, must-revalidate"
        );
        assert_eq!(&r.bytes().await.unwrap()[..6], b"GIF89a");
    }
    let r = client
        .get(url(
            "key=wk_not_a_real_key&%6Bey=wk_also_a_key&e=not*base64",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers()["x-eventpipe-error"]
        .to_str()
        .unwrap()
        .starts_with("undecodable_body: "));
    assert_eq!(&r.bytes().await.unwrap()[..6], b"GIF89a");
    let r = client
        .get(url(&format!("e={}", "A".repeat(9000))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 414);
    let got = common::consume_until(
        &s.broker.brokers(),
        &[&s.topics.topic("click"), &s.topics.dead_letter],
        &s.topics.dead_letter,
        2,
        &[id.to_string()],
    );
    let clicks: Vec<&Value> = got
        .iter()
        .filter(|r| r["headers"]["event_id"] == id)
        .collect();
    assert_eq!(clicks.len(), 1, "{got:#?}");
    // The undecodable request is in the dead-letter topic with its reason and the raw query.
    let letter = got
        .iter()
        .find(|r| r["value"]["reason"] == "undecodable_body")
        .unwrap_or_else(|| panic!("{got:#?}"));
    assert_eq!(
        letter["value"]["original"], "e=not*base64",
        "the key= parameter (%6Bey= too) is never stored"
    );
    assert_eq!(letter["value"]["http_status"], 400);
}

fn chromium() {
    let bin = Path::new("/usr/bin/chromium");
    assert!(
        std::env::var_os("CHROMIUM_BIN").is_some() || bin.is_file(),
        "Chromium is not installed: apt-get install chromium (or set CHROMIUM_BIN)"
    );
}
