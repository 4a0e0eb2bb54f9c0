//! What `eventpipe send` counted, its summary (text or JSON) and its exit code.

use std::collections::BTreeMap;
use std::time::Duration;

use eventpipe_client::{DropReason, Error, EventId, Receipt};
use serde::Serialize;

use super::input::LineRef;

/// Every event was made durable or rejected, and no line was bad.
pub const EXIT_OK: u8 = 0;
/// Some events were not delivered (given up on, or never read because the command gave up).
pub const EXIT_UNDELIVERED: u8 = 1;
/// The command could not run (arguments, an unreadable input, client settings, a read error).
pub const EXIT_ERROR: u8 = 2;
/// Some lines were bad input (never sent); every event was delivered or rejected.
pub const EXIT_BAD_INPUT: u8 = 3;
/// SIGINT or SIGTERM.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Whole-request refusals that say nothing about the event (a wrong or unauthorised write key):
/// its events are not delivered, not rejected.
const NOT_A_VERDICT: [&str; 2] = ["unauthorized", "forbidden_origin"];

/// Examples kept per list (the counts are complete).
const EXAMPLES: usize = 100;

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub at: String,
    pub event_id: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BadLine {
    pub at: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Undelivered {
    pub at: String,
    pub event_id: String,
    pub reason: String,
}

/// Counts, as the answers come.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub kafka: u64,
    pub spooled: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub rejections: Vec<Rejection>,
    pub not_delivered: u64,
    pub not_delivered_by_reason: BTreeMap<String, u64>,
    pub not_delivered_examples: Vec<Undelivered>,
    pub bad_lines: u64,
    pub bad: Vec<BadLine>,
    pub read_errors: Vec<String>,
    /// Where reading stopped early (the command gave up), if it did.
    pub stopped_after: Option<String>,
    pub unsent_at_shutdown: u64,
    /// The `--undelivered` file, if one was asked for.
    pub undelivered_file: Option<String>,
    /// Writing it failed.
    pub undelivered_file_error: Option<String>,
}

impl Tally {
    /// Counts one event's final answer.
    pub fn outcome(&mut self, at: &LineRef, id: EventId, result: Result<Receipt, Error>) {
        match result {
            // The whole request was refused for the write key: nothing about the event was
            // judged or recorded (no dead letter). Fix the key and send it again.
            Ok(Receipt::Rejected { reason, .. }) if NOT_A_VERDICT.contains(&reason.as_str()) => {
                self.undelivered(at, id, reason)
            }
            Ok(Receipt::Kafka) => self.kafka += 1,
            Ok(Receipt::Spooled) => self.spooled += 1,
            Ok(Receipt::Rejected {
                reason,
                path,
                message,
            }) => {
                self.rejected += 1;
                *self.rejected_by_reason.entry(reason.clone()).or_default() += 1;
                if self.rejections.len() < EXAMPLES {
                    self.rejections.push(Rejection {
                        at: at.to_string(),
                        event_id: id.to_string(),
                        reason,
                        path,
                        message,
                    });
                }
            }
            Err(e) => {
                let reason = match &e {
                    // The command closed the client when it gave up.
                    Error::Dropped(DropReason::Shutdown) | Error::Closed => "gave_up".to_string(),
                    Error::Dropped(r) => r.as_str().to_string(),
                    Error::Encode(_) => "encode_error".to_string(),
                    _ => "client_error".to_string(),
                };
                self.undelivered(at, id, reason);
            }
        }
    }

    pub fn undelivered(&mut self, at: &LineRef, id: EventId, reason: String) {
        self.not_delivered += 1;
        *self
            .not_delivered_by_reason
            .entry(reason.clone())
            .or_default() += 1;
        if self.not_delivered_examples.len() < EXAMPLES {
            self.not_delivered_examples.push(Undelivered {
                at: at.to_string(),
                event_id: id.to_string(),
                reason,
            });
        }
    }

    pub fn bad(&mut self, at: &LineRef, error: String) {
        self.bad_lines += 1;
        if self.bad.len() < EXAMPLES {
            self.bad.push(BadLine {
                at: at.to_string(),
                error,
            });
        }
    }
}

/// The final summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `complete`, `not_delivered`, `read_error`, `bad_input` or `interrupted`.
    pub outcome: &'static str,
    pub exit_code: u8,
    /// Events read (valid lines).
    pub events: u64,
    /// Accepted with a 200: in Kafka.
    pub kafka: u64,
    /// Accepted in a 202: durable in the gateway's spool (or in Kafka; a 202 does not say which).
    pub spooled: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// The first rejections, with their place in the input.
    pub rejections: Vec<Rejection>,
    /// Events read but neither durable nor rejected.
    pub not_delivered: u64,
    pub not_delivered_by_reason: BTreeMap<String, u64>,
    pub not_delivered_examples: Vec<Undelivered>,
    /// Lines that were not events (never sent).
    pub bad_lines: u64,
    pub bad_line_examples: Vec<BadLine>,
    pub read_errors: Vec<String>,
    /// Where the events not delivered were written (`--undelivered`), as JSON lines to rerun.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undelivered_file: Option<String>,
    /// Writing that file failed (the counts are still right).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undelivered_file_error: Option<String>,
    /// Whether every input was read to its end.
    pub input_complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_after: Option<String>,
    pub retries: u64,
    pub seconds: f64,
    #[serde(skip)]
    timeout: Option<Duration>,
}

