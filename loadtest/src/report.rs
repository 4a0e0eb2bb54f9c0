//! Result rows and the Markdown tables printed for BENCHMARKS.md.

use std::fmt::Write;

/// Acknowledged versus found in Kafka.
#[derive(Debug, Clone)]
pub struct Check {
    /// Accepted events in 200 answers (bare producer: acknowledged records).
    pub acked_events: u64,
    /// Messages found in the event topics.
    pub found_events: u64,
    /// Rejected events in 200 answers (each has a dead letter).
    pub acked_dead: u64,
    pub found_dead: u64,
}

impl Check {
    /// Nothing acknowledged is missing. More than acknowledged can happen after a 503 (the
    /// producer keeps retrying a message whose request gave up), so extra is reported, not failed.
    pub fn ok(&self) -> bool {
        self.found_events >= self.acked_events && self.found_dead >= self.acked_dead
    }

    pub fn describe(&self) -> String {
        let part = |acked: u64, found: u64| {
            if found == acked {
                format!("{found}/{acked}")
            } else if found > acked {
                format!("{found}/{acked} (+{} unacked)", found - acked)
            } else {
                format!("{found}/{acked} (MISSING {})", acked - found)
            }
        };
        let verdict = if self.ok() { "ok" } else { "FAIL" };
        if self.acked_dead == 0 && self.found_dead == 0 {
            format!("{verdict} {}", part(self.acked_events, self.found_events))
        } else {
            format!(
                "{verdict} {} + dead letters {}",
                part(self.acked_events, self.found_events),
                part(self.acked_dead, self.found_dead)
            )
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub events_per_sec: f64,
    /// Request bodies on the wire (HTTP phases) or Thrift payloads (bare producer), 10^6 B/s.
    pub mb_per_sec: f64,
    /// p50, p99, p99.9 in ms.
    pub latency_ms: Option<[f64; 3]>,
    /// CPU seconds per million events of the gateway (bare producer: of the producer process).
    pub gateway_cpu_per_m: Option<f64>,
    pub broker_cpu_per_m: f64,
    pub peak_rss_mib: Option<f64>,
    /// Non-200 answers, transport errors, failed deliveries.
    pub failures: u64,
    pub requests_per_sec: Option<f64>,
    pub check: Option<Check>,
    pub note: String,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

/// The main table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| phase | events/s | MB/s | p50 ms | p99 ms | p99.9 ms | CPU-s / M events | broker CPU-s / M | peak RSS MiB | failed | Kafka check |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let [p50, p99, p999] = r.latency_ms.map_or([None; 3], |l| l.map(Some));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            r.label,
            r.events_per_sec,
            opt(Some(r.mb_per_sec), 1),
            opt(p50, 1),
            opt(p99, 1),
            opt(p999, 1),
            opt(r.gateway_cpu_per_m, 1),
            r.broker_cpu_per_m,
            opt(r.peak_rss_mib, 0),
            r.failures,
            r.check.as_ref().map_or("–".into(), Check::describe),
        );
    }
    s
}

/// Notes under the table, one per row.
pub fn notes(rows: &[Row]) -> String {
    rows.iter()
        .map(|r| format!("- {}: {}\n", r.label, r.note))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-phase medians over repetitions (`reps[i]` is one repetition's rows, same order).
pub fn medians(reps: &[Vec<Row>]) -> Vec<Row> {
    let Some(first) = reps.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let col = |f: &dyn Fn(&Row) -> f64| median(reps.iter().map(|r| f(&r[i])).collect());
            let some = |f: &dyn Fn(&Row) -> Option<f64>| {
                f(&first[i]).map(|_| col(&|r| f(r).unwrap_or(f64::NAN)))
            };
            let latency = first[i]
                .latency_ms
                .map(|_| [0, 1, 2].map(|q| col(&|r| r.latency_ms.map_or(f64::NAN, |l| l[q]))));
            let checks_ok = reps
                .iter()
                .all(|r| r[i].check.as_ref().is_none_or(Check::ok));
            Row {
                label: first[i].label.clone(),
                events_per_sec: col(&|r| r.events_per_sec),
                mb_per_sec: col(&|r| r.mb_per_sec),
                latency_ms: latency,
                gateway_cpu_per_m: some(&|r| r.gateway_cpu_per_m),
                broker_cpu_per_m: col(&|r| r.broker_cpu_per_m),
                peak_rss_mib: some(&|r| r.peak_rss_mib),
                failures: reps.iter().map(|r| r[i].failures).sum(),
                requests_per_sec: some(&|r| r.requests_per_sec),
                check: None,
                note: format!(
                    "median of {}; Kafka checks {}",
                    reps.len(),
                    if checks_ok { "all ok" } else { "NOT all ok" }
                ),
            }
        })
        .collect()
}

/// The verdict against the targets, from one set of suite rows
/// (producer, HTTP ceiling, closed-loop gateway, open-loop gateway, producer floor).
pub fn verdict(rows: &[Row]) -> String {
    let [producer, http, peak, open, floor, many @ ..] = rows else {
        return String::new();
    };
    let pct = |a: f64, b: f64| 100.0 * a / b.max(1e-9);
    let p99 = open.latency_ms.map_or(f64::NAN, |l| l[1]);
    let floor_p99 = floor.latency_ms.map_or(f64::NAN, |l| l[1]);
    let rss = [peak.peak_rss_mib, open.peak_rss_mib]
        .into_iter()
        .flatten()
        .fold(0.0, f64::max);
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let r_prod = pct(peak.events_per_sec, producer.events_per_sec);
    let mut out = format!(
        "- gateway peak / bare producer: {r_prod:.0}% (target ≥ 60%: {})\n\
         - gateway peak / HTTP ceiling: {:.0}%\n\
         - open loop p99 at {:.0} req/s: {p99:.1} ms; the bare producer's p99 at the same rate: \
         {floor_p99:.1} ms ({:.1}×; target ≤ 2×: {})\n\
         - gateway peak RSS: {rss:.0} MiB (target ≤ 150 MiB: {})\n",
        mark(r_prod >= 60.0),
        pct(peak.events_per_sec, http.events_per_sec),
        open.requests_per_sec.unwrap_or(f64::NAN),
        p99 / floor_p99,
        mark(p99 <= 2.0 * floor_p99),
        mark(rss <= 150.0),
    );
    let by_count = |n: usize| {
        many.iter()
            .find(|r| r.label == crate::suite::schemas_label(n))
            .map(|r| r.events_per_sec)
    };
    if let Some(one) = by_count(1) {
        for (n, target) in [(50, 90.0), (200, 85.0)] {
            if let Some(v) = by_count(n) {
                let r = pct(v, one);
                out.push_str(&format!(
                    "- {n} schemas / 1 schema: {r:.0}% (target ≥ {target:.0}%: {})\n",
                    mark(r >= target)
                ));
            }
        }
    }
    out
}
