//! Events a protocol translator (`http::ingest::Translate`: Snowplow, Segment, the GET pixel)
//! already found bad while translating: an undecodable base64 payload, an invalid context, an
//! unknown event type. The translator writes such an event into the native bundle as
//!
//! ```json
//! {"rejected": {"reason": "invalid_envelope", "path": "/ue_px", "message": "..."},
//!  "event_id": "...", "original": {...what was sent...}}
//! ```
//!
//! and the pipeline dead-letters it with that reason, path and message, its original JSON being
//! that text, like any rejection (one bad event never costs the others). Only bundles a
//! translator that builds its events itself produced are read this way (`Bundle::translated`,
//! set when `Translate::writes_rejections`); a native client sending this shape, or a GET pixel
//! whose `e` is this shape (its event is the client's JSON), gets `invalid_envelope` for the
//! unknown field, as for any other.

use serde::Deserialize;
use serde_json::{json, Value};

use super::bounds::{cut, cut_owned, MESSAGE_MAX, PATH_MAX, SHOWN_ID_MAX};
use super::{RejectReason, Rejection};

#[derive(Deserialize)]
struct Marked {
    rejected: Reason,
    #[serde(default)]
    event_id: Option<String>,
}

#[derive(Deserialize)]
struct Reason {
    reason: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    message: String,
}

/// The rejection a translator wrote into event `index`, if it wrote one.
pub fn rejection(index: usize, text: &str) -> Option<Rejection> {
    // Cheap test first: the common, good event has no such member at its start.
    if !text.trim_start().starts_with("{\"rejected\"") {
        return None;
    }
    let marked: Marked = serde_json::from_str(text).ok()?;
    let reason =
        RejectReason::from_name(&marked.rejected.reason).unwrap_or(RejectReason::InvalidEnvelope);
    Some(Rejection {
        index,
        event_id: marked.event_id.map(|id| cut_owned(id, SHOWN_ID_MAX)),
        reason,
        path: cut(&marked.rejected.path, PATH_MAX),
        message: cut_owned(marked.rejected.message, MESSAGE_MAX),
    })
}

/// The JSON a translator writes for an event it rejects (see the module doc). `rejected` must
/// be the first member: [`rejection`] looks for it there.
pub fn rejected_event(
    reason: RejectReason,
    path: &str,
    message: &str,
    event_id: Option<&str>,
    original: Value,
) -> Value {
    json!({
        "rejected": {"reason": reason.as_str(), "path": path, "message": message},
        "event_id": event_id,
        "original": original,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_event_round_trips_and_others_are_left_alone() {
        let v = rejected_event(
            RejectReason::SchemaViolation,
            "/context/contexts/0/data",
            "bad",
            Some("0f8fad5b-d9cb-469f-a165-70867728950e"),
            json!({"e": "pv"}),
        );
        let r = rejection(3, &v.to_string()).unwrap();
        assert_eq!(r.index, 3);
        assert_eq!(r.reason, RejectReason::SchemaViolation);
        assert_eq!(r.path, "/context/contexts/0/data");
        assert_eq!(
            r.event_id.as_deref(),
            Some("0f8fad5b-d9cb-469f-a165-70867728950e")
        );
        assert!(rejection(0, r#"{"schema": "a/1", "data": {"rejected": 1}}"#).is_none());
        assert!(rejection(0, r#"{"rejected": 7}"#).is_none());
    }
}
