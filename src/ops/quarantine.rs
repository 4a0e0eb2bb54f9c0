//! `eventpipe spool quarantine`: lists what the replayer moved out of its way (records Kafka
//! refused for good, damaged segment bytes), one line or JSON object per entry.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::sink::spool::{decode_record, quarantine, Content};

pub(crate) fn rfc3339(ms: i64) -> Value {
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

/// Re-sends every quarantined record (not damaged bytes: those cannot be trusted) to Kafka at
/// `brokers`, with the gateway's producer settings, after an operator fixed what made Kafka
/// refuse them. Prints one line per record (`sent` or `failed`); returns (sent, failed). The
/// quarantine is left as it is: delete its files once everything is sent (sending twice only
/// duplicates, with the same event id).
pub async fn replay(
    dir: &Path,
    brokers: &str,
    librdkafka: &std::collections::BTreeMap<String, String>,
    out: &mut impl Write,
) -> anyhow::Result<(usize, usize)> {
    use crate::sink::kafka::{producer_config, KafkaSink};
    let mut records = Vec::new();
    let mut origins = Vec::new();
    for l in quarantine::list(dir)? {
        if let Content::Record(body) = &l.entry.content {
            if let Some((r, _)) = decode_record(body) {
                origins.push((l.entry.source_seq, l.entry.source_offset, event_id(&r)));
                records.push(r);
            }
        }
    }
    if records.is_empty() {
        return Ok((0, 0));
    }
    let config = producer_config(brokers, librdkafka);
    let kafka = KafkaSink::new(&config, std::time::Duration::from_secs(30))?;
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(crate::sink::kafka::MESSAGE_TIMEOUT_MS + 5_000);
    let outcome = kafka
        .send_partial(&records, deadline, std::time::Duration::from_secs(5))
        .await;
    let error = outcome
        .error
        .map(|e| e.to_string())
        .unwrap_or_else(|| "not acknowledged".into());
    for (i, (seq, offset, id)) in origins.iter().enumerate() {
        let refused = outcome.refused.iter().find(|(r, _)| *r == i);
        let status = if let Some((_, reason)) = refused {
            format!("failed ({reason})")
        } else if outcome.unacked.contains(&i) {
            format!("failed ({error})")
        } else {
            "sent".to_owned()
        };
        writeln!(
            out,
            "{status} segment={seq} offset={offset} topic={} event_id={id}",
            records[i].topic
        )?;
    }
    let failed = outcome.unacked.len() + outcome.refused.len();
    Ok((records.len() - failed, failed))
}

fn event_id(r: &crate::sink::Record) -> String {
    r.header("event_id").unwrap_or("-").to_owned()
}
