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
use super::auth::Grant;
use super::body::{check_content_type, decompress_within, encoding, read_limited, Encoding};
use super::error::ApiError;
use super::request_id::RequestId;
use super::{refused, AppState};
use crate::dedup::Seen;
use crate::metrics as m;
use crate::pipeline::{self, dead_letter_for_request, Bundle};
use crate::sink::RecordKind;
use crate::thrift::Enrichment;

pub async fn ingest(State(gw): State<AppState>, req: Request) -> Response {
    match run(&gw, req, None).await {
        Ok(outcome) => outcome.into_response(),
        Err(err) => err.into_response(),
    }
}

/// Turns a protocol's decoded request body into a native bundle (`{"events": [...]}` JSON), so
/// other wire formats (Segment, Snowplow, the GET pixel) share every later stage: limits, dedup,
/// validation, dead letters, Kafka and the spool. Runs where the native parse runs (on the
/// blocking pool for big or compressed bodies); a refusal is answered and dead-lettered like a
/// native one. Implementations must bound their output (a small multiple of their input).
pub trait Translate: Send + Sync + 'static {
    fn translate(&self, body: &[u8]) -> Result<Vec<u8>, ApiError>;

    /// Whether the bundle may carry this translator's own rejections (`pipeline::translated`).
    /// `false` for one that passes a client's JSON through as whole events (the GET pixel): its
    /// events are then read exactly as a native client's, so a client cannot forge a rejection.
    fn writes_rejections(&self) -> bool {
        true
    }
}

/// What a request's events came to, before it is shaped into a protocol's answer.
#[derive(Debug)]
pub struct Outcome {
    /// Events made durable (in Kafka or the spool), dead-lettered invalid events excluded.
    pub accepted: usize,
    /// Of `accepted`, those made durable in the spool rather than Kafka (answered 202 natively).
    pub spooled: usize,
    /// Invalid events, each dead-lettered with its reason.
    pub rejected: Vec<pipeline::Rejection>,
    /// Events neither stored nor dead-lettered (the dead-letter topic refused them): retry.
    pub failed: Vec<refused::Failed>,
}

impl Outcome {
    /// The native status: 500 when any event failed, 202 when any was spooled, else 200.
    pub fn status(&self) -> StatusCode {
        if !self.failed.is_empty() {
            // Events neither stored nor dead-lettered: Kafka refuses our own dead letters, a
            // misconfiguration (missing or unwritable dead-letter topic) only an operator can
            // fix. 500, not 4xx: the event may be fine, and a client retry succeeds once the
            // topic is fixed; a 4xx would make clients drop events nothing stored.
            StatusCode::INTERNAL_SERVER_ERROR
        } else if self.spooled > 0 {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        }
    }
}

impl IntoResponse for Outcome {
    /// The native answer of `POST /v1/events`.
    fn into_response(self) -> Response {
        let status = self.status();
        let body = if !self.failed.is_empty() {
            json!({
                "error": "dead_letter_refused",
                "message": "some events could not be stored, not even in the dead-letter topic; retry later",
                "accepted": self.accepted,
                "spooled": self.spooled,
                "rejected": self.rejected,
                "failed": self.failed,
            })
        } else if self.spooled > 0 {
            json!({"accepted": self.accepted, "spooled": self.spooled, "rejected": self.rejected})
        } else {
            json!({"accepted": self.accepted, "rejected": self.rejected})
        };
        (status, Json(body)).into_response()
    }
}

/// Runs one request through the pipeline: body within limits, `translate` (for other wire
/// formats; `None` for native bundles), validation, Kafka or the spool. A refusal is counted,
/// audited and (when its body was read) dead-lettered before it is returned.
pub async fn run(
    gw: &AppState,
    req: Request,
    translate: Option<std::sync::Arc<dyn Translate>>,
) -> Result<Outcome, ApiError> {
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let mut enrichment = enrichment(gw, peer, &parts.headers);
    let grant = parts.extensions.get::<Grant>().cloned();
    let request_id = parts.extensions.get::<RequestId>().cloned();
    let input = Input {
        headers: &parts.headers,
        body,
        translate,
    };
    match handle(gw, input, &mut enrichment, grant, &request_id).await {
        Ok(outcome) => Ok(outcome),
        Err((err, body)) => {
            // Refusals for want of capacity are not dead-lettered: that would add work exactly
            // when there is too much (and a rate-limited flood must not become Kafka writes).
            let refused = matches!(
                err,
                ApiError::Unavailable { .. }
                    | ApiError::Overloaded { .. }
                    | ApiError::RateLimited { .. }
            );
            metrics::counter!(m::REQUESTS_REFUSED, "reason" => err.code()).increment(1);
            gw.audit.refused(err.code());
            if !refused {
                record_refused_request(gw, &err, &body, enrichment, request_id);
            }
            Err(err)
        }
    }
}

