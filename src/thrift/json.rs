//! JSON <-> Thrift `Json` (a pre-order token list; see `thrift/eventpipe.thrift`).
//!
//! The mapping is lossless for everything `serde_json::Value` can hold: i64 and u64 stay integers
//! (u64 above i64::MAX is tagged `UINT`), f64 keeps every bit, strings are UTF-8, object member
//! order is preserved as parsed.

use serde_json::{Map, Number, Value};
use thrift::OrderedFloat;

use super::generated::{Json, Token, TokenKind};

fn token(kind: TokenKind, key: Option<&str>) -> Token {
    Token {
        kind,
        key: key.map(str::to_owned),
        int_value: None,
        double_value: None,
        string_value: None,
        length: None,
    }
}

/// Converts a JSON value into its token list.
pub fn to_thrift(value: &Value) -> Json {
    let mut tokens = Vec::with_capacity(16);
    push(value, None, &mut tokens);
    Json { tokens }
}

fn push(value: &Value, key: Option<&str>, out: &mut Vec<Token>) {
    match value {
        Value::Null => out.push(token(TokenKind::NULL_VALUE, key)),
        Value::Bool(false) => out.push(token(TokenKind::FALSE_VALUE, key)),
        Value::Bool(true) => out.push(token(TokenKind::TRUE_VALUE, key)),
        Value::Number(n) => {
            let mut t;
            if let Some(i) = n.as_i64() {
                t = token(TokenKind::INT, key);
                t.int_value = Some(i);
            } else if let Some(u) = n.as_u64() {
                t = token(TokenKind::UINT, key);
                t.int_value = Some(u as i64);
            } else {
                t = token(TokenKind::DOUBLE, key);
                t.double_value = Some(OrderedFloat(n.as_f64().unwrap_or(f64::NAN)));
            }
            out.push(t);
        }
        Value::String(s) => {
            let mut t = token(TokenKind::STRING, key);
            t.string_value = Some(s.clone());
            out.push(t);
        }
        Value::Array(items) => {
            let mut t = token(TokenKind::ARRAY, key);
            t.length = Some(len_i32(items.len()));
            out.push(t);
            for item in items {
                push(item, None, out);
            }
        }
        Value::Object(members) => {
            let mut t = token(TokenKind::OBJECT, key);
            t.length = Some(len_i32(members.len()));
            out.push(t);
            for (k, v) in members {
                push(v, Some(k), out);
            }
        }
    }
}

fn len_i32(n: usize) -> i32 {
    // Bodies are capped at a few MiB, so no container can hold 2^31 elements.
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Why a token list is not a well-formed JSON value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("token list ended inside a container")]
    Truncated,
    #[error("{0} tokens left over after the value")]
    Trailing(usize),
    #[error("token {index}: {problem}")]
    Malformed { index: usize, problem: &'static str },
}

