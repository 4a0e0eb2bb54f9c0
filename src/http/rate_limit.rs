//! Per-client-IP token buckets (requests per second), checked before the body is read.
//!
//! Memory is bounded: a bucket that has refilled is indistinguishable from a fresh one and is
//! pruned (`retain_recent`) every few seconds and whenever the map reaches
//! `rate_limit.max_tracked_ips`. If it is still full after pruning — that many addresses busy at
//! once, e.g. an attacker rotating addresses — an address without a bucket of its own is
//! checked against one of [`OVERFLOW_SLOTS`] buckets chosen by hashing it: limits keep holding
//! (coarser), memory does not grow. IPv6 clients are limited per /64, the block one subscriber
//! usually gets, so rotating within it buys nothing.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::DefaultKeyedRateLimiter;

use crate::config::RateLimitConfig;
use crate::metrics as m;

/// Buckets shared by the addresses that find the map full.
pub const OVERFLOW_SLOTS: u16 = 1024;

/// How often idle buckets are pruned at most (also done when the map is full).
const PRUNE_EVERY: Duration = Duration::from_secs(5);

pub struct IpLimiter {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    overflow: DefaultKeyedRateLimiter<u16>,
    max_tracked: usize,
    hasher: std::hash::RandomState,
    last_prune: AtomicI64,
    last_full_prune: AtomicI64,
}

impl IpLimiter {
    /// `None` when the per-IP limit is off.
    pub fn new(cfg: &RateLimitConfig) -> Option<Self> {
        let quota = super::keys::quota(cfg.ip_requests_per_sec, cfg.ip_burst())?;
        Some(IpLimiter {
            buckets: DefaultKeyedRateLimiter::dashmap(quota),
            overflow: DefaultKeyedRateLimiter::dashmap(quota),
            max_tracked: cfg.max_tracked_ips,
            hasher: std::hash::RandomState::new(),
            last_prune: AtomicI64::new(crate::now_ms()),
            last_full_prune: AtomicI64::new(0),
        })
    }

    /// Takes one request's token for `ip`. `Err` carries the wait until the next one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = bucket_of(ip);
        let mut len = self.buckets.len();
        // Pruning walks the whole map: every few seconds, and at most once a second when full.
        let full = len >= self.max_tracked;
        if crate::at_most_every(&self.last_prune, PRUNE_EVERY)
            || full && crate::at_most_every(&self.last_full_prune, Duration::from_secs(1))
        {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
            self.overflow.retain_recent();
            len = self.buckets.len();
            metrics::gauge!(m::RATE_LIMIT_TRACKED_IPS).set(len as f64);
        }
        // When full, even an address that has a bucket is checked against its shared one
        // (governor has no lookup that does not insert): coarser, never unlimited.
        let result = if len < self.max_tracked {
            self.buckets.check_key(&ip)
        } else {
            metrics::counter!(m::RATE_LIMIT_OVERFLOW).increment(1);
            let slot = self.hasher.hash_one(ip) % u64::from(OVERFLOW_SLOTS);
            self.overflow.check_key(&(slot as u16))
        };
        result.map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Buckets held now (tests and the gauge).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// IPv6 addresses share a bucket per /64.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// Seconds for a `Retry-After` header: the wait rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u32, max_tracked: usize) -> IpLimiter {
        let cfg = RateLimitConfig {
            ip_requests_per_sec: rate,
            ip_burst: Some(burst),
            max_tracked_ips: max_tracked,
            ..RateLimitConfig::default()
        };
        IpLimiter::new(&cfg).unwrap()
    }

    #[test]
    fn off_when_the_rate_is_zero() {
        assert!(IpLimiter::new(&RateLimitConfig::default()).is_none());
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        // One request per ~17 minutes: nothing refills during the test.
        let l = limiter(0.001, 1, 100);
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        let wait = l
            .check("2001:db8:1:2:ffff::9".parse().unwrap())
            .unwrap_err();
        assert!(retry_after_secs(wait) > 1);
        assert!(l.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    /// Rotating addresses cannot grow the map past its cap; the addresses beyond it are still
    /// limited (through the shared buckets), not waved through.
    #[test]
    fn memory_is_capped_when_addresses_rotate() {
        let l = limiter(0.001, 1, 50);
        for i in 0..20_000u32 {
            let _ = l.check(IpAddr::V4(i.into()));
        }
        assert!(l.tracked() <= 50, "tracked {}", l.tracked());
        assert!(l.overflow.len() <= OVERFLOW_SLOTS as usize);
        // 20,000 addresses over 1,024 shared buckets: every one is used up (a slot stays
        // unused with probability e^-19), so a new address is refused.
        assert!(l.check("203.0.113.77".parse().unwrap()).is_err());
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
