//! `POST /v1/events`: read, decode, run the pipeline, wait for Kafka, answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use super::admission::Charge;
use super::body::{check_content_type, decompress_within, encoding, read_limited, Encoding};
use super::client_ip::client_ip;
use super::error::ApiError;
use super::AppState;
use crate::metrics as m;
use crate::pipeline::{self, dead_letter_for_request, Bundle};
use crate::sink::{Delivered, RecordKind};
use crate::thrift::Enrichment;

pub async fn ingest(State(gw): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let mut enrichment = enrichment(&gw, peer, &parts.headers);
    match handle(&gw, &parts.headers, body, &mut enrichment).await {
        Ok(resp) => resp,
        Err((err, body)) => {
            // Refusals for want of capacity are not dead-lettered: that would add work exactly
            // when there is too much.
            let refused = matches!(
                err,
                ApiError::Unavailable { .. } | ApiError::Overloaded { .. }
            );
            metrics::counter!(m::REQUESTS_REFUSED, "reason" => err.code()).increment(1);
            if !refused {
                record_refused_request(&gw, &err, &body, enrichment);
            }
            err.into_response()
        }
    }
}

fn enrichment(gw: &AppState, peer: Option<SocketAddr>, headers: &HeaderMap) -> Enrichment {
    let header_text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(1024).collect::<String>())
    };
    Enrichment {
        received_at_ms: crate::now_ms(),
        client_ip: client_ip(peer, headers, &gw.trusted_proxies).map(|ip| ip.to_string()),
        user_agent: header_text(header::USER_AGENT),
        collector_host: gw.collector.host.clone(),
        collector_version: gw.collector.version.clone(),
        sent_at: None,
        origin: header_text(header::ORIGIN),
    }
}

