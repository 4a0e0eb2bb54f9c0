//! The client's behaviour against a scripted fake gateway: per-event results, 413 splits,
//! Retry-After, queue policies, flush, shutdown and drop.

mod fake;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;

use self::fake::{eventually, Fake, Reply};
use crate::{Client, DropReason, Error, Event, QueueConfig, QueuePolicy, Receipt, RetryConfig};

fn event(n: usize) -> Event {
    Event::new(
        "page_view/1",
        json!({"url": format!("https://example.com/{n}")}),
    )
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..RetryConfig::default()
    }
}

#[tokio::test]
async fn per_event_results_settle_rejections_and_resend_only_failed_events_with_the_same_ids() {
    // First answer: a 500 dead_letter_refused with event 1 rejected and event 2 failed.
    let fake = Fake::start(|seen, n| match n {
        0 => Reply::new(
            500,
            json!({"error": "dead_letter_refused", "message": "m", "accepted": 1, "spooled": 0,
                "rejected": [{"index": 1, "event_id": seen.ids[1], "reason": "schema_violation",
                              "path": "/data/url", "message": "not a uri"}],
                "failed": [{"index": 2, "event_id": seen.ids[2], "reason": "kafka_rejected:X",
                            "message": "m"}]}),
        ),
        _ => Reply::new(
            202,
            json!({"accepted": seen.ids.len(), "spooled": 1, "rejected": []}),
        ),
    })
    .await;
    let client = Client::builder(fake.url())
        .write_key("wk_test_0123456789")
        .retry(fast_retry())
        .linger(Duration::from_secs(60))
        .build()
        .unwrap();
    let events: Vec<Event> = (0..3).map(event).collect();
    let ids: Vec<String> = events.iter().map(|e| e.event_id().to_string()).collect();
    let mut pending = Vec::new();
    for e in events {
        pending.push(client.submit(e).await.unwrap());
    }
    client.flush().await;
    let mut receipts = Vec::new();
    for p in pending {
        receipts.push(p.await.unwrap());
    }
    assert_eq!(receipts[0], Receipt::Kafka);
    assert_eq!(
        receipts[1],
        Receipt::Rejected {
            reason: "schema_violation".into(),
            path: Some("/data/url".into()),
            message: "not a uri".into()
        }
    );
    assert_eq!(receipts[2], Receipt::Spooled);
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].ids, ids);
    assert_eq!(
        seen[1].ids,
        vec![ids[2].clone()],
        "only the failed event is resent, same id"
    );
    assert_eq!((seen[0].attempt, seen[1].attempt), (1, 2));
    assert_eq!(
        seen[0].auth.as_deref(),
        Some("Basic d2tfdGVzdF8wMTIzNDU2Nzg5Og==")
    );
    let stats = client.stats();
    assert_eq!(
        (stats.accepted_kafka, stats.accepted_spool, stats.rejected),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_413_splits_the_batch_and_a_single_oversize_event_is_rejected() {
    // The fake refuses bundles of more than 2 events, and any bundle over 4 KiB.
    let fake = Fake::start(|seen, _| {
        if seen.bytes > 4096 {
            Reply::new(
                413,
                json!({"error": "body_too_large", "message": "over 4 KiB"}),
            )
        } else if seen.ids.len() > 2 {
            Reply::new(
                413,
                json!({"error": "too_many_events", "message": "over 2"}),
            )
        } else {
            Reply::ok(seen.ids.len())
        }
    })
    .await;
    let client = Client::builder(fake.url())
        .retry(fast_retry())
        .batch_max_events(100)
        .linger(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut pending = Vec::new();
    for n in 0..7 {
        pending.push(client.submit(event(n)).await.unwrap());
    }
    let big = Event::new("page_view/1", json!({"url": "x".repeat(8000)}));
    let big_id = big.event_id().to_string();
    pending.push(client.submit(big).await.unwrap());
    client.flush().await;
    for (n, p) in pending.into_iter().enumerate() {
        let r = p.await.unwrap();
        if n == 7 {
            assert!(
                matches!(&r, Receipt::Rejected { reason, .. } if reason == "body_too_large"),
                "{r:?}"
            );
        } else {
            assert_eq!(r, Receipt::Kafka, "event {n}");
        }
    }
    let seen = fake.seen();
    let landed: Vec<&String> = seen
        .iter()
        .filter(|s| s.ids.len() <= 2 && s.bytes <= 4096)
        .flat_map(|s| &s.ids)
        .collect();
    assert_eq!(
        landed.len(),
        7,
        "each event accepted exactly once: {seen:?}"
    );
    assert_eq!(landed.iter().collect::<HashSet<_>>().len(), 7);
    assert!(
        seen.iter().any(|s| s.ids == vec![big_id.clone()]),
        "the big one alone"
    );
    assert!(
        seen.iter().any(|s| s.gzip),
        "bundles over 1 KiB are gzipped"
    );
}

#[tokio::test]
async fn retry_after_is_a_floor_and_429_503_are_retried_whole() {
    let fake = Fake::start(|seen, n| match n {
        0 => Reply::new(503, json!({"error": "unavailable", "message": "m"})).retry_after("1"),
        1 => Reply::new(429, json!({"error": "rate_limited", "message": "m"})).retry_after("2"),
        _ => Reply::ok(seen.ids.len()),
    })
    .await;
    let client = Client::builder(fake.url())
        .retry(fast_retry())
        .build()
        .unwrap();
    let receipt = client.send(event(0)).await.unwrap();
    assert_eq!(receipt, Receipt::Kafka);
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(seen.iter().all(|s| s.ids == seen[0].ids));
    assert!(
        seen[1].at - seen[0].at >= Duration::from_secs(1),
        "{seen:?}"
    );
    assert!(
        seen[2].at - seen[1].at >= Duration::from_secs(2),
        "{seen:?}"
    );
    assert_eq!(client.stats().retries, 2);
}

#[tokio::test]
async fn other_4xx_reject_the_whole_batch_with_the_gateway_reason() {
    let fake = Fake::start(|_, _| {
        Reply::new(
            401,
            json!({"error": "unauthorized", "message": "unknown write key"}),
        )
    })
    .await;
    let client = Client::builder(fake.url()).build().unwrap();
    let r = client.send(event(0)).await.unwrap();
    assert_eq!(
        r,
        Receipt::Rejected {
            reason: "unauthorized".into(),
            path: None,
            message: "unknown write key".into()
        }
    );
    assert_eq!(fake.seen().len(), 1, "not retried");
}

#[tokio::test]
async fn max_attempts_gives_up_counted() {
    let fake = Fake::start(|_, _| Reply::new(502, json!({}))).await;
    let mut retry = fast_retry();
    retry.max_attempts = Some(3);
    let client = Client::builder(fake.url()).retry(retry).build().unwrap();
    let r = client.send(event(0)).await;
    assert!(
        matches!(r, Err(Error::Dropped(DropReason::RetriesExhausted))),
        "{r:?}"
    );
    assert_eq!(fake.seen().len(), 3);
    assert_eq!(client.stats().dropped, 1);
}

/// A client whose gateway holds every answer until the test adds permits.
async fn held(policy: QueuePolicy, max_events: usize) -> (Fake, Arc<Semaphore>, Client) {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let fake = Fake::start(move |seen, _| Reply::ok(seen.ids.len()).hold(g.clone())).await;
    let client = Client::builder(fake.url())
        .batch_max_events(1)
        .concurrency(1)
        .linger(Duration::ZERO)
        .queue(QueueConfig::new(max_events, 1 << 20, policy))
        .build()
        .unwrap();
    (fake, gate, client)
}

#[tokio::test]
async fn drop_newest_refuses_and_counts_when_full() {
    let (fake, gate, client) = held(QueuePolicy::DropNewest, 2).await;
    let first = client.submit(event(0)).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || fake.seen().len() == 1).await);
    // One in flight, two queued, the fourth refused.
    let queued = [client.submit(event(1)).await, client.submit(event(2)).await];
    let refused = client.submit(event(3)).await;
    assert!(
        matches!(refused, Err(Error::Dropped(DropReason::QueueFull))),
        "{refused:?}"
    );
    let tracked = client.track("page_view/1", json!({}));
    assert!(!tracked.is_nil());
    assert_eq!(client.stats().dropped, 2);
    gate.add_permits(100);
    assert_eq!(first.await.unwrap(), Receipt::Kafka);
    for q in queued {
        assert_eq!(q.unwrap().await.unwrap(), Receipt::Kafka);
    }
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test]
async fn drop_oldest_evicts_the_oldest_queued_event() {
    let (fake, gate, client) = held(QueuePolicy::DropOldest, 2).await;
    let first = client.submit(event(0)).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || fake.seen().len() == 1).await);
    let oldest = client.submit(event(1)).await.unwrap();
    let kept = client.submit(event(2)).await.unwrap();
    let newest = client.submit(event(3)).await.unwrap();
    assert!(matches!(
        oldest.await,
        Err(Error::Dropped(DropReason::Oldest))
    ));
    gate.add_permits(100);
    for p in [first, kept, newest] {
        assert_eq!(p.await.unwrap(), Receipt::Kafka);
    }
    assert_eq!(client.stats().dropped, 1);
}

