//! `eventpipe spool quarantine`: lists what the replayer moved out of its way (records Kafka
//! refused for good, damaged segment bytes), one line or JSON object per entry.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::sink::spool::{decode_record, quarantine, Content};

fn rfc3339(ms: i64) -> Value {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(Value::Null, Value::String)
}

/// Every quarantined entry of the spool at `dir` as JSON: where it came from (`segment`,
/// `offset`, `size` in the segment), why (`reason`), when (`quarantined`), and for records their
/// `topic`, `event_id`, `schema` and append time (`appended`). For damaged bytes (`kind`
/// `corrupt`) those fields are shown when the bytes still decode, with `verified: false`.
pub fn entries(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let listed = quarantine::list(dir)?;
    Ok(listed
        .into_iter()
        .map(|l| {
            let q = &l.entry;
            let mut v = json!({
                "file": l.file.display().to_string(),
                "segment": q.source_seq,
                "offset": q.source_offset,
                "reason": q.reason,
                "size": q.source_len,
                "quarantined": rfc3339(q.quarantined_ms),
            });
            let record = match &q.content {
                Content::Record(body) => {
                    v["kind"] = json!("record");
                    decode_record(body)
                }
                Content::Raw(bytes) => {
                    v["kind"] = json!("corrupt");
                    v["copied_bytes"] = json!(bytes.len());
                    // Damage often spares the record's fields (a flipped payload byte): show
                    // what they say, marked unverified, so an operator knows which event it was.
                    let guess = bytes
                        .get(12..)
                        .and_then(decode_record)
                        .or_else(|| bytes.get(8..).and_then(decode_record));
                    v["verified"] = json!(false);
                    guess
                }
            };
            if let Some((r, appended_ms)) = record {
                let header = |k: &str| {
                    r.headers
                        .iter()
                        .find(|(name, _)| *name == k)
                        .map(|(_, v)| v.clone())
                };
                v["topic"] = json!(r.topic.as_ref());
                v["event_id"] = json!(header("event_id"));
                v["schema"] = json!(header("schema"));
                v["appended"] = rfc3339(appended_ms);
                v["payload_bytes"] = json!(r.payload.len());
            }
            v
        })
        .collect())
}

/// Prints the quarantine of the spool at `dir`: JSON lines, or one tab-separated line per entry.
/// Returns the number of entries.
pub fn print(dir: &Path, as_json: bool, out: &mut impl Write) -> anyhow::Result<usize> {
    let entries = entries(dir)?;
    for e in &entries {
        if as_json {
            writeln!(out, "{e}")?;
        } else {
            let s = |k: &str| match &e[k] {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            writeln!(
                out,
                "segment={} offset={} reason={} topic={} event_id={} schema={} size={} appended={} quarantined={}",
                s("segment"),
                s("offset"),
                s("reason"),
                s("topic"),
                s("event_id"),
                s("schema"),
                s("size"),
                s("appended"),
                s("quarantined"),
            )?;
        }
    }
    Ok(entries.len())
}
