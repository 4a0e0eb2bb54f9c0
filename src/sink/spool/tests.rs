//! The adapter: gateway records go through the shared spool unchanged (kind from the `reason`
//! header), refusals map to the gateway's errors, and the metric names stay the gateway's.

use super::*;

fn event(i: u32) -> Record {
    Record {
        topic: "events.page_view".into(),
        key: Some(format!("k{i}").into_bytes()),
        payload: format!("payload-{i}").into_bytes(),
        headers: vec![
            ("schema", "page_view/1".into()),
            ("event_id", format!("id-{i}")),
        ],
        kind: RecordKind::Event { client_id: None },
    }
}

#[test]
fn gateway_records_round_trip_with_their_kind() {
    let dead = Record {
        headers: vec![("reason", "schema_invalid".into())],
        kind: RecordKind::DeadLetter,
        ..event(2)
    };
    for r in [event(1), dead] {
        let mut body = Vec::new();
        encode_body(&r, 7, &mut body);
        assert_eq!(decode_record(&body), Some((r, 7)));
    }
}

#[test]
fn a_header_the_gateway_never_writes_is_not_a_gateway_record() {
    let foreign = eventpipe_spool::Record {
        topic: "t".into(),
        key: None,
        headers: vec![("x-other".into(), "v".into())],
        payload: b"p".to_vec(),
    };
    let mut body = Vec::new();
    encode_body(&foreign, 1, &mut body);
    assert!(eventpipe_spool::decode_record(&body).is_some());
    assert_eq!(decode_record(&body), None);
    assert_eq!(from_spool(foreign), Err("spool_unknown_header"));
}

#[tokio::test]
async fn refusals_are_sink_errors_and_metrics_keep_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(SpoolOptions {
        dir: dir.path().to_owned(),
        max_bytes: 1,
        max_age: Duration::from_secs(60),
        segment_bytes: 4096,
        seal_after: Duration::from_millis(20),
        io_error_backoff: Duration::from_millis(100),
    })
    .unwrap();
    let err = spool.append(&[event(1)]).await.unwrap_err();
    assert!(matches!(err, SinkError::SpoolFull), "{err:?}");
    let mut big = event(2);
    big.payload = vec![0; MAX_RECORD as usize];
    let err = spool.append(&[big]).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(_)), "{err:?}");
    spool.close().await;
    assert!(matches!(
        spool.append(&[event(3)]).await,
        Err(SinkError::Closed)
    ));
    assert_eq!(METRIC_NAMES, MetricNames::GATEWAY);
}
