//! Parsing for the drift test: metric names and exact label matchers out of PromQL, and the
//! samples of a Prometheus text exposition. Deliberately small: enough for the expressions in
//! `deploy/`, with unit tests of the cases they use.

use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names an expression reads.

/// Metric names (and recording-rule names, which contain ':') read by a PromQL expression:
/// identifiers outside strings, label matchers `{...}`, ranges `[...]` and `by/without/on/
/// ignoring/group_left/group_right (...)` lists that are not function calls, keywords or numbers.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        // Aggregations, also when `by (...)` comes between them and their parentheses.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut skip_next_parens = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                while i < b.len() && b[i] != close {
                    if b[i] == b'"' {
                        i += 1;
                        while i < b.len() && b[i] != b'"' {
                            i += if b[i] == b'\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            b'(' if skip_next_parens => {
                skip_next_parens = false;
                while i < b.len() && b[i] != b')' {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // A Grafana variable ($__rate_interval, ${datasource}).
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_{}".contains(&b[i])) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
                let call = j < b.len() && b[j] == b'(';
                if LABEL_LISTS.contains(&word) {
                    skip_next_parens = true;
                } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    out.insert(word.to_string());
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                // Numbers, durations (5m), exponents (1e3).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn promql_names_are_parsed_out_of_expressions() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, path) (rate(eventpipe_x_bucket{instance=~"$instance", a="{b}"}[$__rate_interval])))
           / on (instance) group_left (job) eventpipe_y > 1e3 and time() - max(job:eventpipe_z:rate5m offset 5m) > 0
           or absent(eventpipe_w) unless sum without (reason) (eventpipe_v) or vector(0)"#,
    );
    let want = [
        "eventpipe_v",
        "eventpipe_w",
        "eventpipe_x_bucket",
        "eventpipe_y",
        "job:eventpipe_z:rate5m",
    ];
    assert_eq!(names.into_iter().collect::<Vec<_>>(), want);
}

/// `label="value"` pairs of a matcher list or an exposition's label set (the text after `{`,
/// up to its `}`), with the operator before each value: `=`, `!=`, `=~`, `!~`.
fn label_pairs(inner: &str) -> Vec<(String, String, String)> {
    let b = inner.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() && b[i] != b'}' {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let label = inner[start..i].to_string();
        let op_start = i;
        while i < b.len() && b"=!~ ".contains(&b[i]) {
            i += 1;
        }
        let op = inner[op_start..i].trim().to_string();
        if i >= b.len() || b[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut value = String::new();
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
            }
            value.push(b[i] as char);
            i += 1;
        }
        i += 1;
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        if !label.is_empty() {
            out.push((label, op, value));
        }
    }
    out
}

/// (metric, label, value) of every exact `label="value"` matcher in `expr` that does not hold a
/// Grafana variable: a renamed label value would silence an alert as surely as a renamed metric.
pub fn equality_matchers(expr: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (at, _) in expr.match_indices('{') {
        let before = &expr[..at];
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let name = &before[name_start..];
        if name.is_empty() || name.contains(':') {
            continue;
        }
        for (label, op, value) in label_pairs(&expr[at + 1..]) {
            if op == "=" && !value.contains('$') {
                out.push((name.to_string(), label, value));
            }
        }
    }
    out
}

#[test]
pub fn equality_matchers_are_parsed_out_of_expressions() {
    let got = equality_matchers(
        r#"sum(rate(eventpipe_a{status=~"5..", status!="503", reason="x", instance=~"$i"}[5m])) / eventpipe_b{q = "0.99"} + {c="d"}"#,
    );
    let want = [("eventpipe_a", "reason", "x"), ("eventpipe_b", "q", "0.99")];
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// (name, label, value) of every sample in a Prometheus text exposition.
pub fn exported_labels(text: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, rest)) = line.split_once('{') {
            for (label, _, value) in label_pairs(rest) {
                out.insert((name.to_string(), label, value));
            }
        }
    }
    out
}

/// Metric names in a Prometheus text exposition, histogram and summary suffixes removed.
pub fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        names.insert(name.to_string());
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                names.insert(base.to_string());
            }
        }
    }
    names
}

pub fn base_name(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}
