//! Reading `eventpipe send`'s input: JSON lines from files or stdin, streamed (one line in memory
//! at a time, each at most `max_line_bytes`) on a thread of their own, turned into client events
//! or bad-line reports that name their place (`FILE:LINE`).
//!
//! A line is one event object: `schema` (string, required), `data`, `event_id` (a UUID; one is
//! assigned when absent), `ts` (string, sent as given), `context`. Blank lines are skipped. A line
//! is *bad input* — never sent, always reported — when it is not JSON, not an object, lacks a
//! string `schema`, has an `event_id` that is not a UUID, a `ts` that is not a string, any other
//! field (the gateway refuses unknown fields too), or is longer than `max_line_bytes`. Whatever
//! else the gateway finds wrong with an event (schema violation, bad `ts`, ...) it rejects with a
//! reason, and that is reported as a rejection, not as bad input.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use eventpipe_client::Event;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

/// Where a line came from: its input (`-` for stdin) and 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRef {
    pub input: Arc<str>,
    pub line: u64,
}

impl std::fmt::Display for LineRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.input, self.line)
    }
}

/// One item of the input stream.
#[derive(Debug)]
pub enum Input {
    /// An event and the length of its line (what it may hold in memory until answered).
    Event(LineRef, Event, usize),
    Bad(LineRef, String),
    /// Reading failed (the rest of that input is not read).
    ReadError(Arc<str>, String),
    /// Every input was read to its end.
    End,
}

/// The fields an input line may have.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    schema: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default)]
    context: Option<Value>,
}

/// Parses one line: `Ok(None)` for a blank one, `Err(why)` for bad input.
pub fn parse(line: &[u8]) -> Result<Option<Event>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not an event object (a JSON object per line)".into());
    }
    let l: Line = serde_json::from_value(value).map_err(|e| format!("not an event: {e}"))?;
    let data = l.data.unwrap_or_else(|| Value::Object(Default::default()));
    let mut event = Event::new(l.schema, data);
    if let Some(id) = l.event_id {
        let uuid = uuid::Uuid::parse_str(&id).map_err(|_| {
            let shown: String = id.chars().take(64).collect();
            format!("event_id {shown:?} is not a UUID (the gateway would reject it)")
        })?;
        event = event.id(uuid);
    }
    event = match l.ts {
        Some(ts) => event.ts_rfc3339(ts),
        None => event.without_ts(),
    };
    if let Some(context) = l.context {
        event = event.context(context);
    }
    Ok(Some(event))
}

/// Reads one line (without its `\n` or `\r\n`) into `buf`, keeping at most `max` bytes.
/// `Ok(None)` at the end of input; `Ok(Some(false))` when the line was longer than `max` (the
/// rest of it is read and discarded, `buf` is left empty).
pub fn read_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(!too_long));
        }
        any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = newline.map_or(chunk.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(!too_long));
        }
    }
}

/// An opened input: stdin or a file.
pub struct Source {
    pub name: Arc<str>,
    reader: Box<dyn Read + Send>,
}

/// Opens every input up front, so a missing file fails the command before anything is sent.
/// No input, or `-`, is stdin.
pub fn open(inputs: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    if inputs.is_empty() {
        return open(&[PathBuf::from("-")]);
    }
    inputs
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                return Ok(Source {
                    name: "-".into(),
                    reader: Box::new(std::io::stdin()),
                });
            }
            let file = std::fs::File::open(p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            Ok(Source {
                name: p.display().to_string().into(),
                reader: Box::new(file),
            })
        })
        .collect()
}

/// Reads every source on a thread of its own and hands the parsed lines over `tx` (bounded:
/// reading waits while the sender is behind). Ends when the input ends or `tx` is closed.
pub fn spawn_reader(sources: Vec<Source>, max_line_bytes: usize, tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        for source in sources {
            let mut r = BufReader::with_capacity(64 << 10, source.reader);
            let mut line = 0u64;
            loop {
                let item = match read_line(&mut r, &mut buf, max_line_bytes) {
                    Ok(None) => break,
                    Err(e) => Input::ReadError(source.name.clone(), e.to_string()),
                    Ok(Some(complete)) => {
                        line += 1;
                        let at = LineRef {
                            input: source.name.clone(),
                            line,
                        };
                        if !complete {
                            Input::Bad(at, format!("line longer than {max_line_bytes} bytes"))
                        } else {
                            match parse(&buf) {
                                Ok(None) => continue,
                                Ok(Some(event)) => Input::Event(at, event, buf.len()),
                                Err(why) => Input::Bad(at, why),
                            }
                        }
                    }
                };
                let stop = matches!(item, Input::ReadError(..));
                if tx.blocking_send(item).is_err() {
                    return;
                }
                if stop {
                    break;
                }
            }
        }
        let _ = tx.blocking_send(Input::End);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_bounded_and_a_long_one_is_skipped_whole() {
        let text = b"first\r\n0123456789abcdef\nlast-no-newline";
        let mut r = BufReader::with_capacity(4, &text[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 8).unwrap(), Some(true));
        assert_eq!(buf, b"first");
        assert_eq!(read_line(&mut r, &mut buf, 8).unwrap(), Some(false));
        assert!(buf.is_empty());
        assert_eq!(read_line(&mut r, &mut buf, 100).unwrap(), Some(true));
        assert_eq!(buf, b"last-no-newline");
        assert_eq!(read_line(&mut r, &mut buf, 100).unwrap(), None);
    }

    #[test]
    fn events_keep_their_fields_and_get_an_id_when_they_have_none() {
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let line = format!(
            r#"{{"schema":"page_view/1","event_id":"{id}","ts":"2026-11-21T11:59:58.120Z","context":{{"visitor_id":"v"}},"data":{{"url":"https://e.com"}}}}"#
        );
        let e = parse(line.as_bytes()).unwrap().unwrap();
        assert_eq!(e.event_id().to_string(), id);
        assert_eq!(e.schema(), "page_view/1");
        let (a, b) = (
            parse(br#"{"schema":"click/1"}"#).unwrap().unwrap(),
            parse(br#"{"schema":"click/1"}"#).unwrap().unwrap(),
        );
        assert_ne!(a.event_id(), b.event_id(), "each gets a fresh id");
        assert_eq!(a.data(), &serde_json::json!({}));
        assert!(parse(b"  \t").unwrap().is_none(), "blank lines are skipped");
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            (&b"{\"schema\": "[..], "not JSON"),
            (b"[1,2]", "not an event object"),
            (b"{\"data\":{}}", "missing field `schema`"),
            (b"{\"schema\":1}", "invalid type"),
            (b"{\"schema\":\"a/1\",\"extra\":1}", "unknown field `extra`"),
            (
                b"{\"schema\":\"a/1\",\"event_id\":\"nope\"}",
                "is not a UUID",
            ),
            (b"{\"schema\":\"a/1\",\"ts\":5}", "invalid type"),
            (b"\xff\xfe", "not JSON"),
        ] {
            let err = parse(line).unwrap_err();
            assert!(err.contains(why), "{err} should say {why}");
        }
    }
}
