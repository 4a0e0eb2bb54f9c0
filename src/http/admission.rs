//! Bounded work in flight: how many requests are processed at once, how many bytes they hold, and
//! where their CPU-heavy stages run.
//!
//! Every request takes a *request permit* (`limits.max_concurrent_requests`) and a *byte charge*
//! against `limits.max_inflight_bytes` before its body is read, and holds both until its answer is
//! built (the Kafka wait included, since its records are held until then). The charge follows what
//! the request really holds:
//!
//! 1. the wire body: its `Content-Length`, or `max_body_bytes` when chunked (shrunk once read);
//! 2. the decompressed body: charged as the output buffer grows, before it grows, so a
//!    decompression bomb or a burst of large bodies stops at the budget, not at the allocator;
//! 3. the pipeline's output: topped up by the decoded size before parsing and encoding;
//! 4. while waiting for Kafka: shrunk to the encoded records' size.
//!
//! Nothing waits for a permit or a charge: when there is none the request is answered at once
//! with 503 + Retry-After (`overloaded`), so there is no queue to grow and memory stays near
//! `max_inflight_bytes` plus the allocator's slack. The one wait is for a CPU slot (below), and
//! only requests already admitted wait there, so that queue is bounded by the request limit.
//!
//! Decompression, parsing, validation and encoding of compressed bodies and of plain bodies over
//! 64 KiB run on tokio's blocking pool, at most `available_parallelism()` at a time (a
//! semaphore), so a burst of large bodies cannot starve the async workers that move bytes for
//! every other connection. Small plain bodies (about a millisecond of CPU at most) stay inline:
//! the handoff cost ~20% CPU per event on the benchmark's 25 KB bodies, inline costs nothing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::error::ApiError;
use crate::config::Limits;
use crate::metrics as m;

/// Seconds a client is told to wait after `overloaded`.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// The shared limits, one per gateway.
pub struct Admission {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    /// Open connections (taken by the accept loop, see `server`).
    pub connections: Arc<Semaphore>,
    cpu: Arc<Semaphore>,
    limits: (usize, usize, usize),
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        let cpu = std::thread::available_parallelism().map_or(2, |n| n.get());
        Admission {
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            bytes: Arc::new(Semaphore::new(limits.max_inflight_bytes)),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            cpu: Arc::new(Semaphore::new(cpu)),
            limits: (
                limits.max_concurrent_requests,
                limits.max_inflight_bytes,
                limits.max_connections,
            ),
        }
    }

    /// A request permit, or `overloaded` at once.
    pub fn request(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| overloaded())
    }

    /// A byte charge of `bytes`, or `overloaded` at once.
    pub fn charge(&self, bytes: usize) -> Result<Charge, ApiError> {
        let mut charge = Charge {
            sem: self.bytes.clone(),
            permit: None,
        };
        charge.grow(bytes)?;
        Ok(charge)
    }

    /// Runs `f` on the blocking pool once a CPU slot is free.
    pub async fn run_blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let slot = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| overloaded())?;
        let task = tokio::task::spawn_blocking(move || {
            let out = f();
            drop(slot);
            out
        });
        match task.await {
            Ok(out) => Ok(out),
            // A panic in the pipeline stays a panic of this request, as it was inline.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(overloaded()),
        }
    }

    /// Sets the in-flight gauges (called when `/metrics` is scraped).
    pub fn publish_gauges(&self) {
        let (requests, bytes, connections) = self.limits;
        let used = |sem: &Semaphore, max: usize| max.saturating_sub(sem.available_permits()) as f64;
        metrics::gauge!(m::INFLIGHT_REQUESTS).set(used(&self.requests, requests));
        metrics::gauge!(m::INFLIGHT_BYTES).set(used(&self.bytes, bytes));
        metrics::gauge!(m::HTTP_CONNECTIONS).set(used(&self.connections, connections));
    }
}

fn overloaded() -> ApiError {
    ApiError::Overloaded {
        retry_after_secs: OVERLOADED_RETRY_AFTER_SECS,
    }
}

/// Bytes of the in-flight budget held by one request; returned when dropped.
pub struct Charge {
    sem: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Charge {
    /// Bytes currently charged.
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Charges `bytes` more, or fails with `overloaded` (the charge so far is kept).
    pub fn grow(&mut self, bytes: usize) -> Result<(), ApiError> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| overloaded())?;
        let more = match self.sem.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => return Err(overloaded()),
        };
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// Lowers the charge to `bytes` (never raises it).
    pub fn shrink_to(&mut self, bytes: usize) {
        let held = self.bytes();
        if let Some(p) = &mut self.permit {
            drop(p.split(held.saturating_sub(bytes)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_bytes: usize, max_requests: usize) -> Admission {
        Admission::new(&Limits {
            max_inflight_bytes: max_bytes,
            max_concurrent_requests: max_requests,
            ..Limits::default()
        })
    }

    #[test]
    fn charges_are_refused_beyond_the_budget_and_returned_on_drop() {
        let a = admission(1000, 10);
        let mut first = a.charge(600).unwrap();
        assert!(matches!(a.charge(500), Err(ApiError::Overloaded { .. })));
        assert!(first.grow(500).is_err());
        assert_eq!(first.bytes(), 600, "a failed grow keeps what was held");
        first.shrink_to(100);
        assert_eq!(first.bytes(), 100);
        let second = a.charge(900).unwrap();
        drop(first);
        drop(second);
        assert_eq!(a.charge(1000).unwrap().bytes(), 1000);
    }

    #[test]
    fn request_permits_are_bounded() {
        let a = admission(1000, 2);
        let (p1, _p2) = (a.request().unwrap(), a.request().unwrap());
        let err = a.request().unwrap_err();
        assert_eq!(err.status(), 503);
        assert_eq!(err.code(), "overloaded");
        drop(p1);
        assert!(a.request().is_ok());
    }
}