/// A request's body and how to read it.
struct Input<'a> {
    headers: &'a HeaderMap,
    body: axum::body::Body,
    translate: Option<std::sync::Arc<dyn Translate>>,
}

fn enrichment(gw: &AppState, peer: Option<SocketAddr>, headers: &HeaderMap) -> Enrichment {
    // Copied into every record of the request: cut to a few hundred bytes.
    let header_text = |name: header::HeaderName, max: usize| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| pipeline::bounds::cut(s, max))
    };
    Enrichment {
        received_at_ms: crate::now_ms(),
        client_ip: gw.client_ip(peer, headers).map(|ip| ip.to_string()),
        user_agent: header_text(header::USER_AGENT, pipeline::bounds::USER_AGENT_MAX),
        collector_host: gw.collector.host.clone(),
        collector_version: gw.collector.version.clone(),
        sent_at: None,
        origin: header_text(header::ORIGIN, pipeline::bounds::ORIGIN_MAX),
    }
}

async fn handle(
    gw: &AppState,
    input: Input<'_>,
    enrichment: &mut Enrichment,
    grant: Option<Grant>,
    request_id: &Option<RequestId>,
) -> Result<Outcome, (ApiError, Bytes)> {
    let Input {
        headers,
        body,
        translate,
    } = input;
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
    let Decoded {
        mut processed,
        total,
        sent_at,
        charge: _charge,
        body: decoded,
    } = if enc == Encoding::Identity && wire.len() <= INLINE_MAX_BYTES {
        let job = Job {
            wire,
            enc,
            charge,
            translate,
        };
        decode_and_process(gw, job, enrichment.clone(), grant, request_id)?
    } else {
        let work = {
            let (gw, enrichment, id) = (gw.clone(), enrichment.clone(), request_id.clone());
            let job = Job {
                wire,
                enc,
                charge,
                translate,
            };
            move || decode_and_process(&gw, job, enrichment, grant, &id)
        };
        gw.admission
            .run_blocking(work)
            .await
            .map_err(|e| (e, Bytes::new()))??
    };
    enrichment.sent_at = sent_at;
    m::observe_clock_skew(enrichment.sent_at.as_deref(), enrichment.received_at_ms);

    // Retries of events this host already made durable are answered without producing them,
    // with the durability their original got (a spooled original is answered 202 again).
    let client_id = |r: &crate::sink::Record| match r.kind {
        RecordKind::Event { client_id } => client_id,
        RecordKind::DeadLetter => None,
    };
    let offered: Vec<u128> = processed.records.iter().filter_map(client_id).collect();
    // `seen` is aligned with `offered`: one entry per record that has a client id, in order.
    let seen = gw.dedup.seen(&offered);
    let (mut deduplicated, mut dedup_spooled) = (0u64, 0usize);
    for s in &seen {
        match s {
            Seen::New => {}
            Seen::InKafka => deduplicated += 1,
            Seen::Spooled => {
                deduplicated += 1;
                dedup_spooled += 1;
            }
        }
    }
    if deduplicated > 0 {
        let mut seen = seen.iter();
        let keep: Vec<bool> = processed
            .records
            .iter()
            .map(|r| client_id(r).is_none() || seen.next() == Some(&Seen::New))
            .collect();
        let mut k = keep.iter();
        processed.records.retain(|_| *k.next().unwrap_or(&true));
        let mut k = keep.iter();
        processed.origins.retain(|_| *k.next().unwrap_or(&true));
    }
    // (record index, client id) of what is produced, remembered once durable.
    let client_ids: Vec<(usize, u128)> = processed
        .records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| client_id(r).map(|id| (i, id)))
        .collect();

    let deadline = Instant::now() + gw.ack_timeout;
    let sent = crate::audit::send(
        &gw.audit,
        gw.sink.as_ref(),
        processed.records,
        deadline,
        enrichment.received_at_ms,
    );
    let delivered = match sent.await {
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
    let mut rejected = processed.rejected;
    let mut accepted = processed.accepted;
    let mut settled = refused::Settled::default();
    if !delivered.refused.is_empty() {
        settled = refused::settle(
            gw,
            &delivered.refused,
            &processed.origins,
            &decoded,
            enrichment,
            request_id.as_ref().map(RequestId::as_str),
        )
        .await;
        accepted -= settled.refused_events.len().min(accepted);
        let mut lost = std::mem::take(&mut settled.lost_rejections);
        lost.sort_unstable();
        for &(position, reason) in lost.iter().rev() {
            if position < rejected.len() {
                let r = rejected.remove(position);
                settled.failed.push(refused::to_failed(r, reason));
            }
        }
        rejected.append(&mut settled.rejected);
        rejected.sort_by_key(|r| r.index);
        settled.failed.sort_by_key(|f| f.index);
    }
    let spooled = delivered.spooled_records + settled.spooled_letters > 0 || dedup_spooled > 0;
    gw.dedup.insert_all(
        client_ids
            .into_iter()
            .filter(|(i, _)| !settled.refused_events.contains(i))
            .map(|(_, id)| id),
        spooled,
    );
    count_outcomes(
        &processed.accepted_by_schema,
        accepted,
        &rejected,
        delivered.spooled_events,
        deduplicated,
        settled.failed.len(),
    );
    Ok(Outcome {
        accepted,
        spooled: delivered.spooled_events + dedup_spooled,
        rejected,
        failed: settled.failed,
    })
}

