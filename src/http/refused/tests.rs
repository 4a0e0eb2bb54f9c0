//! Router tests for records Kafka refuses for good, and for dedup hits of spooled events, with
//! the in-memory sink refusing chosen topics.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::config::Config;
use crate::schema::Registry;
use crate::sink::memory::MemorySink;
use crate::sink::RecordKind;
use crate::thrift::{from_compact_bytes, DeadLetter};

const CLICK_ID: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
const UNKNOWN_TOPIC: &str = "kafka_rejected:unknown_topic_or_part";

fn harness() -> (Router, Arc<MemorySink>) {
    let config = Config::default();
    let sink = Arc::new(MemorySink::new());
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(&config, registry, sink.clone());
    let router = super::super::app(gw, &config.cors, config.limits.request_timeout());
    (router, sink)
}

async fn post(router: &Router, body: &str) -> (StatusCode, Value) {
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "refusal-test/1")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// The click event exactly as sent, odd spacing included: its dead letter must hold these bytes.
const CLICK: &str = r#"{ "schema":"click/1",  "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "data": {"element": "b"} }"#;
const PAGE_VIEW: &str = r#"{"schema": "page_view/1", "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "data": {"url": "https://example.com/a"}}"#;

fn bundle(events: &[&str]) -> String {
    format!("{{\"events\": [{}]}}", events.join(", "))
}

#[tokio::test]
async fn a_refused_event_is_rejected_and_dead_lettered_with_its_original_json() {
    let (router, sink) = harness();
    sink.refuse_topic("events.click", UNKNOWN_TOPIC);
    let (status, body) = post(&router, &bundle(&[PAGE_VIEW, CLICK])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{body}");
    assert_eq!(
        (
            &rejected[0]["index"],
            &rejected[0]["reason"],
            &rejected[0]["event_id"]
        ),
        (&json!(1), &json!(UNKNOWN_TOPIC), &json!(CLICK_ID))
    );
    let records = sink.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(&*records[0].topic, "events.page_view");
    let letter = &records[1];
    assert_eq!(
        (&*letter.topic, letter.kind),
        ("events.invalid", RecordKind::DeadLetter)
    );
    let dl: DeadLetter = from_compact_bytes(&letter.payload).unwrap();
    assert_eq!(dl.reason, UNKNOWN_TOPIC);
    assert_eq!(dl.original, CLICK.as_bytes());
    assert_eq!(dl.event_id.as_deref(), Some(CLICK_ID));
    assert_eq!(dl.schema.as_deref(), Some("click/1"));
    assert_eq!(dl.index, Some(1));
    assert_eq!(dl.enrichment.user_agent.as_deref(), Some("refusal-test/1"));
    // Refused, so not remembered as durable: a retry is refused (and dead-lettered) again.
    let (status, body) = post(&router, &bundle(&[CLICK])).await;
    assert_eq!(
        (status, &body["rejected"][0]["reason"]),
        (StatusCode::OK, &json!(UNKNOWN_TOPIC))
    );
    assert_eq!(sink.records().len(), 3);
}

/// The dead-letter topic refuses too: those events have no durable home, the request says so
/// with a 500 naming them, and the failures are counted.
#[tokio::test]
async fn a_refused_dead_letter_fails_the_request_visibly() {
    let prometheus = crate::metrics::recorder();
    let (router, sink) = harness();
    sink.refuse_topic("events.click", UNKNOWN_TOPIC);
    sink.refuse_topic(
        "events.invalid",
        "kafka_rejected:topic_authorization_failed",
    );
    let invalid = r#"{"schema": "page_view/1", "data": {"url": 7}}"#;
    let (status, body) = post(&router, &bundle(&[PAGE_VIEW, CLICK, invalid])).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"], "dead_letter_refused");
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["rejected"], json!([]), "{body}");
    let failed: Vec<(u64, &str)> = body["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["index"].as_u64().unwrap(), f["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(failed, [(1, UNKNOWN_TOPIC), (2, "schema_violation")]);
    // Only the page view is stored.
    let records = sink.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(&*records[0].topic, "events.page_view");
    let needle = "eventpipe_dead_letter_failures_total{reason=\"kafka_rejected:topic_authorization_failed\"} 2";
    assert!(prometheus.render().contains(needle), "missing {needle}");
}

/// The dead letters of refused events cannot be stored at all (Kafka late, spool refusing):
/// those events fail visibly, are not counted accepted, and are not remembered as durable, so
/// the client's retry is produced again rather than answered from the dedup window.
#[tokio::test]
async fn dead_letters_that_cannot_be_stored_fail_their_events_and_are_not_deduplicated() {
    let (router, sink) = harness();
    sink.refuse_topic("events.click", UNKNOWN_TOPIC);
    sink.fail_after(1, crate::sink::SinkError::SpoolFull);
    let (status, body) = post(&router, &bundle(&[PAGE_VIEW, CLICK])).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["failed"][0]["index"], 1, "{body}");
    // The retry, with the dead-letter path working again: the click is produced again (and
    // refused and dead-lettered this time), not answered as accepted from the dedup window.
    sink.fail_with(None);
    let (status, body) = post(&router, &bundle(&[CLICK])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["accepted"], 0,
        "a failed event was deduplicated: {body}"
    );
    assert_eq!(body["rejected"][0]["reason"], UNKNOWN_TOPIC, "{body}");
}

/// A whole request refused (400) whose dead letter Kafka refuses: counted, not silent.
#[tokio::test]
async fn a_refused_request_whose_dead_letter_is_refused_is_counted() {
    crate::metrics::recorder(); // installed before the request records anything
    let (router, sink) = harness();
    sink.refuse_topic("events.invalid", "kafka_rejected:policy_violation");
    let req = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("not json"))
        .unwrap();
    assert_eq!(router.clone().oneshot(req).await.unwrap().status(), 400);
    let needle =
        "eventpipe_dead_letter_failures_total{reason=\"kafka_rejected:policy_violation\"} 1";
    assert!(
        crate::metrics::eventually_rendered(needle).await,
        "missing {needle}"
    );
}

/// A retry of an event whose original was only spooled is answered 202, as the original was.
#[tokio::test]
async fn a_retry_of_a_spooled_event_is_answered_202() {
    let (router, sink) = harness();
    sink.spool_all(true);
    let (status, body) = post(&router, &bundle(&[PAGE_VIEW])).await;
    assert_eq!(
        (status, &body["spooled"]),
        (StatusCode::ACCEPTED, &json!(1))
    );
    sink.spool_all(false);
    let (status, body) = post(&router, &bundle(&[PAGE_VIEW, CLICK])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (&body["accepted"], &body["spooled"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(
        sink.records().len(),
        2,
        "the retried event was produced again"
    );
    // The click went to Kafka, but in a request answered 202: its retry is answered 202 too.
    let (status, _) = post(&router, &bundle(&[CLICK])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // An event acknowledged by Kafka in a 200 request is answered 200 on retry.
    let other = PAGE_VIEW.replace("0f8fad5b", "1f8fad5b");
    assert_eq!(post(&router, &bundle(&[&other])).await.0, StatusCode::OK);
    assert_eq!(post(&router, &bundle(&[&other])).await.0, StatusCode::OK);
    assert_eq!(sink.records().len(), 3);
}
