use super::*;

const W: i64 = 60_000;
const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % W;
/// Well past every window's end + grace below.
const LATE: i64 = T0 + 3_600_000;
const GRACE: i64 = 60_000;

#[allow(clippy::too_many_arguments)]
fn record(
    host: &str,
    boot: &str,
    seq: i64,
    window: i64,
    kafka: i64,
    replayed: i64,
    pending: i64,
    published: i64,
) -> AuditRecord {
    AuditRecord::new(
        host.into(),
        boot.into(),
        seq,
        window,
        W,
        "events.click".into(),
        kafka,
        replayed,
        pending,
        0,
        None,
        None,
        published,
        "test".into(),
        None,
    )
}

fn found(books: &mut Books, host: &str, at: i64, ids: std::ops::Range<u128>) {
    for id in ids {
        books.add_found("events.click", host, at, Identity::Id(id));
    }
}

fn only(books: &Books, now: i64) -> Row {
    let rows = books.rows(now, GRACE, i64::MIN, i64::MAX);
    assert_eq!(rows.len(), 1, "{rows:?}");
    rows.into_iter().next().unwrap()
}

#[test]
fn all_reported_events_found_is_complete() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 0, T0 + W));
    found(&mut b, "h1", T0 + 5, 0..10);
    let row = only(&b, LATE);
    assert_eq!((row.reported, row.found, row.missing), (10, 10, 0));
    assert_eq!(row.status, Status::Complete);
    assert!(!row.status.is_failure());
}

#[test]
fn highest_seq_wins_whatever_the_order_read() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 7, T0, 10, 5, 0, T0 + 2 * W));
    b.add_record(&record("h1", "b1", 3, T0, 10, 0, 5, T0 + W));
    found(&mut b, "h1", T0, 0..15);
    let row = only(&b, LATE);
    assert_eq!((row.reported, row.pending), (15, 0));
    assert_eq!(row.status, Status::Complete);
}

#[test]
fn a_hosts_total_is_the_sum_over_its_boots() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 4, 0, 0, T0 + 10));
    b.add_record(&record("h1", "b2", 1, T0, 6, 0, 0, T0 + W));
    found(&mut b, "h1", T0, 0..9);
    let row = only(&b, LATE);
    assert_eq!((row.reported, row.found, row.missing), (10, 9, 1));
    assert_eq!(row.status, Status::Incomplete);
    assert!(row.status.is_failure());
}

#[test]
fn hosts_windows_and_topics_are_separate_rows() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 2, 0, 0, T0 + W));
    b.add_record(&record("h2", "b9", 1, T0, 2, 0, 0, T0 + W));
    found(&mut b, "h1", T0, 0..2);
    // h2's events landed in the next window: its window is missing them, the next is unreported.
    found(&mut b, "h2", T0 + W, 10..12);
    let rows = b.rows(LATE, GRACE, i64::MIN, i64::MAX);
    let statuses: Vec<(&str, i64, Status, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.host.as_str(),
                r.window_start_ms,
                r.status,
                r.missing,
                r.unreported,
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("h1", T0, Status::Complete, 0, 0),
            ("h2", T0, Status::Incomplete, 2, 0),
            ("h2", T0 + W, Status::Complete, 0, 2),
        ]
    );
    assert!(!rows[2].audited);
}

#[test]
fn duplicates_are_not_completeness() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 0, T0 + W));
    // 8 distinct ids, two of them twice: 10 records, but 2 events are missing.
    found(&mut b, "h1", T0, 0..8);
    found(&mut b, "h1", T0, 0..2);
    let row = only(&b, LATE);
    assert_eq!(
        (row.found, row.duplicates, row.missing),
        (8, 2, 2),
        "{row:?}"
    );
    assert_eq!(row.status, Status::Incomplete);
}

