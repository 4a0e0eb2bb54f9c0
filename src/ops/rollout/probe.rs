//! What `eventpipe rollout` reads from a host's admin listener: `/readyz` and `/metrics` over a
//! minimal plain-HTTP GET (HTTP/1.0, so the answer is never chunked and ends when the server
//! closes), the few Prometheus series it judges by, and the health verdict from two scrapes.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics as m;

/// Largest admin answer read (a `/metrics` page is tens of kilobytes).
const MAX_ANSWER_BYTES: u64 = 16 << 20;

/// A host's admin address, `http://HOST:PORT[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdminUrl {
    /// As given on the command line (how hosts are named in messages and `--resume-from`).
    pub url: String,
    authority: String,
    prefix: String,
}

impl AdminUrl {
    pub fn parse(url: &str) -> Result<AdminUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("admin URL {url:?} must start with http:// (the admin listener is plain HTTP)")
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("admin URL {url:?} has no HOST:PORT"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            || authority.ends_with(']') && authority.starts_with('[')
        {
            authority.to_string()
        } else if authority.contains(':') && !authority.starts_with('[') {
            return Err(format!("admin URL {url:?}: bad port"));
        } else {
            format!("{authority}:80")
        };
        Ok(AdminUrl {
            url: url.trim_end_matches('/').to_string(),
            authority,
            prefix: prefix.to_string(),
        })
    }
}

impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// One GET: the status code and the body, within `timeout`.
pub async fn get(admin: &AdminUrl, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    tokio::time::timeout(timeout, get_inner(admin, path))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

async fn get_inner(admin: &AdminUrl, path: &str) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(&admin.authority)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET {}{path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: eventpipe-rollout\r\n\r\n",
        admin.prefix, admin.authority
    );
    let answer = exchange(&mut stream, request.as_bytes(), MAX_ANSWER_BYTES).await?;
    parse_answer(&answer)
}

/// Writes `request`, then reads the answer until the peer closes (at most `max` bytes): one
/// HTTP/1.0 GET, or one HAProxy runtime-API command.
pub(super) async fn exchange<S>(stream: &mut S, request: &[u8], max: u64) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(max)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(answer)
}

fn parse_answer(answer: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "incomplete HTTP answer".to_string())?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status line".to_string())?;
    Ok((status, body.to_string()))
}

/// Sum of the samples of `name` whose labels satisfy `labels` (Prometheus text format; `None`
/// when no sample of `name` is present).
pub fn sum_series(text: &str, name: &str, labels: impl Fn(&str) -> bool) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // another metric whose name starts with `name`
        };
        // "value [timestamp]"
        let Some(v) = value.split_whitespace().next().and_then(parse_value) else {
            continue;
        };
        if labels(label_text) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// The value of label `key` in a label list such as `status="503",method="POST"`.
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// What one scrape of a host said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// `/readyz` answered 200.
    pub ready: bool,
    /// Why not ready: the `/readyz` status and body, or the connection error.
    pub not_ready: String,
    /// `/metrics` answered.
    pub metrics: bool,
    pub spool_records: Option<f64>,
    pub spool_bytes: Option<f64>,
    /// `eventpipe_http_requests_total`, all statuses and 5xx only.
    pub requests: f64,
    pub errors_5xx: f64,
    /// `eventpipe_start_time_seconds`: tells a restarted process from the one before.
    pub start_time: Option<f64>,
}

impl Scrape {
    pub fn from_metrics(text: &str) -> Scrape {
        let any = |_: &str| true;
        Scrape {
            metrics: true,
            spool_records: sum_series(text, m::SPOOL_RECORDS, any),
            spool_bytes: sum_series(text, m::SPOOL_BYTES, any),
            requests: sum_series(text, m::HTTP_REQUESTS, any).unwrap_or(0.0),
            errors_5xx: sum_series(text, m::HTTP_REQUESTS, |l| {
                label(l, "status").is_some_and(|s| s.len() == 3 && s.starts_with('5'))
            })
            .unwrap_or(0.0),
            start_time: sum_series(text, m::START_TIME, any),
            ..Scrape::default()
        }
    }
}

