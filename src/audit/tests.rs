//! The books and the publisher: receive-time windows, per-request counting from the sink's
//! answer, pending -> replayed, cumulative re-publishing with increasing seq, bounded cells.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::sink::memory::MemorySink;
use crate::thrift::generated::AuditRecord;
use crate::thrift::{DeadLetter, Enrichment, Event, Json};

const CLICK: &str = "events.click";
const DLT: &str = "events.invalid";

fn books() -> Books {
    Books::new(true, 1_000, 100, 0, DLT)
}

fn enrichment(received_at_ms: i64) -> Enrichment {
    Enrichment {
        received_at_ms,
        client_ip: None,
        user_agent: Some("ua".into()),
        collector_host: "h".into(),
        collector_version: "v".into(),
        sent_at: None,
        origin: None,
    }
}

/// A real `Event` record received at `received_at_ms` (Thrift payload, as the pipeline makes).
pub(crate) fn event(received_at_ms: i64) -> Record {
    let ev = Event::new(
        uuid::Uuid::new_v4().to_string(),
        "click".into(),
        1,
        None::<String>,
        Json { tokens: vec![] },
        Json { tokens: vec![] },
        enrichment(received_at_ms),
    );
    Record {
        topic: CLICK.into(),
        key: None,
        payload: crate::thrift::to_compact_bytes(&ev),
        headers: vec![],
        kind: RecordKind::Event { client_id: None },
    }
}

fn dead_letter(received_at_ms: i64, reason: &str) -> Record {
    let dl = DeadLetter::new(
        reason.to_string(),
        Some("/data/x".to_string()),
        "bad".to_string(),
        b"{}".to_vec(),
        false,
        None::<String>,
        Some("click/1".to_string()),
        Some(0),
        None::<i32>,
        enrichment(received_at_ms),
        None::<String>,
    );
    Record {
        topic: DLT.into(),
        key: None,
        payload: crate::thrift::to_compact_bytes(&dl),
        headers: vec![("reason", reason.to_string())],
        kind: RecordKind::DeadLetter,
    }
}

#[test]
fn the_receive_time_is_read_from_events_and_dead_letters() {
    assert_eq!(received_at_ms(&event(1_234_567).payload), Some(1_234_567));
    assert_eq!(
        received_at_ms(&dead_letter(7_654_321, "schema_violation").payload),
        Some(7_654_321)
    );
    assert_eq!(received_at_ms(b"not thrift"), None);
    assert_eq!(received_at_ms(&[]), None);
}

#[test]
fn the_collector_host_is_read_from_events_and_dead_letters() {
    assert_eq!(collector_host(&event(1).payload).as_deref(), Some("h"));
    assert_eq!(
        collector_host(&dead_letter(1, "schema_violation").payload).as_deref(),
        Some("h")
    );
    assert_eq!(collector_host(b"not thrift"), None);
    assert_eq!(collector_host(&[]), None);
}

#[test]
fn counts_go_to_the_window_of_their_receive_time() {
    let b = books();
    for at in [1_000, 1_999, 2_000, -1] {
        let records = vec![event(at)];
        Tally::of(&records).settle(&b, &Delivered::default(), at);
    }
    assert_eq!(b.counts(1_000, CLICK).unwrap().events_kafka, 2);
    assert_eq!(b.counts(2_000, CLICK).unwrap().events_kafka, 1);
    assert_eq!(b.counts(-1_000, CLICK).unwrap().events_kafka, 1);
    assert_eq!(b.len(), 3);
}

#[test]
fn a_request_counts_acked_spooled_and_refused_records_apart() {
    let b = books();
    let records = vec![
        event(5_500),
        event(5_500),
        event(5_500),
        event(5_500),
        dead_letter(5_500, "schema_violation"),
    ];
    let sizes: Vec<i64> = records.iter().map(|r| r.payload.len() as i64).collect();
    let delivered = Delivered {
        spooled_events: 1,
        spooled_records: 1,
        spooled: vec![1],
        refused: vec![(2, "kafka_rejected:msg_size_too_large")],
    };
    Tally::of(&records).settle(&b, &delivered, 5_500);
    let c = b.counts(5_000, CLICK).unwrap();
    assert_eq!((c.events_kafka, c.events_pending), (2, 1));
    assert_eq!(
        c.bytes,
        sizes[0] + sizes[3],
        "bytes of the acknowledged records only"
    );
    let d = b.counts(5_000, DLT).unwrap();
    assert_eq!(d.events_kafka, 1);
    assert_eq!(d.dead_letters.get("schema_violation"), Some(&1));
}