async fn handle(
    gw: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
    enrichment: &mut Enrichment,
) -> Result<Response, (ApiError, Bytes)> {
    let limits = &gw.pipeline.limits;
    check_content_type(headers).map_err(|e| (e, Bytes::new()))?;
    let enc = encoding(headers).map_err(|e| (e, Bytes::new()))?;
    let declared = content_length(headers).unwrap_or(limits.max_body_bytes);
    if declared > limits.max_body_bytes {
        let err = ApiError::BodyTooLarge {
            limit: limits.max_body_bytes,
        };
        return Err((err, Bytes::new()));
    }
    // Held until the answer is built: see `admission` for what the charge covers when.
    let _request = gw.admission.request().map_err(|e| (e, Bytes::new()))?;
    let mut charge = gw
        .admission
        .charge(declared)
        .map_err(|e| (e, Bytes::new()))?;
    let wire = read_limited(body, headers, limits.max_body_bytes).await?;
    charge.shrink_to(wire.len());
    metrics::counter!(m::BODY_BYTES).increment(wire.len() as u64);

    // Small plain bodies are processed inline (about a millisecond of CPU at most): handing
    // them to the blocking pool cost ~20% CPU per event in the benchmark. Anything compressed
    // (its decoded size is unknown) or larger goes to the pool.
    let (mut processed, total, sent_at, _charge) =
        if enc == Encoding::Identity && wire.len() <= INLINE_MAX_BYTES {
            decode_and_process(gw, wire, enc, charge, enrichment.clone())?
        } else {
            let work = {
                let (gw, enrichment) = (gw.clone(), enrichment.clone());
                move || decode_and_process(&gw, wire, enc, charge, enrichment)
            };
            gw.admission
                .run_blocking(work)
                .await
                .map_err(|e| (e, Bytes::new()))??
        };
    enrichment.sent_at = sent_at;

    // Retries of events this host already made durable are answered without producing them.
    let client_id = |r: &crate::sink::Record| match r.kind {
        RecordKind::Event { client_id } => client_id,
        RecordKind::DeadLetter => None,
    };
    let offered: Vec<u128> = processed.records.iter().filter_map(client_id).collect();
    // `seen` is aligned with `offered`: one entry per record that has a client id, in order.
    let mut seen = gw.dedup.seen(&offered).into_iter();
    let mut client_ids = Vec::with_capacity(offered.len());
    let mut deduplicated = 0u64;
    processed.records.retain(|r| match client_id(r) {
        Some(_) if seen.next().unwrap_or(false) => {
            deduplicated += 1;
            false
        }
        Some(id) => {
            client_ids.push(id);
            true
        }
        None => true,
    });

    let deadline = Instant::now() + gw.ack_timeout;
    let delivered = match gw.sink.send_batch(processed.records, deadline).await {
        Ok(d) => d,
        Err(cause) => {
            metrics::counter!(m::EVENTS, "outcome" => "refused", "reason" => cause.reason())
                .increment(total as u64);
            let err = ApiError::Unavailable {
                retry_after_secs: gw.sink.retry_after_secs(),
                cause,
            };
            return Err((err, Bytes::new()));
        }
    };
    gw.dedup.insert_all(client_ids);
    count_outcomes(
        &processed.accepted_by_schema,
        &processed.rejected,
        &delivered,
        deduplicated,
    );
    if delivered.spooled_records > 0 {
        let body = json!({
            "accepted": processed.accepted,
            "spooled": delivered.spooled_events,
            "rejected": processed.rejected,
        });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let body = json!({"accepted": processed.accepted, "rejected": processed.rejected});
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Plain bodies up to this size are decoded and processed on the async worker.
pub const INLINE_MAX_BYTES: usize = 64 << 10;

/// The CPU-heavy stages, on the blocking pool: decompress within the byte budget, parse, check
/// the event count, validate and encode. Returns the records with the charge lowered to their size.
#[allow(clippy::type_complexity)]
fn decode_and_process(
    gw: &AppState,
    wire: Bytes,
    enc: Encoding,
    mut charge: Charge,
    mut enrichment: Enrichment,
) -> Result<(pipeline::Processed, usize, Option<String>, Charge), (ApiError, Bytes)> {
    let limits = &gw.pipeline.limits;
    let decoded = decompress_within(wire.clone(), enc, limits.max_decompressed_bytes, &mut |n| {
        charge.grow(n)
    })
    .map_err(|e| (e, wire.clone()))?;
    drop(wire);
    metrics::counter!(m::DECOMPRESSED_BYTES).increment(decoded.len() as u64);
    // The pipeline's output is about the size of its input (item 2 bounds the multiple).
    charge.grow(decoded.len()).map_err(|e| (e, Bytes::new()))?;

    let bundle = Bundle::parse(&decoded, limits.max_depth).map_err(|e| {
        let err = match e {
            pipeline::BundleError::NotABundle(msg) => ApiError::NotABundle(msg),
            other => ApiError::Undecodable(other.to_string()),
        };
        (err, decoded.clone())
    })?;
    if bundle.events.len() > limits.max_events {
        let err = ApiError::TooManyEvents {
            count: bundle.events.len(),
            limit: limits.max_events,
        };
        return Err((err, decoded.clone()));
    }
    if let Some(sent_at) = &bundle.sent_at {
        enrichment.sent_at = Some(sent_at.chars().take(64).collect());
    }
    let processed = pipeline::process(&bundle, &gw.registry, &gw.pipeline, &enrichment);
    let total = bundle.events.len();
    drop(bundle);
    drop(decoded);
    charge.shrink_to(processed.records.iter().map(record_bytes).sum());
    Ok((processed, total, enrichment.sent_at, charge))
}

fn record_bytes(r: &crate::sink::Record) -> usize {
    let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    r.payload.len() + r.key.as_ref().map_or(0, Vec::len) + headers
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Every event ends in exactly one outcome, counted per request (not per event).
fn count_outcomes(
    accepted_by_schema: &[(std::sync::Arc<str>, usize)],
    rejected: &[pipeline::Rejection],
    delivered: &Delivered,
    deduplicated: u64,
) {
    let accepted: usize = accepted_by_schema.iter().map(|(_, n)| n).sum();
    let spooled = delivered.spooled_events as u64;
    if spooled > 0 {
        metrics::counter!(m::EVENTS, "outcome" => "spool", "reason" => "kafka_unavailable")
            .increment(spooled);
    }
    if deduplicated > 0 {
        metrics::counter!(m::DEDUP_HITS).increment(deduplicated);
        metrics::counter!(m::EVENTS, "outcome" => "deduplicated", "reason" => "retry")
            .increment(deduplicated);
    }
    // Events that went to Kafka: attribute per schema when nothing was spooled or deduplicated
    // (the common case); otherwise as one total, since which schema's events were spooled is
    // not tracked.
    let to_kafka = (accepted as u64).saturating_sub(spooled + deduplicated);
    if to_kafka == accepted as u64 {
        for (schema, n) in accepted_by_schema {
            metrics::counter!(m::EVENTS, "outcome" => "kafka", "reason" => "accepted", "schema" => schema.to_string())
                .increment(*n as u64);
        }
    } else if to_kafka > 0 {
        metrics::counter!(m::EVENTS, "outcome" => "kafka", "reason" => "accepted", "schema" => "_mixed")
            .increment(to_kafka);
    }
    let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
    for r in rejected {
        *by_reason.entry(r.reason.as_str()).or_default() += 1;
    }
    for (reason, n) in by_reason {
        metrics::counter!(m::EVENTS, "outcome" => "rejected", "reason" => reason).increment(n);
    }
}

/// Writes a refused request to the dead-letter topic in the background: the client's answer does
/// not wait on Kafka, but a failed write is counted, never silent.
fn record_refused_request(gw: &AppState, err: &ApiError, body: &Bytes, enrichment: Enrichment) {
    let record = dead_letter_for_request(
        err.code(),
        &err.to_string(),
        err.status().as_u16(),
        body,
        &gw.pipeline.dead_letter_topic,
        gw.pipeline.limits.dead_letter_max_bytes,
        &enrichment,
    );
    let gw = gw.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + gw.ack_timeout;
        if let Err(e) = gw.sink.send_batch(vec![record], deadline).await {
            metrics::counter!(m::DEAD_LETTER_FAILURES, "reason" => e.reason()).increment(1);
            tracing::warn!(error = %e, "could not record a refused request in the dead-letter topic");
        }
    });
}

/// Benchmark-only handler: the HTTP stack's ceiling (body read, nothing else).
pub async fn read_and_discard(State(gw): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    match read_limited(body, &parts.headers, gw.pipeline.limits.max_body_bytes).await {
        Ok(_) => (StatusCode::OK, Json(json!({"accepted": 0, "rejected": []}))).into_response(),
        Err((err, _)) => err.into_response(),
    }
}