#[test]
fn a_shortfall_covered_by_duplicates_across_boots_gets_a_hint_but_still_fails() {
    let mut b = Books::new();
    // A crash during replay: both boots report the same record (two reports, one id, two copies).
    b.add_record(&record("h1", "b1", 1, T0, 5, 1, 0, T0 + W));
    b.add_record(&record("h1", "b2", 1, T0, 0, 1, 0, T0 + 2 * W));
    found(&mut b, "h1", T0, 0..6);
    found(&mut b, "h1", T0, 5..6);
    let row = only(&b, LATE);
    assert_eq!((row.missing, row.duplicates), (1, 1));
    assert_eq!(row.status, Status::Incomplete);
    assert_eq!(row.note, Some(MAYBE_DOUBLE_REPORTED));
    // One boot: no such excuse.
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 7, 0, 0, T0 + W));
    found(&mut b, "h1", T0, 0..6);
    found(&mut b, "h1", T0, 5..6);
    assert_eq!(only(&b, LATE).note, None);
}

#[test]
fn a_window_is_open_until_its_end_plus_grace() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 0, T0 + W));
    found(&mut b, "h1", T0, 0..3);
    assert_eq!(only(&b, T0 + W + GRACE - 1).status, Status::Open);
    assert_eq!(only(&b, T0 + W + GRACE).status, Status::Incomplete);
}

#[test]
fn pending_events_keep_the_books_open_then_fail_past_grace() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 5, T0 + W));
    found(&mut b, "h1", T0, 0..10);
    let row = only(&b, T0 + W);
    assert_eq!((row.status, row.missing, row.pending), (Status::Open, 0, 5));
    let row = only(&b, LATE);
    assert_eq!(row.status, Status::PendingPastGrace);
    assert!(row.status.is_failure());
    // The spool delivers them: a later record of the same boot closes the books.
    b.add_record(&record("h1", "b1", 2, T0, 10, 5, 0, T0 + 3 * W));
    found(&mut b, "h1", T0 + 1, 10..15);
    assert_eq!(only(&b, LATE).status, Status::Complete);
}

#[test]
fn only_the_latest_boot_speaks_for_the_spool() {
    // b1 spooled 5 and was killed; b2 (published later) counted them as pending, then replayed.
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 5, T0 + W));
    b.add_record(&record("h1", "b2", 1, T0, 0, 0, 5, T0 + 2 * W));
    found(&mut b, "h1", T0, 0..10);
    assert_eq!(only(&b, LATE).status, Status::PendingPastGrace);
    b.add_record(&record("h1", "b2", 2, T0, 0, 5, 0, T0 + 3 * W));
    found(&mut b, "h1", T0, 10..15);
    let row = only(&b, LATE);
    assert_eq!((row.reported, row.pending), (15, 0));
    assert_eq!(row.status, Status::Complete);
    // Until a successor publishes, the killed boot's pending stands.
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 5, T0 + W));
    found(&mut b, "h1", T0, 0..10);
    assert_eq!(only(&b, LATE).status, Status::PendingPastGrace);
    // A successor with no record for the window left nothing of it in the spool: the stale
    // pending is void and the counts decide.
    let mut other = record("h1", "b2", 1, T0 + 5 * W, 1, 0, 0, T0 + 6 * W);
    other.topic = "events.page_view".into();
    b.add_record(&other);
    let rows = b.rows(LATE, GRACE, i64::MIN, i64::MAX);
    assert_eq!((rows[0].pending, rows[0].status), (0, Status::Complete));
    // Another host's boots do not count.
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 5, T0 + W));
    b.add_record(&record("h2", "b9", 1, T0, 0, 0, 0, T0 + 9 * W));
    found(&mut b, "h1", T0, 0..10);
    let rows = b.rows(LATE, GRACE, i64::MIN, i64::MAX);
    assert_eq!(rows[0].status, Status::PendingPastGrace);
}

