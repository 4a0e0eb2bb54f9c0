//! Who may send: write keys and the per-IP rate limit, checked before the body is read.
//!
//! [`authorize`] is a middleware on every public route that takes a write key: `POST /v1/events`,
//! `GET /v1/pixel.gif` and Segment's routes (inside the CORS layer, so its 401/403/429 carry
//! CORS headers a browser can read). It runs, in order:
//! 1. the per-client-IP bucket (requests/s) — first, so a flood of bad keys is throttled too;
//! 2. the write key, from the first of: HTTP Basic user (`Authorization: Basic base64("key:")`,
//!    Segment's convention), an `X-Write-Key` header, a `key` query parameter (for
//!    `navigator.sendBeacon` and the pixel, which cannot set headers) — missing or unknown: 401;
//! 3. the key's origin list against `Origin` — not allowed: 403 `forbidden_origin`.
//!
//! Segment's routes differ when auth is on and the head carries no key (analytics.js sends its
//! key only as `writeKey` in the body): `crate::http::segment` runs step 1 ([`check_ip`]) before
//! reading anything, reads a small uncompressed body within a budget of its own, presents its
//! `writeKey` as `X-Write-Key`, and then runs steps 2-3 ([`authorize_key`]), so the IP is
//! charged once. Routes without keys (Snowplow's, unless it requires one) take step 1 alone
//! ([`rate_limit_ip`]).
//!
//! The key found travels to the handler as a [`Grant`]: there each event of a schema the key may
//! not send is rejected alone (`schema_not_allowed`, dead-lettered like any rejection; the rest of
//! the bundle proceeds), and the bundle's events are taken from the key's bucket (events/s) once
//! it is parsed.
//!
//! Requests refused here are counted (`eventpipe_requests_refused_total{reason}` and the audit,
//! [`count_refusal`]) but not written to the dead-letter topic: their bodies are unread (or, for
//! a Segment body read for its key, not yet trusted), and a flood of unauthenticated or
//! rate-limited requests must not become a flood of Kafka writes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::error::ApiError;
use super::keys::{KeyStore, Reload, WriteKey};
use super::rate_limit::{retry_after_secs, IpLimiter};
use super::AppState;
use crate::config::Config;
use crate::metrics as m;
use crate::schema::Schema;

/// The `X-Write-Key` request header.
pub const WRITE_KEY_HEADER: &str = "x-write-key";

/// Write keys (if auth is on) and the per-IP limiter (if set).
pub struct Access {
    keys: Option<Arc<KeyStore>>,
    ip: Option<IpLimiter>,
    reload_interval: Duration,
}

impl Access {
    /// From config; no I/O (the keys are read by [`Access::start`]).
    pub fn new(config: &Config) -> Self {
        Access {
            keys: config.auth.keys_file.as_ref().map(|path| {
                Arc::new(KeyStore::new(
                    path,
                    &config.rate_limit,
                    config.limits.max_events,
                ))
            }),
            ip: IpLimiter::new(&config.rate_limit),
            reload_interval: Duration::from_millis(config.auth.reload_interval_ms),
        }
    }

    /// The key store, when auth is on.
    pub fn keys(&self) -> Option<&Arc<KeyStore>> {
        self.keys.as_ref()
    }

    /// Start-up: reads the keys file (an error stops start-up, naming the file) and starts
    /// re-reading it on change and on SIGHUP.
    pub fn start(&self) -> Result<(), String> {
        if let Some(store) = &self.keys {
            if let Reload::Loaded { keys: 0 } = store.reload()? {
                tracing::warn!(
                    "auth is on but the keys file lists no keys: every request is refused"
                );
            }
            super::keys::spawn_reloader(store, self.reload_interval);
        }
        Ok(())
    }

    /// Decides on a request from its head. `Ok(None)`: open mode, go ahead.
    fn admit(
        &self,
        client: Option<std::net::IpAddr>,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Option<Grant>, ApiError> {
        self.admit_ip(client)?;
        self.admit_key(headers, uri)
    }

    /// The write key and origin checks of [`Access::admit`], without the per-IP bucket (for a
    /// request whose IP was already checked).
    fn admit_key(&self, headers: &HeaderMap, uri: &Uri) -> Result<Option<Grant>, ApiError> {
        let Some(store) = &self.keys else {
            return Ok(None);
        };
        let presented = presented_key(headers, uri)?.ok_or(ApiError::Unauthorized(
            "a write key is required: send it as the HTTP Basic user, an X-Write-Key header or a key query parameter",
        ))?;
        let key = store
            .keys()
            .find(&presented)
            .ok_or(ApiError::Unauthorized("unknown write key"))?;
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or(""));
        if !key.allows_origin(origin) {
            return Err(ApiError::ForbiddenOrigin);
        }
        metrics::counter!(m::KEY_REQUESTS, "key" => key.name.to_string()).increment(1);
        Ok(Some(Grant(key)))
    }
}

