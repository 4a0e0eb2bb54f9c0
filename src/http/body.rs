//! Reading a request body within limits: content type, wire size, decompression capped so a
//! decompression bomb stops at the cap instead of filling memory.

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::error::ApiError;

/// Checks `Content-Type`: JSON, or text/plain as `navigator.sendBeacon` sends a string.
/// A missing type is taken as JSON (server-side loggers often omit it).
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let mime = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(
            text.chars().take(100).collect(),
        )),
    }
}

/// The supported `Content-Encoding`s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
    Brotli,
}

pub fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let text = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        "zstd" => Ok(Encoding::Zstd),
        "br" => Ok(Encoding::Brotli),
        _ => Err(ApiError::UnsupportedEncoding(
            text.chars().take(100).collect(),
        )),
    }
}

/// Reads the wire body, refusing more than `limit` bytes (checked against Content-Length first,
/// then while streaming). On overflow returns what was read so far, for the dead letter.
///
/// With a Content-Length the body is copied into one buffer of that size as frames arrive, so
/// the request holds its wire size once (collecting the frames and then joining them would hold
/// it twice).
pub async fn read_limited(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, (ApiError, Bytes)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err((ApiError::BodyTooLarge { limit }, Bytes::new()));
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            (
                ApiError::Undecodable(format!("request body could not be read: {e}")),
                Bytes::new(),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                return Err((ApiError::BodyTooLarge { limit }, Bytes::new()));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

/// Decompresses `wire` into at most `cap` bytes. More than `cap` is refused without holding more
/// than `cap` bytes; a corrupt stream is a 400.
pub fn decompress(wire: Bytes, encoding: Encoding, cap: usize) -> Result<Bytes, ApiError> {
    decompress_within(wire, encoding, cap, &mut |_| Ok(()))
}

/// As [`decompress`], calling `reserve(n)` before the output buffer grows by `n` bytes; its error
/// (the in-flight byte budget is spent) stops decompression before the memory is taken.
pub fn decompress_within(
    wire: Bytes,
    encoding: Encoding,
    cap: usize,
    reserve: &mut dyn FnMut(usize) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    match encoding {
        Encoding::Identity => Ok(wire),
        Encoding::Gzip => {
            // A gzip member ends with its decompressed size (mod 2^32): reserve that at once, so
            // the output is one allocation instead of a doubling series with copies. A wrong
            // hint (several members, a lying client) only costs the usual growth.
            let hint = wire
                .len()
                .checked_sub(4)
                .map(|at| u32::from_le_bytes([wire[at], wire[at + 1], wire[at + 2], wire[at + 3]]));
            let hint = hint.map_or(0, |n| (n as usize).min(cap));
            reserve(hint)?;
            let decoder = flate2::read::MultiGzDecoder::new(&wire[..]);
            capped_from(decoder, cap, reserve, Vec::with_capacity(hint))
        }
        Encoding::Deflate => {
            // HTTP "deflate" is zlib-wrapped; some clients send raw deflate. Accept both.
            if looks_like_zlib(&wire) {
                capped(flate2::read::ZlibDecoder::new(&wire[..]), cap, reserve)
            } else {
                capped(flate2::read::DeflateDecoder::new(&wire[..]), cap, reserve)
            }
        }
        Encoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&wire[..]).map_err(|e| {
                ApiError::Undecodable(format!("body could not be decompressed: {e}"))
            })?;
            capped(decoder, cap, reserve)
        }
        Encoding::Brotli => capped(brotli::Decompressor::new(&wire[..], 4096), cap, reserve),
    }
}

/// Reads `reader` to the end into a buffer that never exceeds `cap` and is reserved (through
/// `reserve`) before each growth.
fn capped(
    reader: impl Read,
    cap: usize,
    reserve: &mut dyn FnMut(usize) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    capped_from(reader, cap, reserve, Vec::new())
}