#[test]
fn found_beyond_reported_is_unreported_not_a_failure() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 0, T0 + W));
    found(&mut b, "h1", T0, 0..12);
    let row = only(&b, LATE);
    assert_eq!(
        (row.unreported, row.missing, row.status),
        (2, 0, Status::Complete)
    );
    // Delivered pending events are not unreported.
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 10, 0, 2, T0 + W));
    found(&mut b, "h1", T0, 0..12);
    assert_eq!(only(&b, LATE).unreported, 0);
    // A host no record covers: all of it is unreported.
    let mut b = Books::new();
    found(&mut b, "ghost", T0 + 7, 0..3);
    let row = only(&b, LATE);
    assert_eq!(
        (row.unreported, row.audited, row.window_start_ms),
        (3, false, T0)
    );
}

#[test]
fn anonymous_dead_letters_are_counted_by_record() {
    let mut b = Books::new();
    b.add_record(&AuditRecord {
        topic: "events.invalid".into(),
        ..record("h1", "b1", 1, T0, 3, 0, 0, T0 + W)
    });
    for _ in 0..2 {
        b.add_found("events.invalid", "h1", T0, Identity::Anonymous);
    }
    let row = only(&b, LATE);
    assert_eq!((row.found, row.duplicates, row.missing), (2, 0, 1));
    b.add_found("events.invalid", "h1", T0, Identity::Anonymous);
    assert_eq!(only(&b, LATE).status, Status::Complete);
    // A record with nothing to balance (only refusals) makes no row.
    b.add_record(&AuditRecord {
        topic: "events.invalid".into(),
        requests_refused: Some([("rate_limited".to_string(), 4)].into()),
        ..record("h1", "b1", 2, T0 + W, 0, 0, 0, T0 + 2 * W)
    });
    assert_eq!(only(&b, LATE).window_start_ms, T0);
}

#[test]
fn events_use_their_hosts_window_size_and_since_until_select_windows() {
    let mut b = Books::new();
    let mut r = record("h1", "b1", 1, T0, 1, 0, 0, T0 + W);
    r.window_ms = 10_000;
    b.add_record(&r);
    assert_eq!(b.window_start("h1", T0 + 25_000), T0 + 20_000);
    // A host without records: the fleet's window size.
    assert_eq!(b.window_start("other", T0 + 25_000), T0 + 20_000);
    assert_eq!(Books::new().window_start("other", T0 + 25_000), T0);
    assert_eq!(
        Books::with_window(5_000).window_start("other", T0 + 27_000),
        T0 + 25_000
    );
    found(&mut b, "h1", T0 + 25_000, 0..1);
    assert_eq!(b.rows(LATE, GRACE, i64::MIN, i64::MAX).len(), 2);
    assert_eq!(b.rows(LATE, GRACE, T0 + 1, i64::MAX).len(), 1);
    assert_eq!(b.rows(LATE, GRACE, i64::MIN, T0 + 1).len(), 1);
    b.prune(T0 + 1);
    assert_eq!(b.rows(LATE, GRACE, i64::MIN, i64::MAX).len(), 1);
}

#[test]
fn forgetting_a_topic_drops_what_was_found_not_what_was_reported() {
    let mut b = Books::new();
    b.add_record(&record("h1", "b1", 1, T0, 2, 0, 0, T0 + W));
    found(&mut b, "h1", T0, 0..2);
    b.forget_found("events.click");
    let row = only(&b, LATE);
    assert_eq!((row.missing, row.status), (2, Status::Incomplete));
}

#[test]
fn spooled_events_quarantined_on_replay_are_reported_and_so_missing() {
    // Five answered 200, three answered 202 and then refused for good by Kafka on replay: the
    // clients were told all eight are durable, the topic holds five.
    let mut b = Books::new();
    b.add_record(&AuditRecord {
        events_quarantined: Some(3),
        ..record("h1", "b1", 1, T0, 5, 0, 0, T0 + W)
    });
    found(&mut b, "h1", T0, 0..5);
    let row = only(&b, LATE);
    assert_eq!((row.reported, row.found, row.missing), (8, 5, 3));
    assert_eq!(row.status, Status::Incomplete);
}