/// The write key a request presented, as the handler sees it (a request extension).
#[derive(Clone)]
pub struct Grant(pub Arc<WriteKey>);

impl Grant {
    /// May this request's key send events of `schema`?
    pub fn allows_schema(&self, schema: &Schema) -> bool {
        self.0.allows_schema(schema)
    }

    /// Takes a parsed bundle's events from the key's bucket; 429 when they do not fit.
    pub fn take_events(&self, events: usize) -> Result<(), ApiError> {
        self.0.take_events(events).map_err(|wait| {
            metrics::counter!(m::RATE_LIMITED, "limit" => "write_key").increment(1);
            ApiError::RateLimited {
                scope: "write key",
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }
}

#[derive(serde::Deserialize)]
struct KeyParam {
    key: Option<String>,
}

/// The key from the first carrier present. `Err` for a carrier that is there but unreadable.
pub(crate) fn presented_key(headers: &HeaderMap, uri: &Uri) -> Result<Option<String>, ApiError> {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bad = || {
            ApiError::Unauthorized(
                "Authorization must be Basic with the write key as the user: base64(\"<key>:\")",
            )
        };
        let value = value.to_str().map_err(|_| bad())?;
        let (scheme, credentials) = value.trim().split_once(' ').ok_or_else(bad)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(bad());
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(decoded).map_err(|_| bad())?;
        // The user is the key; the password (Segment leaves it empty) is ignored.
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        return Ok(non_empty(user.to_owned()));
    }
    if let Some(value) = headers.get(WRITE_KEY_HEADER) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("X-Write-Key is not visible ASCII"))?;
        return Ok(non_empty(value.trim().to_owned()));
    }
    if uri.query().is_some() {
        let Query(param) = Query::<KeyParam>::try_from_uri(uri)
            .map_err(|_| ApiError::Unauthorized("malformed query string"))?;
        return Ok(param.key.and_then(non_empty));
    }
    Ok(None)
}

/// The middleware; see the module doc.
pub async fn authorize(State(gw): State<AppState>, req: Request, next: Next) -> Response {
    let client = request_ip(&gw, &req);
    let decided = gw
        .access
        .admit(client, req.headers(), req.uri())
        .inspect_err(|err| count_refusal(&gw, err));
    pass(decided, req, next)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// [`authorize`] for a request whose client IP was already taken from its bucket
/// ([`check_ip`]): the key and origin checks only. `Err`: the refusal (counted), for the caller
/// to shape.
pub async fn authorize_key(gw: &AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let decided = gw
        .access
        .admit_key(req.headers(), req.uri())
        .inspect_err(|err| count_refusal(gw, err));
    pass(decided, req, next).await
}

/// The per-client-IP bucket alone, before anything else is done for a request; a refusal is
/// counted.
pub fn check_ip(gw: &AppState, req: &Request) -> Result<(), ApiError> {
    gw.access
        .admit_ip(request_ip(gw, req))
        .inspect_err(|err| count_refusal(gw, err))
}

/// Counts a refusal made before the pipeline (`eventpipe_requests_refused_total{reason}` and
/// the audit); `http_requests_total` is counted by the outermost layer, for every answer.
pub fn count_refusal(gw: &AppState, err: &ApiError) {
    metrics::counter!(m::REQUESTS_REFUSED, "reason" => err.code()).increment(1);
    gw.audit.refused(err.code());
}

fn request_ip(gw: &AppState, req: &Request) -> Option<std::net::IpAddr> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    gw.client_ip(peer, req.headers())
}

async fn pass(
    decided: Result<Option<Grant>, ApiError>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(grant) = decided? {
        req.extensions_mut().insert(grant);
    }
    Ok(next.run(req).await)
}

/// The headers an auth refusal carries (called from `ApiError::into_response`).
pub(super) fn add_headers(err: &ApiError, response: &mut Response) {
    match err {
        ApiError::Unauthorized(_) => {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"eventpipe\""),
            );
        }
        ApiError::RateLimited {
            retry_after_secs, ..
        } => {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        _ => {}
    }
}

impl Access {
    /// The per-client-IP bucket alone: for public routes that take no write key (Snowplow's,
    /// unless `snowplow.require_write_key`).
    pub(super) fn admit_ip(&self, client: Option<std::net::IpAddr>) -> Result<(), ApiError> {
        let (Some(limiter), Some(ip)) = (&self.ip, client) else {
            return Ok(());
        };
        limiter.check(ip).map_err(|wait| {
            metrics::counter!(m::RATE_LIMITED, "limit" => "client_ip").increment(1);
            ApiError::RateLimited {
                scope: "client",
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }
}

/// Middleware for public routes without write keys: only the per-IP rate limit.
pub async fn rate_limit_ip(State(gw): State<AppState>, req: Request, next: Next) -> Response {
    match check_ip(&gw, &req) {
        Ok(()) => next.run(req).await,
        Err(err) => err.into_response(),
    }
}