/// As `capped`, into `out`, whose capacity was already reserved.
fn capped_from(
    mut reader: impl Read,
    cap: usize,
    reserve: &mut dyn FnMut(usize) -> Result<(), ApiError>,
    mut out: Vec<u8>,
) -> Result<Bytes, ApiError> {
    let mut chunk = vec![0u8; 32 << 10];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ApiError::Undecodable(format!(
                    "body could not be decompressed: {e}"
                )))
            }
        };
        let len = out.len() + n;
        if len > cap {
            return Err(ApiError::DecompressedTooLarge { limit: cap });
        }
        if len > out.capacity() {
            let want = (out.capacity() * 2).max(64 << 10).max(len).min(cap);
            reserve(want - out.capacity())?;
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(Bytes::from(out))
}

fn looks_like_zlib(data: &[u8]) -> bool {
    data.len() >= 2
        && data[0] & 0x0f == 8
        && (u16::from(data[0]) << 8 | u16::from(data[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        Bytes::from(enc.finish().unwrap())
    }

    #[test]
    fn every_encoding_round_trips() {
        let data = br#"{"events":[]}"#;
        assert_eq!(
            decompress(gzip(data), Encoding::Gzip, 100).unwrap(),
            &data[..]
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        assert_eq!(
            decompress(z.finish().unwrap().into(), Encoding::Deflate, 100).unwrap(),
            &data[..]
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(data).unwrap();
        assert_eq!(
            decompress(raw.finish().unwrap().into(), Encoding::Deflate, 100).unwrap(),
            &data[..]
        );
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            decompress(zs.into(), Encoding::Zstd, 100).unwrap(),
            &data[..]
        );
        let mut br = Vec::new();
        brotli::BrotliCompress(&mut &data[..], &mut br, &Default::default()).unwrap();
        assert_eq!(
            decompress(br.into(), Encoding::Brotli, 100).unwrap(),
            &data[..]
        );
    }

    #[test]
    fn decompression_bomb_stops_at_the_cap() {
        // 64 MiB of zeros compress to ~64 KiB; the cap is 1 MiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 200 << 10);
        let err = decompress(bomb, Encoding::Gzip, 1 << 20).unwrap_err();
        assert!(matches!(err, ApiError::DecompressedTooLarge { limit } if limit == 1 << 20));
    }

    #[test]
    fn decompression_reserves_before_it_grows_and_stops_when_refused() {
        let data = vec![b'x'; 1 << 20];
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&data).unwrap();
        let zlib = Bytes::from(zlib.finish().unwrap());
        for (wire, enc) in [(gzip(&data), Encoding::Gzip), (zlib, Encoding::Deflate)] {
            let mut reserved = 0;
            let out = decompress_within(wire.clone(), enc, 2 << 20, &mut |n| {
                reserved += n;
                Ok(())
            })
            .unwrap();
            assert_eq!(out.len(), 1 << 20);
            assert!(
                reserved >= out.len() && reserved <= 2 << 20,
                "{enc:?}: {reserved}"
            );
            // A budget of 256 KiB: refused before growing past it, with the budget's error.
            let mut budget = 256usize << 10;
            let err = decompress_within(wire, enc, 2 << 20, &mut |n| {
                budget = budget.checked_sub(n).ok_or(ApiError::Overloaded {
                    retry_after_secs: 1,
                })?;
                Ok(())
            })
            .unwrap_err();
            assert_eq!(err.code(), "overloaded", "{enc:?}");
        }
    }

    #[test]
    fn corrupt_streams_are_client_errors() {
        for enc in [
            Encoding::Gzip,
            Encoding::Deflate,
            Encoding::Zstd,
            Encoding::Brotli,
        ] {
            let err = decompress(Bytes::from_static(b"definitely not compressed"), enc, 1000)
                .unwrap_err();
            assert_eq!(err.status(), 400, "{enc:?}: {err}");
        }
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            "text/plain;charset=UTF-8".parse().unwrap(),
        );
        assert!(check_content_type(&h).is_ok());
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert_eq!(check_content_type(&h).unwrap_err().status(), 415);
        h.insert(header::CONTENT_ENCODING, "compress".parse().unwrap());
        assert_eq!(encoding(&h).unwrap_err().status(), 415);
    }
}