#[test]
fn spooled_records_move_from_pending_to_replayed_once() {
    let b = Arc::new(books());
    let records = vec![
        event(12_000),
        event(12_000),
        dead_letter(12_000, "too_deep"),
    ];
    let delivered = Delivered {
        spooled_events: 2,
        spooled_records: 3,
        spooled: vec![0, 1, 2],
        refused: vec![],
    };
    Tally::of(&records).settle(&b, &delivered, 12_000);
    assert_eq!(b.counts(12_000, CLICK).unwrap().events_pending, 2);
    assert_eq!(b.counts(12_000, CLICK).unwrap().events_kafka, 0);
    let replay = ReplayAudit::new(b.clone());
    replay.acknowledged(&records[0]);
    replay.quarantined(&records[1]);
    replay.acknowledged(&records[2]);
    let c = b.counts(12_000, CLICK).unwrap();
    assert_eq!(
        (
            c.events_kafka,
            c.events_replayed,
            c.events_pending,
            c.quarantined
        ),
        (0, 1, 0, 1)
    );
    assert_eq!(c.bytes, records[0].payload.len() as i64);
    let d = b.counts(12_000, DLT).unwrap();
    assert_eq!((d.events_replayed, d.events_pending), (1, 0));
    assert_eq!(d.dead_letters.get("too_deep"), Some(&1));

    // A predecessor's record: pending once inventoried, then replayed.
    let old = event(3_000);
    replay.inherited(&old);
    assert_eq!(b.counts(3_000, CLICK).unwrap().events_pending, 1);
    replay.acknowledged(&old);
    let c = b.counts(3_000, CLICK).unwrap();
    assert_eq!((c.events_replayed, c.events_pending), (1, 0));
}

#[test]
fn refusals_are_counted_by_reason_on_the_dead_letter_topic() {
    let b = books();
    b.refused("rate_limited");
    b.refused("rate_limited");
    b.refused("unauthorized");
    let now = crate::now_ms();
    let due = b.due(now, 0, true);
    let refused: i64 = due
        .iter()
        .filter(|s| &*s.topic == DLT)
        .flat_map(|s| s.counts.requests_refused.get("rate_limited"))
        .sum();
    assert_eq!(refused, 2);
}

#[test]
fn cells_are_bounded_and_only_settled_ones_make_room() {
    let b = Books::new(true, 1_000, 2, 0, DLT);
    let records = vec![event(1_000)];
    let spooled = Delivered {
        spooled: vec![0],
        ..Delivered::default()
    };
    Tally::of(&records).settle(&b, &spooled, 1_000);
    Tally::of(&records).settle(&b, &Delivered::default(), 2_000);
    assert_eq!(b.len(), 2);
    // Full: neither cell is published yet, so the third is lost (and counted in a metric).
    Tally::of(&records).settle(&b, &Delivered::default(), 3_000);
    assert_eq!(b.len(), 2);
    assert!(b.counts(3_000, CLICK).is_none());
    // Publish both: the one with nothing pending is dropped, the pending one is kept.
    let now = crate::now_ms();
    for s in b.due(now, 0, false) {
        b.published(&s);
    }
    assert!(b.due(now, 0, false).is_empty());
    assert_eq!(b.len(), 1, "settled cells are dropped, pending ones kept");
    assert_eq!(b.counts(1_000, CLICK).unwrap().events_pending, 1);
    Tally::of(&records).settle(&b, &Delivered::default(), 3_000);
    assert_eq!(b.counts(3_000, CLICK).unwrap().events_kafka, 1);
}

#[test]
fn audit_off_counts_nothing() {
    let b = Books::disabled();
    let records = vec![event(1_000)];
    Tally::of(&records).settle(&b, &Delivered::default(), 1_000);
    b.refused("unauthorized");
    assert!(b.is_empty());
}

