//! Retry timing: full-jitter exponential backoff, `Retry-After` as a clamped floor, and a retry
//! budget (a token bucket) so a dead gateway sees a bounded retry rate however many batches fail.

use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

use crate::config::RetryConfig;

/// Why a batch is retried (the `cause` label of `eventpipe_client_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// 503 (`unavailable` or `overloaded`).
    Unavailable,
    /// 429.
    RateLimited,
    /// 408 or our own request timeout.
    Timeout,
    /// Another 5xx (a 500 `dead_letter_refused` retries only its `failed` events).
    ServerError,
    /// Connection refused, reset, DNS, TLS.
    Connection,
}

impl RetryCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Unavailable => "unavailable",
            RetryCause::RateLimited => "rate_limited",
            RetryCause::Timeout => "timeout",
            RetryCause::ServerError => "server_error",
            RetryCause::Connection => "connection",
        }
    }
}

/// The ceiling of the jitter window before attempt `attempt + 1` (`attempt` ≥ 1 failed so far).
pub fn backoff_ceiling(cfg: &RetryConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    cfg.base.saturating_mul(1u32 << exp).min(cfg.max_backoff)
}

/// How long to wait after failed attempt `attempt`: uniform in [0, ceiling] (full jitter), but
/// never less than the gateway's `Retry-After`, itself clamped to `retry_after_max`.
pub fn delay(
    cfg: &RetryConfig,
    attempt: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let ceiling = backoff_ceiling(cfg, attempt);
    let jitter = Duration::from_secs_f64(rng.random::<f64>() * ceiling.as_secs_f64());
    match retry_after {
        Some(floor) => jitter.max(floor.min(cfg.retry_after_max)),
        None => jitter,
    }
}

/// `Retry-After` as seconds or an HTTP date (relative to `now`); anything else is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Token bucket for retries: refills `per_sec` continuously plus `ratio` per success, holds at
/// most `burst`; each retry takes one token.
#[derive(Debug)]
pub struct Budget {
    tokens: f64,
    per_sec: f64,
    ratio: f64,
    burst: f64,
    last: Instant,
}

impl Budget {
    pub fn new(cfg: &RetryConfig, now: Instant) -> Budget {
        Budget {
            tokens: cfg.budget_burst,
            per_sec: cfg.budget_per_sec,
            ratio: cfg.budget_ratio,
            burst: cfg.budget_burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        self.last = self.last.max(now);
    }

    /// A successful request earns `ratio` tokens.
    pub fn success(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + self.ratio).min(self.burst);
    }

    /// Takes a token for a retry, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RetryConfig {
        RetryConfig {
            base: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_after_max: Duration::from_secs(30),
            ..RetryConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_in_the_window() {
        let c = cfg();
        assert_eq!(backoff_ceiling(&c, 1), Duration::from_millis(100));
        assert_eq!(backoff_ceiling(&c, 2), Duration::from_millis(200));
        assert_eq!(backoff_ceiling(&c, 4), Duration::from_millis(800));
        assert_eq!(backoff_ceiling(&c, 7), Duration::from_secs(5));
        assert_eq!(backoff_ceiling(&c, 1000), Duration::from_secs(5));
        let mut rng = rand::rng();
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for _ in 0..2000 {
            let d = delay(&c, 3, None, &mut rng);
            assert!(d <= Duration::from_millis(400), "{d:?}");
            min = min.min(d);
            max = max.max(d);
        }
        // Full jitter: the whole window is used, not just its top.
        assert!(
            min < Duration::from_millis(40) && max > Duration::from_millis(360),
            "{min:?} {max:?}"
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_is_clamped() {
        let c = cfg();
        let mut rng = rand::rng();
        for _ in 0..200 {
            let d = delay(&c, 1, Some(Duration::from_secs(3)), &mut rng);
            assert_eq!(
                d,
                Duration::from_secs(3),
                "a floor above the backoff window wins"
            );
            let d = delay(&c, 1, Some(Duration::from_secs(3600)), &mut rng);
            assert_eq!(d, Duration::from_secs(30), "clamped to retry_after_max");
            let d = delay(&c, 10, Some(Duration::from_millis(1)), &mut rng);
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_secs(5));
        }
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(12))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn budget_bounds_the_retry_rate_when_everything_fails() {
        let c = RetryConfig {
            budget_per_sec: 2.0,
            budget_burst: 4.0,
            budget_ratio: 0.5,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut b = Budget::new(&c, t0);
        // The burst, then nothing until the bucket refills.
        for _ in 0..4 {
            assert!(b.take(t0).is_ok());
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Over 10 s of constant failure at most burst + 10 × per_sec retries happen.
        let mut granted = 0;
        for ms in (0..10_000).step_by(10) {
            if b.take(t0 + Duration::from_millis(ms)).is_ok() {
                granted += 1;
            }
        }
        assert!((19..=20).contains(&granted), "{granted}");
        // Successes fund retries.
        let t1 = t0 + Duration::from_secs(10);
        let _ = b.take(t1);
        b.success(t1);
        b.success(t1);
        assert!(b.take(t1).is_ok());
    }
}
