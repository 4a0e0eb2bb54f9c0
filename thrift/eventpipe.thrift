// eventpipe wire format: what the gateway writes to Kafka, Thrift compact protocol.
//
// Accepted events go to `<topic_prefix><schema name>` as `Event`; rejected input goes to the
// dead-letter topic as `DeadLetter`. Both carry the same `Enrichment`.
//
// JSON is carried as a real Thrift structure, not a JSON string: `Json.tokens` is the pre-order
// walk of the JSON tree. A container token gives its element count (`length`) and is followed by
// exactly that many values, each of which may itself be a container. Members of an object carry
// their `key`. The flat list keeps decoders free of recursion (our depth limit is 64 levels; a
// recursive Thrift type would nest twice that deep) and is cheap to write.
//
// Example: {"a": [1, 2.5], "b": null} is
//   OBJECT(length=2), ARRAY(key="a", length=2), INT(1), DOUBLE(2.5), NULL(key="b")

namespace rs eventpipe
namespace py eventpipe

enum TokenKind {
  NULL_VALUE = 0,
  FALSE_VALUE = 1,
  TRUE_VALUE = 2,
  // signed 64-bit integer in int_value
  INT = 3,
  // unsigned 64-bit integer above 2^63-1, its bits in int_value (two's complement)
  UINT = 4,
  // IEEE 754 double in double_value
  DOUBLE = 5,
  // UTF-8 text in string_value
  STRING = 6,
  // followed by `length` values
  ARRAY = 7,
  // followed by `length` values, each with its `key`
  OBJECT = 8,
}

struct Token {
  1: required TokenKind kind
  2: optional string key
  3: optional i64 int_value
  4: optional double double_value
  5: optional string string_value
  6: optional i32 length
}

struct Json {
  1: required list<Token> tokens
}

// What the gateway knew about the request when it received it.
struct Enrichment {
  // Receive time at the gateway, milliseconds since the Unix epoch.
  1: required i64 received_at_ms
  // Client address: the socket peer, or the forwarded client when the peer is a trusted proxy.
  2: optional string client_ip
  3: optional string user_agent
  // The collector that received the event: host name and gateway version.
  4: required string collector_host
  5: required string collector_version
  // Client-reported send time of the bundle (RFC 3339), as sent.
  6: optional string sent_at
  // Origin header of the request, if any (browser beacons).
  7: optional string origin
}

struct Event {
  // UUID chosen by the client (stable across its retries) or assigned by the gateway.
  1: required string event_id
  // Schema name and major version: "page_view" and 1 for "page_view/1".
  2: required string schema_name
  3: required i32 schema_major
  // Client-reported event time (RFC 3339), as sent.
  4: optional string ts
  // Batch context merged with the event's context, key by key (the event's wins).
  5: required Json context
  // The event payload exactly as validated against the schema.
  6: required Json data
  7: required Enrichment enrichment
}

// Anything the gateway received and did not accept: one invalid event, or a whole request that
// could not be read as a bundle.
struct DeadLetter {
  // Machine-readable reason, e.g. "schema_violation", "unknown_schema", "undecodable_body".
  1: required string reason
  // JSON pointer of the failing value, when there is one, e.g. "/data/url".
  2: optional string path
  3: required string message
  // The original bytes: the event's JSON, or the request body (decompressed when possible).
  4: required binary original
  // True when `original` was cut to the dead-letter size cap.
  5: required bool truncated
  6: optional string event_id
  // The schema the event named, as sent ("page_view/1"), if it named one.
  7: optional string schema
  // Position of the event in its bundle; absent for whole-request rejections.
  8: optional i32 index
  // The HTTP status the request was answered with, for whole-request rejections.
  9: optional i32 http_status
  10: required Enrichment enrichment
  // The request's X-Request-Id (the client's, or the one the gateway generated and answered with).
  11: optional string request_id
}

// One gateway's books for one (window, topic), published to the audit topic (default
// `events.audit`) when the window closes, and again whenever its counts change later (spooled
// events delivered after the window closed). Counts are cumulative for (collector_host, boot_id,
// window_start_ms, topic): of several records for the same key, the one with the highest `seq`
// wins. A host's total for a window is the sum over its boot ids (a restarted gateway that replays
// its predecessor's spool reports those events under its own boot id).
// Windows are by receive time (`Enrichment.received_at_ms`), aligned to multiples of `window_ms`.
struct AuditRecord {
  // `Enrichment.collector_host` of the events counted.
  1: required string collector_host
  // Random per gateway process start (UUID).
  2: required string boot_id
  // Per boot, increasing with every audit record published, across windows and topics.
  3: required i64 seq
  4: required i64 window_start_ms
  5: required i64 window_ms
  // The Kafka topic the counted records were produced to (a data topic or the dead-letter topic).
  6: required string topic
  // Events acknowledged by Kafka within the request's deadline (answered 200 to the client).
  7: required i64 events_kafka
  // Spooled events (answered 202) that the spool has since delivered to Kafka.
  8: required i64 events_replayed
  // Spooled events of this window not delivered yet: the books for it are still open.
  9: required i64 events_pending
  // Bytes of the records counted in events_kafka + events_replayed (record values).
  10: required i64 bytes
  // Dead-letter topic only: dead letters delivered, by reason (events and whole requests).
  11: optional map<string, i64> dead_letters
  // Dead-letter topic only: whole requests refused, by reason (including those never
  // dead-lettered: 401, 429, 503 ...). Not events: informational, not balanced by the checker.
  12: optional map<string, i64> requests_refused
  13: required i64 published_at_ms
  14: required string collector_version
  // Spooled events (answered 202) that replay had to move to the quarantine (Kafka refused them
  // for good): acknowledged to clients and never in this topic. The checker counts them as
  // reported, so they show as missing until an operator re-sends them.
  15: optional i64 events_quarantined
}