#[tokio::test]
async fn block_waits_for_room_and_loses_nothing() {
    let (fake, gate, client) = held(QueuePolicy::Block, 2).await;
    let mut pending = vec![client.submit(event(0)).await.unwrap()];
    assert!(eventually(Duration::from_secs(10), || fake.seen().len() == 1).await);
    pending.push(client.submit(event(1)).await.unwrap());
    pending.push(client.submit(event(2)).await.unwrap());
    // The queue is full: this submit waits until an answer frees room.
    let c = client.clone();
    let blocked = tokio::spawn(async move { c.submit(event(3)).await });
    assert!(!eventually(Duration::from_secs(1), || blocked.is_finished()).await);
    assert_eq!(client.stats().queued_events, 2);
    gate.add_permits(100);
    pending.push(blocked.await.unwrap().unwrap());
    for p in pending {
        assert_eq!(p.await.unwrap(), Receipt::Kafka);
    }
    assert_eq!(client.stats().dropped, 0);
    assert_eq!(fake.seen().len(), 4);
}

#[tokio::test]
async fn flush_waits_for_in_flight_batches_and_their_retries() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    // First answer: event 0 rejected, the others failed (to retry); the retry is held.
    let fake = Fake::start(move |seen, n| match n {
        0 => Reply::new(
            500,
            json!({"error": "dead_letter_refused", "message": "m", "accepted": 0, "spooled": 0,
                "rejected": [{"index": 0, "reason": "schema_violation", "message": "m"}],
                "failed": (1..seen.ids.len()).map(|i| json!({"index": i})).collect::<Vec<_>>()}),
        ),
        _ => Reply::ok(seen.ids.len()).hold(g.clone()),
    })
    .await;
    let client = Client::builder(fake.url())
        .retry(fast_retry())
        .linger(Duration::from_secs(60))
        .build()
        .unwrap();
    for n in 0..10 {
        client.track("page_view/1", json!({"n": n}));
    }
    let c = client.clone();
    let flush = tokio::spawn(async move { c.flush().await });
    // Release the held answer only once the retry is in flight.
    assert!(eventually(Duration::from_secs(10), || fake.seen().len() == 2).await);
    gate.add_permits(1);
    flush.await.unwrap();
    let stats = client.stats();
    assert_eq!(
        (stats.accepted_kafka, stats.rejected),
        (9, 1),
        "flush returned before its events settled"
    );
}

