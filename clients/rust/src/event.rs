//! An event as the client sends it: schema, data, and an id fixed at creation and kept on every
//! attempt (consumers and the gateway's dedup window deduplicate on it).

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

/// An event's id: a UUID chosen here, never changed by a retry.
pub type EventId = uuid::Uuid;

/// One event. `Event::new` sets a fresh v4 id and `ts` to now; the setters override them.
///
/// ```
/// use eventpipe_client::Event;
/// let e = Event::new("page_view/1", serde_json::json!({"url": "https://example.com/a"}))
///     .context(serde_json::json!({"visitor_id": "v-123"}));
/// assert_eq!(e.schema(), "page_view/1");
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    schema: String,
    event_id: EventId,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<Value>,
    data: Value,
}

impl Event {
    /// An event of `schema` (`<name>/<major>`, e.g. `page_view/1`) with `data`, a new id, and
    /// `ts` = now.
    pub fn new(schema: impl Into<String>, data: Value) -> Event {
        Event {
            schema: schema.into(),
            event_id: uuid::Uuid::new_v4(),
            ts: Some(rfc3339(SystemTime::now())),
            context: None,
            data,
        }
    }

    /// Use this id instead of a fresh one (e.g. an id the application already stored).
    pub fn id(mut self, id: EventId) -> Event {
        self.event_id = id;
        self
    }

    /// When the event happened.
    pub fn ts(mut self, at: SystemTime) -> Event {
        self.ts = Some(rfc3339(at));
        self
    }

    /// When the event happened, already formatted as RFC 3339 (sent as given; the gateway rejects
    /// a malformed one as `invalid_envelope`).
    pub fn ts_rfc3339(mut self, at: impl Into<String>) -> Event {
        self.ts = Some(at.into());
        self
    }

    /// Send no `ts` (the gateway's receive time is still recorded).
    pub fn without_ts(mut self) -> Event {
        self.ts = None;
        self
    }

    /// The event's own context; it overrides the client's context (`Builder::context`) key by key.
    pub fn context(mut self, context: Value) -> Event {
        self.context = Some(context);
        self
    }

    pub fn event_id(&self) -> EventId {
        self.event_id
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn data(&self) -> &Value {
        &self.data
    }

    /// The event's JSON as it goes into a bundle's `events` array.
    pub(crate) fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

pub(crate) fn rfc3339(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_the_wire_shape_with_a_stable_id() {
        let id = uuid::Uuid::new_v4();
        let e = Event::new("click/1", serde_json::json!({"a": 1}))
            .id(id)
            .ts_rfc3339("2026-11-21T11:59:58.120Z");
        let v: Value = serde_json::from_slice(&e.to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"schema": "click/1", "event_id": id.to_string(),
                "ts": "2026-11-21T11:59:58.120Z", "data": {"a": 1}})
        );
        assert_eq!(e.to_json().unwrap(), e.clone().to_json().unwrap());
    }
}
