//! The crate as a user other than the gateway sees it: its own item type decoded from spooled
//! records, a record it cannot decode quarantined with its reason (never blocking the rest),
//! and its own metric names.

use super::*;

/// A client's own event type: the replayer hands it these, decoded once.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Gateway {
    delivered: Mutex<Vec<Event>>,
    acknowledged: std::sync::atomic::AtomicUsize,
}

impl ReplayTarget for Gateway {
    type Item = Event;
    fn decode(&self, record: Record) -> Result<Event, String> {
        let id = record.header("event_id").ok_or("no_event_id")?.to_owned();
        Ok(Event {
            id,
            body: record.payload,
        })
    }
    fn produce<'a>(
        &'a self,
        items: &'a [Event],
        _deadline: tokio::time::Instant,
    ) -> BoxFuture<'a, ReplayResult> {
        Box::pin(async move {
            self.delivered.lock().unwrap().extend(items.iter().cloned());
            ReplayResult::default()
        })
    }
    fn acknowledged(&self, _item: &Event) {
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_user_type_is_replayed_and_an_undecodable_record_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let names = MetricNames::with_prefix("eventpipe_client_spool");
    assert_eq!(
        names.replayed,
        "eventpipe_client_spool_replayed_records_total"
    );
    let spool = Spool::open(SpoolOptions {
        metrics: names,
        ..opts(dir.path())
    })
    .unwrap();
    let gateway = Arc::new(Gateway::default());
    let replayer = spawn_replayer(&spool, gateway.clone(), replay_opts());
    let mut records: Vec<Record> = (0..10).map(record).collect();
    records[4].headers.retain(|(k, _)| k != "event_id");
    spool.append(&records).await.unwrap();
    assert!(wait_until(|| gateway.delivered.lock().unwrap().len() == 9 && spool.is_empty()).await);
    let ids: Vec<String> = gateway
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.id.clone())
        .collect();
    let want: Vec<String> = (0..10)
        .filter(|i| *i != 4)
        .map(|i| format!("id-{i}"))
        .collect();
    assert_eq!(ids, want, "the records after it are delivered, in order");
    assert_eq!(gateway.acknowledged.load(Ordering::Relaxed), 9);
    assert_eq!(
        gateway.delivered.lock().unwrap()[0].body,
        records[0].payload
    );
    let listed = quarantine::list(dir.path()).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].entry.reason, "no_event_id");
    let Content::Record(body) = &listed[0].entry.content else {
        panic!("quarantined whole: {:?}", listed[0])
    };
    assert_eq!(decode_record(body).unwrap().0, records[4]);
    spool.close().await;
    replayer.await.unwrap();
}