/// Scrapes `/readyz` and `/metrics` of one host.
pub async fn scrape(admin: &AdminUrl, timeout: Duration) -> Scrape {
    let (ready, metrics) = tokio::join!(
        get(admin, "/readyz", timeout),
        get(admin, "/metrics", timeout)
    );
    let mut s = match metrics {
        Ok((200, text)) => Scrape::from_metrics(&text),
        _ => Scrape::default(),
    };
    match ready {
        Ok((200, _)) => s.ready = true,
        Ok((status, body)) => {
            s.not_ready = format!("/readyz answered {status} {}", body.trim());
        }
        Err(e) => s.not_ready = format!("/readyz not answering ({e})"),
    }
    s
}

/// Only readiness (the fast poll while a host restarts).
pub async fn ready(admin: &AdminUrl, timeout: Duration) -> Result<(), String> {
    match get(admin, "/readyz", timeout).await {
        Ok((200, _)) => Ok(()),
        Ok((status, body)) => Err(format!("/readyz answered {status} {}", body.trim())),
        Err(e) => Err(format!("/readyz not answering ({e})")),
    }
}

/// Growth of a counter between two scrapes; a counter that went down was reset by a restart,
/// so everything it counts now is new.
pub fn counter_delta(before: f64, after: f64) -> f64 {
    if after < before {
        after
    } else {
        after - before
    }
}

/// The limits a fleet check applies.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Largest tolerated share of 5xx answers among a host's requests since the last check.
    pub max_5xx_ratio: f64,
}

