//! What the spool stores: a Kafka-shaped record (topic, optional key, string headers, payload
//! bytes). Writing takes anything that can show those parts ([`AsRecord`], so a caller's own
//! record type is written without a copy); reading gives back a [`Record`].

use std::sync::Arc;

/// A record as read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Arc<str>,
    pub key: Option<Vec<u8>>,
    /// Headers in the order they were written (names up to 255 bytes, at most 255 of them).
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Record {
    /// The value of header `key`, if the record has it.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The parts of a record the spool writes. Implement it for your own record type to append it
/// as it is.
pub trait AsRecord {
    fn topic(&self) -> &str;
    fn key(&self) -> Option<&[u8]>;
    /// Number of headers (at most 255 can be spooled).
    fn header_count(&self) -> usize;
    /// The headers, `header_count()` of them, in order.
    fn headers(&self) -> impl Iterator<Item = (&str, &str)>;
    fn payload(&self) -> &[u8];
}

impl AsRecord for Record {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn header_count(&self) -> usize {
        self.headers.len()
    }
    fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}