impl Summary {
    pub fn new(
        t: Tally,
        retries: u64,
        elapsed: Duration,
        interrupted: Option<bool>,
        timeout: Option<Duration>,
    ) -> Summary {
        let input_complete = t.stopped_after.is_none() && t.read_errors.is_empty();
        let (outcome, exit_code) = if interrupted == Some(true) {
            ("interrupted", EXIT_INTERRUPTED)
        } else if t.not_delivered > 0 || t.stopped_after.is_some() {
            ("not_delivered", EXIT_UNDELIVERED)
        } else if !t.read_errors.is_empty() {
            ("read_error", EXIT_ERROR)
        } else if t.bad_lines > 0 {
            ("bad_input", EXIT_BAD_INPUT)
        } else {
            ("complete", EXIT_OK)
        };
        Summary {
            outcome,
            exit_code,
            events: t.kafka + t.spooled + t.rejected + t.not_delivered,
            kafka: t.kafka,
            spooled: t.spooled,
            rejected: t.rejected,
            rejected_by_reason: t.rejected_by_reason,
            rejections: t.rejections,
            not_delivered: t.not_delivered,
            not_delivered_by_reason: t.not_delivered_by_reason,
            not_delivered_examples: t.not_delivered_examples,
            bad_lines: t.bad_lines,
            bad_line_examples: t.bad,
            read_errors: t.read_errors,
            undelivered_file: t.undelivered_file,
            undelivered_file_error: t.undelivered_file_error,
            input_complete,
            stopped_after: t.stopped_after,
            retries,
            seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
            timeout,
        }
    }

    /// The summary for a person.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} events in {:.1}s: {} accepted ({} in Kafka, {} in a 202: durable in the gateway's \
             spool or Kafka), {} rejected, {} not delivered; {} bad line{}; {} retries",
            self.events,
            self.seconds,
            self.kafka + self.spooled,
            self.kafka,
            self.spooled,
            self.rejected,
            self.not_delivered,
            self.bad_lines,
            if self.bad_lines == 1 { "" } else { "s" },
            self.retries,
        );
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.rejected > 0 {
            out += &format!(
                "\nrejected by reason (not to be resent): {}",
                list(&self.rejected_by_reason)
            );
            for r in self.rejections.iter().take(10) {
                let path = r.path.as_deref().unwrap_or("");
                out += &format!(
                    "\n  {} {}: {} {path} {}",
                    r.at, r.event_id, r.reason, r.message
                );
            }
        }
        if self.not_delivered > 0 || self.stopped_after.is_some() {
            out += &format!(
                "\nNOT DELIVERED: {} event{} ({})",
                self.not_delivered,
                if self.not_delivered == 1 { "" } else { "s" },
                list(&self.not_delivered_by_reason)
            );
            if let Some(at) = &self.stopped_after {
                out += &format!("; input not read past {at}");
            }
            if self.outcome == "not_delivered" {
                if let Some(t) = self.timeout {
                    out += &format!(
                        "\n  gave up: nothing was accepted or rejected for {}s (--timeout)",
                        t.as_secs()
                    );
                }
            }
            match &self.undelivered_file {
                Some(f) => {
                    out += &format!(
                        "\n  written to {f} with their event ids: run `eventpipe send` on it \
                         again (same ids: what did land is deduplicated downstream)"
                    )
                }
                None => {
                    out += "\n  (--undelivered FILE writes them out, with their ids, for a rerun)"
                }
            }
            for u in self.not_delivered_examples.iter().take(10) {
                out += &format!("\n  {} {}: {}", u.at, u.event_id, u.reason);
            }
        }
        if self.bad_lines > 0 {
            out += &format!("\nbad input lines (not sent): {}", self.bad_lines);
            for b in self.bad_line_examples.iter().take(10) {
                out += &format!("\n  {}: {}", b.at, b.error);
            }
        }
        for e in &self.read_errors {
            out += &format!("\nread error: {e}");
        }
        if let Some(e) = &self.undelivered_file_error {
            out += &format!("\ncould not write the --undelivered file: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u64) -> LineRef {
        LineRef {
            input: "f".into(),
            line,
        }
    }

    #[test]
    fn a_refused_write_key_is_not_delivered_and_a_verdict_is_rejected() {
        let mut t = Tally::default();
        let rejected = |reason: &str| {
            Ok(Receipt::Rejected {
                reason: reason.into(),
                path: None,
                message: String::new(),
            })
        };
        t.outcome(&at(1), EventId::nil(), rejected("unauthorized"));
        t.outcome(&at(2), EventId::nil(), rejected("schema_violation"));
        t.outcome(&at(3), EventId::nil(), Ok(Receipt::Kafka));
        t.outcome(
            &at(4),
            EventId::nil(),
            Err(Error::Dropped(DropReason::Shutdown)),
        );
        let s = Summary::new(t, 0, Duration::ZERO, None, None);
        assert_eq!(
            (s.events, s.kafka, s.rejected, s.not_delivered),
            (4, 1, 1, 2)
        );
        assert_eq!(s.not_delivered_by_reason["unauthorized"], 1);
        assert_eq!(s.not_delivered_by_reason["gave_up"], 1);
        assert_eq!(s.exit_code, EXIT_UNDELIVERED);
    }
}
