//! Wiring: listeners, TLS, connection handling and the shutdown sequence.
//!
//! Shutdown (SIGTERM/SIGINT or the caller's future): `/readyz` turns false at once; the public
//! listener keeps accepting for `shutdown_grace_secs` so the load balancer notices; then it stops
//! accepting, in-flight requests finish (bounded by the request timeout), the producer is flushed,
//! and `serve` returns.
//!
//! Limits on the public listener: at most `limits.max_connections` open connections (beyond it
//! the accept loop waits, and new connections queue in the kernel's backlog), HTTP/1 heads and
//! HTTP/2 header lists of at most `limits.max_header_bytes`, `limits.http2_max_streams` streams
//! per HTTP/2 connection. Requests and bytes in flight are bounded in `http::admission`. The
//! admin listener runs on its own thread and runtime (`admin::spawn`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::{Config, TlsConfig};
use crate::http::{self, Gateway};
use crate::pipeline::{Collector, PipelineConfig};
use crate::schema::Registry;
use crate::sink::fallback::FallbackSink;
use crate::sink::kafka::{producer_config, KafkaSink};
use crate::sink::spool::{ReplayOptions, Spool, SpoolOptions};
use crate::sink::Sink;
use crate::{admin, metrics as m};

/// Runs the gateway with a Kafka sink built from `config` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // The recorder first: what the sinks record while they are built (the recovered spool's
    // gauges) would otherwise go nowhere, and the series registered at 0 would say "empty".
    m::recorder();
    let registry = Registry::load(&config.schemas)?;
    let kafka = producer_config(&config.kafka.brokers, &config.kafka.librdkafka);
    let kafka = KafkaSink::sharded(&kafka, Duration::from_secs(2), config.kafka.producers)
        .context("creating the Kafka producers")?;
    // One set of books for the request path and the replayer, attached before the replayer starts.
    let audit = Arc::new(audit_books(&config));
    let sink: Arc<dyn Sink> = if config.spool.enabled {
        let s = &config.spool;
        let spool = Spool::open(SpoolOptions {
            dir: s.dir.clone(),
            max_bytes: s.max_bytes,
            max_age: Duration::from_secs(s.max_age_secs),
            segment_bytes: s.segment_bytes,
            seal_after: Duration::from_millis(s.seal_after_ms),
            io_error_backoff: Duration::from_secs(1),
        })
        .with_context(|| {
            format!(
                "opening the spool directory {} (spool.dir)",
                s.dir.display()
            )
        })?;
        let stats = spool.stats();
        if stats.records > 0 {
            tracing::info!(
                records = stats.records,
                bytes = stats.bytes,
                "spool holds records from an earlier run; replaying"
            );
        }
        Arc::new(FallbackSink::with_audit(
            Arc::new(kafka),
            spool,
            replay_options(&config),
            audit.clone(),
        ))
    } else {
        Arc::new(kafka)
    };
    serve_inner(config, registry, sink, Some(audit), public, admin, shutdown).await
}

/// How the replayer sends a spool back to Kafka: the gateway's and `eventpipe spool drain`'s
/// (one set of rules, so a drained spool is quarantined exactly as its gateway would have).
pub fn replay_options(config: &Config) -> ReplayOptions {
    ReplayOptions {
        batch_records: config.spool.replay_batch_records,
        batch_bytes: 8 << 20,
        ack_timeout: Duration::from_millis(message_timeout_ms(config) + 5_000),
        max_backoff: Duration::from_secs(5),
        // Several metadata refreshes (librdkafka re-checks a missing topic every second).
        doubtful_refusal_grace: Duration::from_secs(30),
    }
}

