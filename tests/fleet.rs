//! The fleet test: three gateway processes behind a real HAProxy (`deploy/haproxy/haproxy.cfg`)
//! in front of one durable Tansu broker, clients posting through HAProxy and remembering what
//! was acknowledged. One fault per test, each on a fresh fleet:
//! - a host `kill -9`ed for good while the broker is frozen, so its spool holds acknowledged
//!   events; its spool is then drained from its directory, as an operator would from the disk;
//! - a host SIGTERMed: HAProxy takes it out while it drains (its shutdown grace outlasts the
//!   health checks), then it comes back;
//! - one host's broker connections cut (a firewall rule on its group id only).
//!
//! The surviving hosts must keep acknowledging, and the independent consumer must find every
//! acknowledged event. Each test prints a row of RELIABILITY.md's fleet table (also appended to
//! `target/fleet-audit.jsonl`): `cargo test --test fleet -- --nocapture --test-threads 1`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fault::{audit, signal, GatewayProc, Ledger};
use common::fleet::{drain_orphaned_spool, report_fleet, Fleet, FleetRow, Load, SERVERS};

/// Fleets run one at a time: each is five processes on a shared two-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLIENTS: usize = 6;
const WAIT: Duration = Duration::from_secs(60);

/// Stops the load, waits for the running hosts' spools to drain, and returns the ledger.
async fn settle(fleet: &mut Fleet, load: Load) -> Arc<Ledger> {
    let ledger = load.stop().await;
    fleet.wait_spools_empty(Duration::from_secs(120)).await;
    ledger
}

/// Audits the topic against the ledger and reports the row; acknowledged-but-missing must be 0.
fn audit_row(fleet: &Fleet, ledger: &Ledger, fault: &str) -> FleetRow {
    let (brokers, topic) = (fleet.broker.brokers(), fleet.click_topic());
    let result = tokio::task::block_in_place(|| audit(fault, 1, &brokers, &topic, ledger));
    let row = FleetRow {
        hosts: SERVERS.len(),
        fault: fault.into(),
        acked: result.acked,
        acked_but_missing: result.acked_but_missing,
        duplicates: result.duplicates,
        errors: ledger.error_counts(),
        lb_retries: fleet.lb.server_total("wretr"),
        lb_redispatches: fleet.lb.server_total("wredis"),
    };
    let line = report_fleet(&row);
    assert_eq!(
        result.acked_but_missing, 0,
        "acknowledged events missing from Kafka: {line}\nconsumer: {}",
        result.consumer_errors
    );
    assert_eq!(result.unacked_but_present, 0, "{line}");
    row
}

/// Polls a gateway's spool gauge until it holds at least one record.
async fn wait_spooled(gw: &GatewayProc, who: &str) {
    let deadline = Instant::now() + WAIT;
    while gw.gauge("eventpipe_spool_records").await.unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "{who} never spooled: {}",
            gw.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_for_good_with_a_full_spool_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start(&[]).await;
    let load = Load::start(&fleet.lb.url(), CLIENTS);
    load.wait_acked(0, 300, WAIT, "before the fault").await;

    // Freeze the broker until gw1 has spooled acknowledged (202) events, then kill gw1 for good.
    signal(fleet.broker.pid(), "STOP");
    wait_spooled(&fleet.gateways[0], "gw1, with the broker frozen,").await;
    fleet.gateways[0].kill9();
    let at_kill = load.ledger.acked_count();
    signal(fleet.broker.pid(), "CONT");

    // The survivors keep serving, and HAProxy has taken the dead host out.
    load.wait_acked(at_kill, 300, WAIT, "after gw1 was killed")
        .await;
    let lb = &fleet.lb;
    let state =
        tokio::task::block_in_place(|| lb.wait_state("gw1", WAIT, |s| s.starts_with("DOWN")));
    assert!(state.is_ok(), "haproxy still sees gw1 as {state:?}");

    let ledger = settle(&mut fleet, load).await;
    // The dead host's disk, replayed by an operator.
    let dead_spool = fleet.gateways[0].spool_dir.clone();
    let replayed = drain_orphaned_spool(&dead_spool, &fleet.broker.brokers(), &fleet.topics).await;
    assert!(replayed > 0, "gw1's spool held nothing to drain");
    audit_row(
        &fleet,
        &ledger,
        "gw1 `kill -9` for good while the broker is frozen (its spool held acknowledged events), spool drained",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_sigtermed_is_taken_out_of_the_pool_before_it_stops() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start(&[]).await;
    let load = Load::start(&fleet.lb.url(), CLIENTS);
    load.wait_acked(0, 300, WAIT, "before the fault").await;

    signal(fleet.gateways[1].pid(), "TERM");
    let lb = &fleet.lb;
    let state =
        tokio::task::block_in_place(|| lb.wait_state("gw2", WAIT, |s| s.starts_with("DOWN")));
    assert!(
        state.is_ok(),
        "haproxy still sees the draining gw2 as {state:?}"
    );
    assert!(
        fleet.gateways[1].running(),
        "gw2 had exited before haproxy took it out: its shutdown_grace_secs must outlast the \
         health checks' time to mark it DOWN (deploy/haproxy/haproxy.cfg)"
    );
    tokio::task::block_in_place(|| fleet.gateways[1].wait_clean_exit());
    let at_exit = load.ledger.acked_count();
    load.wait_acked(at_exit, 300, WAIT, "after gw2 stopped")
        .await;

    // It comes back on the same spool and ports, and HAProxy puts it back.
    fleet.gateways[1].start();
    let lb = &fleet.lb;
    let state = tokio::task::block_in_place(|| lb.wait_state("gw2", WAIT, |s| s == "UP"));
    assert!(state.is_ok(), "haproxy did not put gw2 back: {state:?}");
    let back = load.ledger.acked_count();
    load.wait_acked(back, 300, WAIT, "after gw2 came back")
        .await;

    let ledger = settle(&mut fleet, load).await;
    audit_row(&fleet, &ledger, "gw2 SIGTERM (drained, then restarted)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_cut_off_the_broker_spools_and_catches_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::start(&[]).await;
    let load = Load::start(&fleet.lb.url(), CLIENTS);
    load.wait_acked(0, 300, WAIT, "before the fault").await;

    let cut = fleet.cut_broker(2);
    // gw3 answers from its spool (202) and stays in the pool: its /readyz holds while the
    // spool accepts.
    wait_spooled(&fleet.gateways[2], "gw3, cut off the broker,").await;
    let at_cut = load.ledger.acked_count();
    load.wait_acked(at_cut, 300, WAIT, "while gw3 was cut off")
        .await;
    wait_spooled(&fleet.gateways[2], "gw3, still cut off,").await;
    assert_eq!(
        fleet.lb.server_states().get("gw3").map(String::as_str),
        Some("UP"),
        "a host that can still spool must stay in the pool"
    );
    drop(cut);

    let ledger = settle(&mut fleet, load).await;
    audit_row(
        &fleet,
        &ledger,
        "gw3's broker connections cut (reset, refused) for a while",
    );
}