/// Plain bodies up to this size are decoded and processed on the async worker.
pub const INLINE_MAX_BYTES: usize = 64 << 10;

/// The CPU-heavy stages, on the blocking pool: decompress within the byte budget, parse, check
/// the event count, validate and encode. Returns the records with the charge lowered to their size.
#[allow(clippy::type_complexity)]
fn decode_and_process(
    gw: &AppState,
    job: Job,
    mut enrichment: Enrichment,
    grant: Option<Grant>,
    request_id: &Option<RequestId>,
) -> Result<Decoded, (ApiError, Bytes)> {
    let Job {
        wire,
        enc,
        mut charge,
        translate,
    } = job;
    let limits = &gw.pipeline.limits;
    let decoded = decompress_within(wire.clone(), enc, limits.max_decompressed_bytes, &mut |n| {
        charge.grow(n)
    })
    .map_err(|e| (e, wire.clone()))?;
    drop(wire);
    // Another wire format: the native bundle replaces the body (a refusal keeps the original
    // body for its dead letter). Its size is charged like a decompressed body's.
    let translated = translate.as_ref().is_some_and(|t| t.writes_rejections());
    let decoded = match translate {
        None => decoded,
        Some(t) => {
            let native = t.translate(&decoded).map_err(|e| (e, decoded.clone()))?;
            charge.grow(native.len()).map_err(|e| (e, Bytes::new()))?;
            Bytes::from(native)
        }
    };
    metrics::counter!(m::DECOMPRESSED_BYTES).increment(decoded.len() as u64);
    // The pipeline's output is bounded by a small multiple of its input (`limits.max_output_ratio`);
    // charge one multiple up front, the rest is checked as records are built.
    charge.grow(decoded.len()).map_err(|e| (e, Bytes::new()))?;

    let mut bundle = Bundle::parse(&decoded, limits.max_depth).map_err(|e| {
        let err = match e {
            pipeline::BundleError::NotABundle(msg) => ApiError::NotABundle(msg),
            other => ApiError::Undecodable(other.to_string()),
        };
        (err, decoded.clone())
    })?;
    bundle.translated = translated;
    if bundle.events.len() > limits.max_events {
        let err = ApiError::TooManyEvents {
            count: bundle.events.len(),
            limit: limits.max_events,
        };
        return Err((err, decoded.clone()));
    }
    if bundle.context_bytes > limits.max_context_bytes {
        let err = ApiError::ContextTooLarge {
            size: bundle.context_bytes,
            limit: limits.max_context_bytes,
        };
        return Err((err, decoded.clone()));
    }
    if let Some(err) = grant
        .as_ref()
        .and_then(|g| g.take_events(bundle.events.len()).err())
    {
        metrics::counter!(m::EVENTS, "outcome" => "refused", "reason" => err.code())
            .increment(bundle.events.len() as u64);
        return Err((err, Bytes::new()));
    }
    if let Some(sent_at) = &bundle.sent_at {
        enrichment.sent_at = Some(sent_at.chars().take(64).collect());
    }
    let allowed = |s: &crate::schema::Schema| grant.as_ref().is_none_or(|g| g.allows_schema(s));
    let processed = pipeline::process_allowed(
        &bundle,
        &gw.registry,
        &gw.pipeline,
        &enrichment,
        request_id.as_ref().map(RequestId::as_str),
        &allowed,
    )
    .map_err(|e| (ApiError::OutputTooLarge(e), decoded.clone()))?;
    let total = bundle.events.len();
    drop(bundle);
    // The body stays until the answer: a record Kafka refuses becomes a dead letter holding its
    // event's JSON, sliced from it.
    let held = processed.output_bytes + decoded.len();
    // The records may outgrow what was charged for them (up to the output budget): charge the
    // difference, or give the rest back.
    charge
        .grow(held.saturating_sub(charge.bytes()))
        .map_err(|e| (e, Bytes::new()))?;
    charge.shrink_to(held);
    Ok(Decoded {
        processed,
        total,
        sent_at: enrichment.sent_at,
        charge,
        body: decoded,
    })
}

