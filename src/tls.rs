//! TLS for the public listener (rustls; TLS 1.2 and 1.3; HTTP/2 and HTTP/1.1 by ALPN) with
//! certificates that are replaced without a restart.
//!
//! Every handshake asks a shared slot for the current certificate (`CertSlot`, a rustls
//! `ResolvesServerCert`). A watcher task reloads `tls.cert` + `tls.key` when either file's
//! modification time, size or inode changes (polled every `tls.reload_interval_ms`, following
//! symlinks, so cert-manager and Kubernetes secret-volume swaps are seen) and on SIGHUP.
//! - A pair that parses and whose key matches the certificate replaces the slot: handshakes from
//!   then on present it. Established connections keep the session they negotiated; nothing is
//!   closed.
//! - Anything else (half-written file, key of another certificate, unreadable) is logged at error,
//!   counted (`eventpipe_tls_reloads_total{result="error"}`) and ignored: the previous pair keeps
//!   serving. Files are read again at their next change (a rotation that writes the certificate
//!   and the key one after the other is first an error, then a success) or SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::metrics as m;

/// The certificate new handshakes get.
#[derive(Debug)]
pub struct CertSlot {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertSlot {
    /// The pair in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What a file looked like when last read: a change in any part means "read it again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// Reads `tls.cert` and `tls.key` into the slot when they change.
pub struct Reloader {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    slot: Arc<CertSlot>,
    seen: (Option<Stamp>, Option<Stamp>),
}

impl Reloader {
    /// Loads the pair (an error names `tls.cert` or `tls.key` and the file) and returns the
    /// acceptor that serves it, with its reloader.
    pub fn new(tls: &TlsConfig) -> anyhow::Result<(TlsAcceptor, Reloader)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = (stamp(&tls.cert), stamp(&tls.key));
        let first = load_pair(&tls.cert, &tls.key, &provider)?;
        let slot = Arc::new(CertSlot {
            current: RwLock::new(Arc::new(first)),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(slot.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let reloader = Reloader {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            provider,
            slot,
            seen,
        };
        Ok((TlsAcceptor::from(Arc::new(server)), reloader))
    }

    /// The slot handshakes read.
    pub fn slot(&self) -> Arc<CertSlot> {
        self.slot.clone()
    }

    /// Reloads when either file changed since it was last read: `Ok(true)` when a new pair is in
    /// use, `Ok(false)` when nothing changed, the reason when the new files are not a usable pair.
    pub fn check(&mut self) -> anyhow::Result<bool> {
        let now = (stamp(&self.cert), stamp(&self.key));
        if now == self.seen {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Reads both files now and, when they form a usable pair, puts it in use. Counted and
    /// logged either way.
    pub fn reload(&mut self) -> anyhow::Result<()> {
        // Stamped before reading: a write racing the read shows up as a change at the next look.
        self.seen = (stamp(&self.cert), stamp(&self.key));
        match load_pair(&self.cert, &self.key, &self.provider) {
            Ok(pair) => {
                self.slot.replace(Arc::new(pair));
                metrics::counter!(m::TLS_RELOADS, "result" => "ok").increment(1);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                metrics::counter!(m::TLS_RELOADS, "result" => "error").increment(1);
                tracing::error!(
                    error = format!("{e:#}"),
                    "TLS certificate reload failed; still serving the previous certificate"
                );
                Err(e)
            }
        }
    }

    /// Watches the files every `every` (never when zero) and reloads on SIGHUP, until the
    /// returned task is dropped.
    pub fn spawn(mut self, every: Duration) -> ReloadTask {
        // Registered before returning, so a SIGHUP sent once the listener answers is never lost.
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(
                |e| tracing::warn!(error = %e, "no SIGHUP handler: TLS reloads by polling only"),
            )
            .ok();
        let task = tokio::spawn(async move {
            let mut tick = (!every.is_zero()).then(|| {
                let mut t = tokio::time::interval(every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let hup = async {
                    #[cfg(unix)]
                    if let Some(h) = hangup.as_mut() {
                        if h.recv().await.is_some() {
                            return;
                        }
                    }
                    std::future::pending::<()>().await
                };
                let poll = async {
                    match tick.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    () = hup => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        let _ = self.reload();
                    }
                    () = poll => {
                        let _ = self.check();
                    }
                }
            }
        });
        ReloadTask(task)
    }
}

/// The watcher task; stops when dropped.
pub struct ReloadTask(tokio::task::JoinHandle<()>);

impl Drop for ReloadTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads a PEM chain and key and checks that the key belongs to the first certificate.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("reading tls.cert {}", cert.display()))?;
    let key_pem =
        std::fs::read(key).with_context(|| format!("reading tls.key {}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls.cert {}: not PEM certificates", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls.cert {}: no certificate found",
        cert.display()
    );
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .with_context(|| format!("tls.key {}: not a PEM key", key.display()))?
        .with_context(|| format!("tls.key {}: no private key found", key.display()))?;
    CertifiedKey::from_der(certs, key_der, provider).with_context(|| {
        format!(
            "tls.cert {} and tls.key {} do not form a usable pair",
            cert.display(),
            key.display()
        )
    })
}

#[cfg(test)]
mod tests;