/// Rebuilds the JSON value from its token list. Iterative: depth costs heap, not stack.
pub fn from_thrift(json: &Json) -> Result<Value, DecodeError> {
    enum Frame {
        Array(Vec<Value>, usize),
        Object(Map<String, Value>, usize),
    }
    let tokens = &json.tokens;
    let mut stack: Vec<(Frame, Option<String>)> = Vec::new();
    let mut i = 0;
    loop {
        let t = tokens.get(i).ok_or(DecodeError::Truncated)?;
        let bad = |problem| DecodeError::Malformed { index: i, problem };
        let mut value = match t.kind {
            TokenKind::NULL_VALUE => Some(Value::Null),
            TokenKind::FALSE_VALUE => Some(Value::Bool(false)),
            TokenKind::TRUE_VALUE => Some(Value::Bool(true)),
            TokenKind::INT => Some(Value::from(
                t.int_value.ok_or(bad("INT without int_value"))?,
            )),
            TokenKind::UINT => Some(Value::from(
                t.int_value.ok_or(bad("UINT without int_value"))? as u64,
            )),
            TokenKind::DOUBLE => {
                let f = t.double_value.ok_or(bad("DOUBLE without double_value"))?.0;
                Some(Value::Number(
                    Number::from_f64(f).ok_or(bad("DOUBLE is not finite"))?,
                ))
            }
            TokenKind::STRING => Some(Value::String(
                t.string_value
                    .clone()
                    .ok_or(bad("STRING without string_value"))?,
            )),
            TokenKind::ARRAY | TokenKind::OBJECT => {
                let len = t.length.ok_or(bad("container without length"))?;
                let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
                let frame = if t.kind == TokenKind::ARRAY {
                    Frame::Array(Vec::with_capacity(len.min(1024)), len)
                } else {
                    Frame::Object(Map::new(), len)
                };
                stack.push((frame, t.key.clone()));
                None
            }
            _ => return Err(bad("unknown token kind")),
        };
        let mut key = t.key.clone();
        i += 1;
        // Attach finished values to their parents, closing every container that is now full.
        while let Some((frame, frame_key)) = stack.last_mut() {
            if let Some(v) = value.take() {
                match frame {
                    Frame::Array(items, _) => items.push(v),
                    Frame::Object(members, _) => {
                        let k = key.take().ok_or(DecodeError::Malformed {
                            index: i - 1,
                            problem: "object member without key",
                        })?;
                        members.insert(k, v);
                    }
                }
            }
            let full = match frame {
                Frame::Array(items, len) => items.len() == *len,
                Frame::Object(members, len) => members.len() == *len,
            };
            if !full {
                break;
            }
            let frame_key = frame_key.take();
            let (frame, _) = stack.pop().expect("stack is non-empty");
            value = Some(match frame {
                Frame::Array(items, _) => Value::Array(items),
                Frame::Object(members, _) => Value::Object(members),
            });
            key = frame_key;
        }
        if stack.is_empty() {
            if let Some(v) = value {
                return match tokens.len() - i {
                    0 => Ok(v),
                    n => Err(DecodeError::Trailing(n)),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thrift::{arb_json, from_compact_bytes, to_compact_bytes};
    use proptest::prelude::*;
    use serde_json::json;

    fn roundtrip(v: &Value) -> Value {
        let bytes = to_compact_bytes(&to_thrift(v));
        let decoded: Json = from_compact_bytes(&bytes).expect("decodes");
        from_thrift(&decoded).expect("well formed")
    }

    #[test]
    fn documented_example_has_documented_tokens() {
        let v = json!({"a": [1, 2.5], "b": null});
        let t = to_thrift(&v).tokens;
        let kinds: Vec<_> = t.iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            [
                TokenKind::OBJECT,
                TokenKind::ARRAY,
                TokenKind::INT,
                TokenKind::DOUBLE,
                TokenKind::NULL_VALUE
            ]
        );
        assert_eq!(t[1].key.as_deref(), Some("a"));
        assert_eq!(t[4].key.as_deref(), Some("b"));
        assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn edge_numbers_survive() {
        let v = json!([
            i64::MIN,
            i64::MAX,
            u64::MAX,
            0.1,
            -0.0,
            1e308,
            5e-324,
            9007199254740993u64
        ]);
        let back = roundtrip(&v);
        assert_eq!(back, v);
        assert!(back[2].is_u64() && back[0].is_i64());
    }

    #[test]
    fn empty_containers_and_scalars_at_top() {
        for v in [
            json!({}),
            json!([]),
            json!("x"),
            json!(null),
            json!([[[]], {"a": {}}]),
        ] {
            assert_eq!(roundtrip(&v), v);
        }
    }

    #[test]
    fn malformed_token_lists_are_errors_not_panics() {
        let obj = |len| Json {
            tokens: vec![Token {
                length: Some(len),
                ..token(TokenKind::OBJECT, None)
            }],
        };
        assert_eq!(from_thrift(&obj(1)), Err(DecodeError::Truncated));
        assert!(from_thrift(&obj(-1)).is_err());
        assert!(from_thrift(&Json { tokens: vec![] }).is_err());
        let mut two = to_thrift(&json!(1));
        two.tokens.push(token(TokenKind::NULL_VALUE, None));
        assert_eq!(from_thrift(&two), Err(DecodeError::Trailing(1)));
        let keyless = Json {
            tokens: vec![
                Token {
                    length: Some(1),
                    ..token(TokenKind::OBJECT, None)
                },
                token(TokenKind::TRUE_VALUE, None),
            ],
        };
        assert!(from_thrift(&keyless).is_err());
    }

    #[test]
    fn depth_64_round_trips() {
        let mut v = json!("leaf");
        for i in 0..64 {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({"k": v})
            };
        }
        assert_eq!(roundtrip(&v), v);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Whatever JSON was validated is exactly what a consumer decodes, via real text too:
        /// numbers keep their integer/float type and full precision.
        #[test]
        fn json_thrift_json_is_identity(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            let parsed: Value = serde_json::from_str(&text).unwrap();
            let back = roundtrip(&parsed);
            prop_assert_eq!(&back, &parsed);
            prop_assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
    }
}
