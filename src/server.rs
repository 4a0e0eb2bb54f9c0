//! Wiring: listeners, TLS, connection handling and the shutdown sequence.
//!
//! Shutdown (SIGTERM/SIGINT or the caller's future): `/readyz` turns false at once; the public
//! listener keeps accepting for `shutdown_grace_secs` so the load balancer notices; then it stops
//! accepting, in-flight requests finish (bounded by the request timeout), the producer is flushed,
//! and `serve` returns.

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
    let registry = Registry::load(&config.schemas)?;
    let kafka = producer_config(&config.kafka.brokers, &config.kafka.librdkafka);
    let kafka =
        KafkaSink::new(&kafka, Duration::from_secs(2)).context("creating the Kafka producer")?;
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
        let replay = ReplayOptions {
            batch_records: s.replay_batch_records,
            batch_bytes: 4 << 20,
            ack_timeout: Duration::from_millis(message_timeout_ms(&config) + 5_000),
            max_backoff: Duration::from_secs(5),
        };
        Arc::new(FallbackSink::new(Arc::new(kafka), spool, replay))
    } else {
        Arc::new(kafka)
    };
    serve_with_sink(config, registry, sink, public, admin, shutdown).await
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
    let pipeline = PipelineConfig::new(
        config.limits.clone(),
        &config.kafka.topic_prefix,
        &config.kafka.dead_letter_topic,
        &registry,
    );
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
    })
}

/// Runs the gateway over any sink (tests use the in-memory one).
pub async fn serve_with_sink(
    config: Config,
    registry: Registry,
    sink: Arc<dyn Sink>,
    public: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // Install the metrics recorder before anything records.
    let prometheus = m::recorder();
    // New certificates are picked up while `_tls_reload` lives.
    let (tls, _tls_reload) = config.tls.as_ref().map(tls_acceptor).transpose()?.unzip();
    metrics::gauge!(m::SCHEMAS_LOADED).set(registry.len() as f64);
    let gw = gateway(&config, registry, sink.clone());
    gw.access.start().map_err(anyhow::Error::msg)?;
    let router = http::app(gw.clone(), &config.cors, config.limits.request_timeout());

    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_router = admin::router(gw.clone(), prometheus);
    let admin_task = tokio::spawn(async move {
        axum::serve(admin_listener, admin_router)
            .with_graceful_shutdown(async {
                let _ = admin_stop_rx.await;
            })
            .await
    });

    tracing::info!(
        listen = %public.local_addr()?,
        tls = tls.is_some(),
        schemas = gw.registry.len(),
        "eventpipe serving"
    );
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.limits.header_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
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
                tracing::info!(grace_secs = config.shutdown_grace_secs, "shutdown: readiness off, still serving during grace");
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs_f64(config.shutdown_grace_secs));
            }
            _ = &mut grace, if shutting_down => break,
            accepted = public.accept() => {
                let (stream, peer) = match accepted {
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
    if tokio::time::timeout(config.limits.request_timeout(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some connections did not finish in time");
    }
    if let Err(e) = sink
        .flush(Duration::from_millis(config.kafka.ack_timeout_ms))
        .await
    {
        tracing::warn!(error = %e, "shutdown: producer flush incomplete");
    }
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    tracing::info!("shutdown complete");
    Ok(())
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
