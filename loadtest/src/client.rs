//! One HTTP/1.1 keep-alive connection per worker, plain or TLS.
//!
//! hyper's connection-level client (no pool) so "N connections" means exactly N sockets, each
//! carrying one request at a time, and a broken connection is visible (counted, then re-opened).

use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where requests go and how to connect.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
    authority: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// How to trust the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A PEM file of CA (or self-signed) certificates.
    Ca(std::path::PathBuf),
    /// Accept any certificate.
    Insecure,
}

impl Target {
    /// `url` is `http://host:port/path` or `https://...`; `trust` is needed for https.
    pub fn new(url: &str, trust: Option<&Trust>) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad url {url}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("url must start with http:// or https://: {url}"),
        };
        let host = uri.host().ok_or_else(|| anyhow!("no host in {url}"))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let config = tls_config(trust)?;
            let name = ServerName::try_from(host.to_owned()).context("TLS server name")?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Target {
            host: host.to_owned(),
            port,
            path: uri.path().to_owned(),
            authority: HeaderValue::from_str(&format!("{host}:{port}"))?,
            tls,
        })
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let sender = match &self.tls {
            None => handshake(tcp).await?,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                handshake(tls).await?
            }
        };
        Ok(Conn {
            sender,
            authority: self.authority.clone(),
            path: self.path.clone(),
        })
    }
}

async fn handshake<S>(stream: S) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The worker sees the failure on its next request; nothing to report here.
        let _ = conn.await;
    });
    Ok(sender)
}

/// The parts of a 200 (or 202: some events were spooled, Kafka gets them later) body the
/// harness counts.
#[derive(Deserialize)]
pub struct Answer {
    pub accepted: u64,
    #[serde(default)]
    pub spooled: u64,
    pub rejected: Vec<serde::de::IgnoredAny>,
}

/// A response: status and, for 200/202, the counts.
pub struct Reply {
    pub status: u16,
    pub answer: Option<Answer>,
}

/// One open connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: HeaderValue,
    path: String,
}

impl Conn {
    /// POSTs one body and reads the whole answer.
    pub async fn post(&mut self, body: Bytes, gzip: bool) -> anyhow::Result<Reply> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.authority.clone())
            .header(CONTENT_TYPE, "application/json");
        if gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        let resp = self.sender.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let answer = if status == 200 || status == 202 {
            Some(serde_json::from_slice(&bytes).context("2xx body is not {accepted, rejected}")?)
        } else {
            None
        };
        Ok(Reply { status, answer })
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

fn tls_config(trust: Option<&Trust>) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match trust {
        Some(Trust::Ca(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Some(Trust::Insecure) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        None => bail!("https needs --ca FILE or --insecure"),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `--insecure`: checks signatures (so the handshake is as costly as a real one) but trusts any
/// certificate.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A self-signed certificate for `127.0.0.1`/`localhost`, written as PEM into `dir`; returns
/// (cert path, key path).
pub fn self_signed(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.key_pair.serialize_pem())?;
    Ok((cert_path, key_path))
}
