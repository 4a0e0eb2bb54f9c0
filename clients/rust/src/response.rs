//! Reading the gateway's answer into what happens to each event of the batch (the retry
//! contract, README "HTTP API"): 2xx settles every event (accepted or rejected per the body);
//! 500 `dead_letter_refused` settles all but its `failed` events, which are retried; 503, 429,
//! 408 and other 5xx retry the whole batch; 413 splits it; any other 4xx rejects it whole.

use std::time::Duration;

use serde::Deserialize;

use crate::error::Receipt;
use crate::retry::RetryCause;

#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// One entry per event of the batch: `Some` is settled, `None` must be sent again.
    PerEvent(Vec<Option<Receipt>>),
    /// Nothing was taken: send the whole batch again, not before `retry_after`.
    RetryAll {
        cause: RetryCause,
        retry_after: Option<Duration>,
    },
    /// 413: split the batch (a single event is rejected with this reason).
    Split { reason: String, message: String },
    /// Refused whole for good.
    RejectAll { reason: String, message: String },
}

#[derive(Deserialize, Default)]
struct Body {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    spooled: Option<u64>,
    #[serde(default)]
    rejected: Vec<Rejected>,
    #[serde(default)]
    failed: Vec<Indexed>,
}

#[derive(Deserialize)]
struct Rejected {
    index: usize,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct Indexed {
    index: usize,
}

pub fn classify(status: u16, retry_after: Option<Duration>, body: &[u8], n: usize) -> Verdict {
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let error_of = |default: &str| {
        let b = parsed.as_ref();
        (
            b.and_then(|b| b.error.clone())
                .unwrap_or_else(|| default.to_string()),
            b.and_then(|b| b.message.clone()).unwrap_or_default(),
        )
    };
    match status {
        200..=299 => {
            let durable = if status == 202 {
                Receipt::Spooled
            } else {
                Receipt::Kafka
            };
            let body = parsed.unwrap_or_default();
            Verdict::PerEvent(per_event(&body, durable, n))
        }
        500 => match parsed {
            Some(body) if body.error.as_deref() == Some("dead_letter_refused") => {
                let durable = if body.spooled.unwrap_or(0) > 0 {
                    Receipt::Spooled
                } else {
                    Receipt::Kafka
                };
                let mut results = per_event(&body, durable, n);
                for f in &body.failed {
                    if let Some(slot) = results.get_mut(f.index) {
                        *slot = None;
                    }
                }
                Verdict::PerEvent(results)
            }
            _ => Verdict::RetryAll {
                cause: RetryCause::ServerError,
                retry_after,
            },
        },
        503 => Verdict::RetryAll {
            cause: RetryCause::Unavailable,
            retry_after,
        },
        429 => Verdict::RetryAll {
            cause: RetryCause::RateLimited,
            retry_after,
        },
        408 => Verdict::RetryAll {
            cause: RetryCause::Timeout,
            retry_after,
        },
        501..=599 => Verdict::RetryAll {
            cause: RetryCause::ServerError,
            retry_after,
        },
        413 => {
            let (reason, message) = error_of("body_too_large");
            Verdict::Split { reason, message }
        }
        _ => {
            let (reason, message) = error_of(&format!("http_{status}"));
            Verdict::RejectAll { reason, message }
        }
    }
}

fn per_event(body: &Body, durable: Receipt, n: usize) -> Vec<Option<Receipt>> {
    let mut results = vec![Some(durable); n];
    for r in &body.rejected {
        if let Some(slot) = results.get_mut(r.index) {
            *slot = Some(Receipt::Rejected {
                reason: r.reason.clone().unwrap_or_else(|| "rejected".into()),
                path: r.path.clone(),
                message: r.message.clone().unwrap_or_default(),
            });
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn ok_and_202_settle_every_event_with_rejections_by_index() {
        let b = body(
            json!({"accepted": 2, "rejected": [{"index": 1, "event_id": "x",
            "reason": "schema_violation", "path": "/data/url", "message": "bad"}]}),
        );
        let rejected = Receipt::Rejected {
            reason: "schema_violation".into(),
            path: Some("/data/url".into()),
            message: "bad".into(),
        };
        assert_eq!(
            classify(200, None, &b, 3),
            Verdict::PerEvent(vec![
                Some(Receipt::Kafka),
                Some(rejected.clone()),
                Some(Receipt::Kafka)
            ])
        );
        assert_eq!(
            classify(202, None, &b, 2),
            Verdict::PerEvent(vec![Some(Receipt::Spooled), Some(rejected)])
        );
    }

    #[test]
    fn dead_letter_refused_retries_only_the_failed_events() {
        let b = body(
            json!({"error": "dead_letter_refused", "message": "m", "accepted": 1,
            "spooled": 0, "rejected": [{"index": 0, "reason": "too_large", "message": "big"}],
            "failed": [{"index": 2, "event_id": "y", "reason": "kafka_rejected:X", "message": "m"}]}),
        );
        match classify(500, None, &b, 3) {
            Verdict::PerEvent(r) => {
                assert!(matches!(r[0], Some(Receipt::Rejected { .. })));
                assert_eq!(r[1], Some(Receipt::Kafka));
                assert_eq!(r[2], None);
            }
            v => panic!("{v:?}"),
        }
        // Any other 500 retries everything.
        assert!(matches!(
            classify(500, None, b"oops", 3),
            Verdict::RetryAll {
                cause: RetryCause::ServerError,
                ..
            }
        ));
    }

    #[test]
    fn statuses_map_to_the_contract() {
        let ra = Some(Duration::from_secs(4));
        let unavailable = body(json!({"error": "unavailable", "message": "spool full"}));
        assert_eq!(
            classify(503, ra, &unavailable, 2),
            Verdict::RetryAll {
                cause: RetryCause::Unavailable,
                retry_after: ra
            }
        );
        assert_eq!(
            classify(429, ra, b"", 2),
            Verdict::RetryAll {
                cause: RetryCause::RateLimited,
                retry_after: ra
            }
        );
        assert!(matches!(
            classify(408, None, b"", 1),
            Verdict::RetryAll {
                cause: RetryCause::Timeout,
                ..
            }
        ));
        assert!(matches!(
            classify(502, None, b"", 1),
            Verdict::RetryAll {
                cause: RetryCause::ServerError,
                ..
            }
        ));
        assert_eq!(
            classify(
                413,
                None,
                &body(json!({"error": "too_many_events", "message": "m"})),
                9
            ),
            Verdict::Split {
                reason: "too_many_events".into(),
                message: "m".into()
            }
        );
        assert_eq!(
            classify(
                401,
                None,
                &body(json!({"error": "unauthorized", "message": "no key"})),
                9
            ),
            Verdict::RejectAll {
                reason: "unauthorized".into(),
                message: "no key".into()
            }
        );
        assert_eq!(
            classify(404, None, b"<html>", 1),
            Verdict::RejectAll {
                reason: "http_404".into(),
                message: String::new()
            }
        );
    }
}