/// Judges one host from a scrape `window` apart (`a` then `b`) and the counters of the last
/// check (`last`, for the 5xx count across the whole step): `Err((check, detail))` names the
/// failed check.
pub fn judge(
    a: &Scrape,
    b: &Scrape,
    last: Option<&Scrape>,
    t: Thresholds,
) -> Result<String, (&'static str, String)> {
    if !a.ready {
        return Err(("ready", a.not_ready.clone()));
    }
    if !b.ready {
        return Err(("ready", b.not_ready.clone()));
    }
    if !b.metrics {
        return Err(("metrics", "/metrics not answering".into()));
    }
    let grew = |x: Option<f64>, y: Option<f64>| matches!((x, y), (Some(x), Some(y)) if y > x);
    if grew(a.spool_records, b.spool_records) {
        return Err((
            "spool",
            format!(
                "spool growing: {} -> {} records, {} -> {} bytes",
                a.spool_records.unwrap_or(0.0),
                b.spool_records.unwrap_or(0.0),
                a.spool_bytes.unwrap_or(0.0),
                b.spool_bytes.unwrap_or(0.0)
            ),
        ));
    }
    let base = last.filter(|l| l.metrics).unwrap_or(a);
    let requests = counter_delta(base.requests, b.requests);
    let errors = counter_delta(base.errors_5xx, b.errors_5xx);
    if errors > 0.0 && errors > t.max_5xx_ratio * requests {
        return Err((
            "5xx",
            format!(
                "{errors} of {requests} requests answered 5xx since the last check (limit {}%)",
                t.max_5xx_ratio * 100.0
            ),
        ));
    }
    Ok(format!(
        "spool {} records, 5xx {errors}/{requests}",
        b.spool_records.unwrap_or(0.0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP eventpipe_http_requests_total x\n\
        # TYPE eventpipe_http_requests_total counter\n\
        eventpipe_http_requests_total{status=\"200\"} 90\n\
        eventpipe_http_requests_total{status=\"503\"} 4\n\
        eventpipe_http_requests_total{status=\"500\",route=\"x\"} 1\n\
        eventpipe_http_requests_total{status=\"429\"} 5 1700000000000\n\
        eventpipe_spool_records 12\n\
        eventpipe_spool_records_other 99\n\
        eventpipe_spool_bytes 4096\n\
        eventpipe_start_time_seconds 1.7e9\n";

    #[test]
    fn parses_the_series_rollout_judges_by() {
        let s = Scrape::from_metrics(TEXT);
        assert_eq!(s.requests, 100.0);
        assert_eq!(s.errors_5xx, 5.0);
        assert_eq!(s.spool_records, Some(12.0));
        assert_eq!(s.spool_bytes, Some(4096.0));
        assert_eq!(s.start_time, Some(1.7e9));
        assert_eq!(sum_series(TEXT, "eventpipe_nothing", |_| true), None);
        assert_eq!(
            sum_series("x{a=\"1\"} +Inf\n", "x", |_| true),
            Some(f64::INFINITY)
        );
        assert_eq!(label("a=\"1\",status=\"503\"", "status"), Some("503"));
    }

    #[test]
    fn parses_admin_urls_and_answers() {
        let u = AdminUrl::parse("http://127.0.0.1:9100/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.prefix.as_str()),
            ("127.0.0.1:9100", "")
        );
        assert_eq!(u.url, "http://127.0.0.1:9100");
        let u = AdminUrl::parse("http://gw1/admin").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.prefix.as_str()),
            ("gw1:80", "/admin")
        );
        assert!(AdminUrl::parse("https://gw1:9100").is_err());
        assert!(AdminUrl::parse("http://gw1:x").is_err());
        assert_eq!(
            parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\n{\"ready\":false}"),
            Ok((503, "{\"ready\":false}".into()))
        );
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    fn scrape(ready: bool, spool: f64, requests: f64, errors: f64) -> Scrape {
        Scrape {
            ready,
            not_ready: if ready { "" } else { "/readyz answered 503" }.into(),
            metrics: true,
            spool_records: Some(spool),
            spool_bytes: Some(spool * 100.0),
            requests,
            errors_5xx: errors,
            start_time: None,
        }
    }

    #[test]
    fn judges_readiness_spool_growth_and_5xx() {
        let t = Thresholds {
            max_5xx_ratio: 0.01,
        };
        let ok = scrape(true, 0.0, 100.0, 0.0);
        assert!(judge(&ok, &scrape(true, 0.0, 200.0, 0.0), None, t).is_ok());
        assert_eq!(
            judge(&ok, &scrape(false, 0.0, 200.0, 0.0), None, t)
                .unwrap_err()
                .0,
            "ready"
        );
        assert_eq!(
            judge(&ok, &scrape(true, 5.0, 200.0, 0.0), None, t)
                .unwrap_err()
                .0,
            "spool"
        );
        // A spool that shrinks (replay after an outage) is healthy.
        assert!(judge(
            &scrape(true, 9.0, 0.0, 0.0),
            &scrape(true, 5.0, 0.0, 0.0),
            None,
            t
        )
        .is_ok());
        // 1 of 1000 is within 1%; 2 of 100 is not.
        assert!(judge(&ok, &scrape(true, 0.0, 1100.0, 1.0), None, t).is_ok());
        assert_eq!(
            judge(&ok, &scrape(true, 0.0, 200.0, 2.0), None, t)
                .unwrap_err()
                .0,
            "5xx"
        );
        // 5xx since the last check count, not only within the window; a reset counter counts
        // from zero.
        let (last, now) = (scrape(true, 0.0, 50.0, 0.0), scrape(true, 0.0, 100.0, 5.0));
        assert!(judge(&now, &now, None, t).is_ok());
        assert_eq!(judge(&now, &now, Some(&last), t).unwrap_err().0, "5xx");
        let restarted = scrape(true, 0.0, 10.0, 3.0);
        assert_eq!(
            judge(&restarted, &restarted, Some(&ok), t).unwrap_err().0,
            "5xx"
        );
    }
}