/// The body as read, for the CPU-heavy stages.
struct Job {
    wire: Bytes,
    enc: Encoding,
    charge: Charge,
    translate: Option<std::sync::Arc<dyn Translate>>,
}

/// What the CPU-heavy stages hand back to the request.
struct Decoded {
    processed: pipeline::Processed,
    /// Events in the bundle.
    total: usize,
    sent_at: Option<String>,
    /// Held until the answer is built.
    charge: Charge,
    /// The decompressed body the records' origins point into.
    body: Bytes,
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
    accepted: usize,
    rejected: &[pipeline::Rejection],
    spooled_events: usize,
    deduplicated: u64,
    failed: usize,
) {
    let valid: usize = accepted_by_schema.iter().map(|(_, n)| n).sum();
    let spooled = spooled_events as u64;
    if spooled > 0 {
        metrics::counter!(m::EVENTS, "outcome" => "spool", "reason" => "kafka_unavailable")
            .increment(spooled);
    }
    if deduplicated > 0 {
        metrics::counter!(m::DEDUP_HITS).increment(deduplicated);
        metrics::counter!(m::EVENTS, "outcome" => "deduplicated", "reason" => "retry")
            .increment(deduplicated);
    }
    if failed > 0 {
        metrics::counter!(m::EVENTS, "outcome" => "failed", "reason" => "dead_letter_refused")
            .increment(failed as u64);
    }
    // Events that went to Kafka: attribute per schema when nothing was spooled, deduplicated or
    // refused (the common case); otherwise as one total, since which schema's events were
    // spooled is not tracked.
    let to_kafka = (accepted as u64).saturating_sub(spooled + deduplicated);
    if to_kafka == valid as u64 {
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
///
/// Only requests whose body was read get one: a refusal on the headers alone (415, a
/// Content-Length over the limit) costs its client nothing, so a dead letter for it would let
/// header-only requests turn into Kafka (or spool) writes; those are counted in
/// `eventpipe_requests_refused_total`. At most `REFUSED_LETTERS_IN_FLIGHT` are written at once;
/// beyond, they are counted as failures (`reason="backlog"`) rather than queued without bound.
fn record_refused_request(
    gw: &AppState,
    err: &ApiError,
    body: &Bytes,
    enrichment: Enrichment,
    request_id: Option<RequestId>,
) {
    static IN_FLIGHT: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(REFUSED_LETTERS_IN_FLIGHT);
    if body.is_empty() {
        return;
    }
    let Ok(permit) = IN_FLIGHT.try_acquire() else {
        metrics::counter!(m::DEAD_LETTER_FAILURES, "reason" => "backlog").increment(1);
        return;
    };
    let received_at_ms = enrichment.received_at_ms;
    let record = dead_letter_for_request(
        err.code(),
        &err.to_string(),
        err.status().as_u16(),
        body,
        &gw.pipeline,
        &enrichment,
        request_id.as_ref().map(RequestId::as_str),
    );
    let gw = gw.clone();
    // Its log lines still name the request.
    let span = tracing::Span::current();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _permit = permit;
            let deadline = Instant::now() + gw.ack_timeout;
            let sent = crate::audit::send(
                &gw.audit,
                gw.sink.as_ref(),
                vec![record],
                deadline,
                received_at_ms,
            );
            match sent.await {
                Err(e) => {
                    metrics::counter!(m::DEAD_LETTER_FAILURES, "reason" => e.reason()).increment(1);
                    tracing::warn!(error = %e, "could not record a refused request in the dead-letter topic");
                }
                Ok(d) => {
                    for (_, reason) in d.refused {
                        refused::dead_letter_lost(reason);
                    }
                }
            }
        },
        span,
    ));
}

/// Dead letters of refused requests being written at once, at most.
const REFUSED_LETTERS_IN_FLIGHT: usize = 256;

/// Benchmark-only handler: the HTTP stack's ceiling (body read, nothing else).
pub async fn read_and_discard(State(gw): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    match read_limited(body, &parts.headers, gw.pipeline.limits.max_body_bytes).await {
        Ok(_) => (StatusCode::OK, Json(json!({"accepted": 0, "rejected": []}))).into_response(),
        Err((err, _)) => err.into_response(),
    }
}