/// The producer's `message.timeout.ms`: ours unless the raw librdkafka map overrides it (also
/// by its alias `delivery.timeout.ms`; the map hands them over in key order, so
/// `message.timeout.ms` wins when both are set).
fn message_timeout_ms(config: &Config) -> u64 {
    let raw = &config.kafka.librdkafka;
    raw.get("message.timeout.ms")
        .or_else(|| raw.get("delivery.timeout.ms"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::sink::kafka::MESSAGE_TIMEOUT_MS)
}

/// Builds the shared gateway state from config, registry and sink.
pub fn gateway(config: &Config, registry: Registry, sink: Arc<dyn Sink>) -> Arc<Gateway> {
    gateway_with_audit(config, registry, sink, Arc::new(audit_books(config)))
}

/// [`gateway`] counting in the given audit books.
fn gateway_with_audit(
    config: &Config,
    registry: Registry,
    sink: Arc<dyn Sink>,
    audit: Arc<crate::audit::Books>,
) -> Arc<Gateway> {
    let pipeline = PipelineConfig::new(
        config.limits.clone(),
        &config.kafka.topic_prefix,
        &config.kafka.dead_letter_topic,
        &registry,
    )
    .with_routing(&config.routing, &config.kafka.topic_prefix)
    .with_max_record_bytes(config.kafka.message_max_bytes());
    // Checked against the registry in `serve_inner` before the gateway is built.
    let segment = crate::protocol::segment::Segment::new(&config.segment, &registry)
        .ok()
        .flatten()
        .map(Arc::new);
    Arc::new(Gateway {
        registry: Arc::new(registry),
        sink,
        pipeline,
        collector: Collector {
            host: config.collector_host(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        trusted_proxies: config.trusted_proxies.clone(),
        client_ip_header: config.client_ip_header.clone(),
        ack_timeout: Duration::from_millis(config.kafka.ack_timeout_ms),
        draining: Default::default(),
        dedup: crate::dedup::DedupWindow::new(config.dedup.window),
        http_only: config.bench.http_only,
        access: http::auth::Access::new(config),
        admission: http::admission::Admission::new(&config.limits),
        audit,
        segment,
        pixel: config.pixel.clone(),
        snowplow: config.snowplow.clone(),
    })
}

/// The audit books `config` asks for (counting nothing when `audit.enabled` is false).
pub fn audit_books(config: &Config) -> crate::audit::Books {
    let a = &config.audit;
    crate::audit::Books::new(
        a.enabled,
        (a.window_secs * 1000) as i64,
        a.max_cells,
        (a.keep_secs * 1000) as i64,
        &config.kafka.dead_letter_topic,
    )
}

/// Starts the audit publisher with its own producer (see `crate::audit::publisher`).
fn audit_publisher(config: &Config, gw: &Gateway) -> anyhow::Result<crate::audit::Publisher> {
    let producer = producer_config(&config.kafka.brokers, &config.kafka.librdkafka);
    let producer =
        KafkaSink::new(&producer, Duration::from_secs(5)).context("creating the audit producer")?;
    let id = crate::audit::Identity {
        collector_host: gw.collector.host.clone(),
        collector_version: gw.collector.version.clone(),
        boot_id: uuid::Uuid::new_v4().to_string(),
    };
    tracing::info!(boot_id = %id.boot_id, topic = %config.audit.topic, "audit: publishing");
    Ok(crate::audit::Publisher::spawn(
        gw.audit.clone(),
        Arc::new(producer),
        id,
        &config.audit.topic,
        config.audit_publish_delay_ms(),
        Duration::from_millis(config.kafka.ack_timeout_ms),
        Duration::from_millis(config.audit.retry_backoff_ms),
    ))
}

/// Runs the gateway over any sink (tests use the in-memory one). Audit counts are kept but not
/// published.
pub async fn serve_with_sink(
    config: Config,
    registry: Registry,
    sink: Arc<dyn Sink>,
    public: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_inner(
        config,
        registry,
        sink,
        None,
        public,
        admin_listener,
        shutdown,
    )
    .await
}

async fn serve_inner(
    config: Config,
    registry: Registry,
    sink: Arc<dyn Sink>,
    // `serve`'s books (already counted in by its spool's replayer): then audit records are
    // published too. None (tests' `serve_with_sink`): new books, counted but never published.
    audit: Option<Arc<crate::audit::Books>>,
    public: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let publish_audit = audit.is_some();
    // Install the metrics recorder before anything records.
    let prometheus = m::recorder();
    m::register();
    // New certificates are picked up while `_tls_reload` lives.
    let (tls, _tls_reload) = config.tls.as_ref().map(tls_acceptor).transpose()?.unzip();
    metrics::gauge!(m::SCHEMAS_LOADED).set(registry.len() as f64);
    // The schemas `[segment]` maps to must exist: a start-up error naming the key.
    crate::protocol::segment::Segment::new(&config.segment, &registry)
        .map_err(anyhow::Error::msg)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    metrics::gauge!(m::START_TIME).set(now.map(|d| d.as_secs_f64()).unwrap_or(0.0));
    // The books the sink's replayer already counts in (see `serve`), else new ones.
    let audit = audit.unwrap_or_else(|| Arc::new(audit_books(&config)));
    let gw = gateway_with_audit(&config, registry, sink.clone(), audit);
    sink.attach_audit(gw.audit.clone());
    let publisher = if publish_audit && config.audit.enabled {
        Some(audit_publisher(&config, &gw)?)
    } else {
        None
    };
    gw.access.start().map_err(anyhow::Error::msg)?;
    crate::protocol::snowplow::check_schemas(&gw).map_err(anyhow::Error::msg)?;
    let router = http::app(gw.clone(), &config.cors, config.limits.request_timeout());

    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_router = admin::router(gw.clone(), prometheus);
    let admin_addr = admin_listener.local_addr()?;
    let admin_thread = admin::spawn(admin_listener.into_std()?, admin_router, admin_stop_rx)?;
    tracing::info!(
        listen = %public.local_addr()?,
        tls = tls.is_some(),
        schemas = gw.registry.len(),
        "eventpipe serving"
    );
    // systemd (`Type=notify`): READY=1 once /readyz would be true, STOPPING=1 at shutdown.
    let notifier = crate::notify::Notifier::from_env();
    let mut ready_notice = Some(tokio::spawn({
        let (notifier, gw) = (notifier.clone(), gw.clone());
        let status = format!("serving on {} (admin {admin_addr})", public.local_addr()?);
        async move {
            let ready = move || admin::Readiness::of(&gw).ready();
            notifier
                .ready_when(ready, Duration::from_millis(100), &status)
                .await
        }
    }));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = &config.limits;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .max_headers(100)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    let grace = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(grace);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                gw.draining.store(true, Ordering::SeqCst);
                if let Some(notice) = ready_notice.take() {
                    notice.abort();
                    let _ = notice.await; // never READY=1 after STOPPING=1
                }
                notifier.send("STOPPING=1\nSTATUS=shutting down: /readyz false, serving for shutdown_grace_secs");
                tracing::info!(grace_secs = config.shutdown_grace_secs, "shutdown: readiness off, still serving during grace");
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs_f64(config.shutdown_grace_secs));
            }
            _ = &mut grace, if shutting_down => break,
            // At `limits.max_connections`, stop accepting: new connections wait in the kernel's
            // listen backlog instead of in our memory.
            accepted = accept_within(&public, &gw.admission.connections) => {
                let (stream, peer, connection) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let watcher = graceful.watcher();
                let (router, builder, tls) = (router.clone(), builder.clone(), tls.clone());
                let handshake_timeout = config.limits.header_timeout();
                tokio::spawn(async move {
                    let _connection = connection;
                    match tls {
                        None => serve_connection(stream, peer, router, &builder, watcher).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => serve_connection(tls_stream, peer, router, &builder, watcher).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
        }
    }
    drop(public);
    tracing::info!("shutdown: listener closed, finishing in-flight requests");
    notifier.send("STATUS=shutting down: listener closed, finishing in-flight requests");
    if tokio::time::timeout(config.limits.request_timeout(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some connections did not finish in time");
    }
    notifier.send("STATUS=shutting down: flushing the producer");
    if let Err(e) = sink
        .flush(Duration::from_millis(config.kafka.ack_timeout_ms))
        .await
    {
        tracing::warn!(error = %e, "shutdown: producer flush incomplete");
    }
    if let Some(p) = publisher {
        // After the last request: the books are final but for the replayer.
        p.shutdown(Duration::from_millis(config.kafka.ack_timeout_ms))
            .await;
    }
    let _ = admin_stop_tx.send(());
    let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
    tracing::info!("shutdown complete");
    Ok(())
}

static LAST_CONNECTION_LIMIT_LOG: std::sync::atomic::AtomicI64 =
    std::sync::atomic::AtomicI64::new(0);

/// Accepts one connection once a connection permit is free; the permit lives as long as it.
async fn accept_within(
    listener: &TcpListener,
    connections: &Arc<tokio::sync::Semaphore>,
) -> std::io::Result<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let permit = match connections.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if m::log_allowed(&LAST_CONNECTION_LIMIT_LOG) {
                tracing::warn!("limits.max_connections reached: not accepting until one closes (logged at most once a second)");
            }
            connections
                .clone()
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?
        }
    };
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, permit))
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: axum::Router,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// rustls server config (TLS 1.2 and 1.3 only, HTTP/2 and HTTP/1.1 by ALPN) whose certificate is
/// reloaded when its files change or on SIGHUP (see `crate::tls`), for as long as the returned
/// task lives.
pub fn tls_acceptor(tls: &TlsConfig) -> anyhow::Result<(TlsAcceptor, crate::tls::ReloadTask)> {
    let (acceptor, reloader) = crate::tls::Reloader::new(tls)?;
    let task = reloader.spawn(Duration::from_millis(tls.reload_interval_ms));
    Ok((acceptor, task))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the shutdown signal of `serve`, `spool drain` and
/// `audit --watch`.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    #[tokio::test]
    async fn accept_waits_for_a_connection_permit() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let permits = Arc::new(tokio::sync::Semaphore::new(1));
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let first = accept_within(&listener, &permits).await.unwrap();
        // B is connected (in the kernel's backlog), but the only permit is A's.
        let b = std::net::TcpStream::connect(addr).unwrap();
        let mut second = std::pin::pin!(accept_within(&listener, &permits));
        for _ in 0..3 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(second.as_mut().poll(cx))).await;
            assert!(
                polled.is_pending(),
                "accepted beyond limits.max_connections"
            );
            tokio::task::yield_now().await;
        }
        drop(first); // A's connection ends: its permit goes back.
        let (_, peer, _) = second.await.unwrap();
        assert_eq!(peer, b.local_addr().unwrap());
    }
}