#[tokio::test]
async fn shutdown_with_the_gateway_down_reports_what_it_could_not_send() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .retry(fast_retry())
        .build()
        .unwrap();
    let mut ids = HashSet::new();
    let mut pending = Vec::new();
    for n in 0..5 {
        let e = event(n);
        ids.insert(e.event_id());
        pending.push(client.submit(e).await.unwrap());
    }
    let report = client.shutdown(Duration::from_millis(500)).await;
    assert_eq!(report.unsent, 5, "{report:?}");
    assert_eq!(
        report.unsent_ids.iter().copied().collect::<HashSet<_>>(),
        ids
    );
    assert!(!report.is_complete());
    for p in pending {
        assert!(matches!(p.await, Err(Error::Dropped(DropReason::Shutdown))));
    }
    assert!(matches!(client.send(event(9)).await, Err(Error::Closed)));
}

#[tokio::test]
async fn dropping_the_last_handle_does_not_block_and_still_delivers() {
    let fake = Fake::start(|seen, _| Reply::ok(seen.ids.len())).await;
    let client = Client::builder(fake.url())
        .linger(Duration::from_millis(100))
        .build()
        .unwrap();
    for n in 0..20 {
        client.track("page_view/1", json!({"n": n}));
    }
    drop(client);
    assert!(
        eventually(Duration::from_secs(10), || {
            fake.seen().iter().map(|s| s.ids.len()).sum::<usize>() == 20
        })
        .await
    );
}

#[tokio::test]
async fn spill_keeps_what_does_not_fit_on_disk_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("eventpipe-client-spill-{}", uuid::Uuid::new_v4()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spill = || {
        QueueConfig::new(
            2,
            1 << 20,
            QueuePolicy::Spill(crate::SpillConfig::new(&dir)),
        )
    };
    // Gateway down: everything ends on disk at shutdown (memory included), nothing unsent.
    let client = Client::builder(format!("http://127.0.0.1:{port}"))
        .retry(fast_retry())
        .queue(spill())
        .build()
        .unwrap();
    let mut ids = HashSet::new();
    for n in 0..30 {
        ids.insert(client.track("page_view/1", json!({"n": n})));
    }
    let report = client.shutdown(Duration::from_millis(1500)).await;
    assert_eq!((report.spilled, report.unsent), (30, 0), "{report:?}");
    drop(client);
    // A second client on the same directory sends them.
    let fake = Fake::start(|seen, _| Reply::ok(seen.ids.len())).await;
    let client = Client::builder(fake.url()).queue(spill()).build().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            let got: HashSet<String> = fake.seen().into_iter().flat_map(|s| s.ids).collect();
            ids.iter().all(|id| got.contains(&id.to_string()))
        })
        .await,
        "{:?}",
        client.stats()
    );
    let report = client.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.delivered, 30);
    let _ = std::fs::remove_dir_all(&dir);
}