fn decode_all(sink: &MemorySink) -> Vec<AuditRecord> {
    sink.records()
        .iter()
        .map(|r| crate::thrift::from_compact_bytes(&r.payload).unwrap())
        .collect()
}

async fn wait_for(sink: &MemorySink, n: usize) -> Vec<AuditRecord> {
    for _ in 0..500 {
        let got = decode_all(sink);
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "publisher did not publish {n} records: {:?}",
        decode_all(sink)
    );
}

#[tokio::test]
async fn a_window_is_republished_cumulatively_with_a_higher_seq_when_it_changes() {
    let b = Arc::new(books());
    let sink = Arc::new(MemorySink::new());
    let records = vec![event(1_000), event(1_000), event(1_000)];
    let delivered = Delivered {
        spooled: vec![1, 2],
        ..Delivered::default()
    };
    Tally::of(&records).settle(&b, &delivered, 1_000);
    let id = Identity {
        collector_host: "h1".into(),
        collector_version: "9.9".into(),
        boot_id: "boot-a".into(),
    };
    let publisher = Publisher::spawn(
        b.clone(),
        sink.clone(),
        id,
        "events.audit",
        0,
        Duration::from_secs(1),
        Duration::from_millis(10),
    );
    let first = wait_for(&sink, 1).await;
    assert_eq!(first.len(), 1);
    let r = &first[0];
    assert_eq!(
        (r.window_start_ms, r.window_ms, r.topic.as_str()),
        (1_000, 1_000, CLICK)
    );
    assert_eq!(
        (r.events_kafka, r.events_replayed, r.events_pending),
        (1, 0, 2)
    );
    assert_eq!(
        (r.collector_host.as_str(), r.boot_id.as_str()),
        ("h1", "boot-a")
    );
    assert!(r.dead_letters.is_none() && r.requests_refused.is_none());
    assert_eq!(sink.records()[0].topic.as_ref(), "events.audit");

    // The replayer delivers one: the window is published again, cumulative, with a higher seq.
    let replay = ReplayAudit::new(b.clone());
    replay.acknowledged(&records[1]);
    let second = wait_for(&sink, 2).await;
    let r2 = &second[1];
    assert!(r2.seq > r.seq, "seq increases: {} then {}", r.seq, r2.seq);
    assert_eq!(
        (r2.events_kafka, r2.events_replayed, r2.events_pending),
        (1, 1, 1)
    );
    // Nothing changed: nothing more is published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(decode_all(&sink).len(), 2);
    publisher.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failed_publish_stays_pending_and_is_retried() {
    let b = Arc::new(books());
    let sink = Arc::new(MemorySink::new());
    sink.fail_with(Some(SinkError::Timeout));
    let records = vec![event(1_000)];
    Tally::of(&records).settle(&b, &Delivered::default(), 1_000);
    let id = Identity {
        collector_host: "h1".into(),
        collector_version: "9.9".into(),
        boot_id: "boot-a".into(),
    };
    let publisher = Publisher::spawn(
        b.clone(),
        sink.clone(),
        id,
        "events.audit",
        0,
        Duration::from_secs(1),
        Duration::from_millis(10),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(sink.records().is_empty());
    assert_eq!(
        b.unpublished(crate::now_ms(), 0),
        1,
        "still waiting to be published"
    );
    sink.fail_with(None);
    let got = wait_for(&sink, 1).await;
    assert_eq!(got[0].events_kafka, 1);
    publisher.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_publishes_the_open_window() {
    let b = Arc::new(books());
    let sink = Arc::new(MemorySink::new());
    let now = crate::now_ms();
    let records = vec![event(now)];
    Tally::of(&records).settle(&b, &Delivered::default(), now);
    let id = Identity {
        collector_host: "h1".into(),
        collector_version: "9.9".into(),
        boot_id: "boot-a".into(),
    };
    // A publish delay of an hour: only the shutdown flush can publish it.
    let publisher = Publisher::spawn(
        b.clone(),
        sink.clone(),
        id,
        "events.audit",
        3_600_000,
        Duration::from_secs(1),
        Duration::from_millis(10),
    );
    publisher.shutdown(Duration::from_secs(2)).await;
    let got = decode_all(&sink);
    assert_eq!(got.len(), 1, "the open window is published at shutdown");
    assert_eq!(got[0].events_kafka, 1);
}
