//! Certificate reload: a bad pair keeps the old one; a gateway serving over TLS hands new
//! connections the new certificate while a connection opened before keeps working.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::sink::memory::MemorySink;

/// A self-signed certificate for `localhost`: (certificate PEM, key PEM, certificate DER).
fn self_signed() -> (String, String, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    (
        c.cert.pem(),
        c.key_pair.serialize_pem(),
        c.cert.der().to_vec(),
    )
}

/// Replaces `path` as rotation tools do: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn tls_config(dir: &Path, cert: &str, key: &str, reload_interval_ms: u64) -> TlsConfig {
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    replace(&cert_path, cert);
    replace(&key_path, key);
    TlsConfig {
        cert: cert_path,
        key: key_path,
        reload_interval_ms,
    }
}

fn serving(slot: &CertSlot) -> Vec<u8> {
    slot.current().cert[0].to_vec()
}

#[test]
fn a_bad_new_pair_keeps_the_old_one_until_a_good_one_arrives() {
    let prometheus = crate::metrics::recorder();
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key, a_der) = self_signed();
    let (b_cert, b_key, b_der) = self_signed();
    let tls = tls_config(dir.path(), &a_cert, &a_key, 0);
    let (_acceptor, mut reloader) = Reloader::new(&tls).unwrap();
    let slot = reloader.slot();
    assert_eq!(serving(&slot), a_der);
    assert!(!reloader.check().unwrap(), "unchanged files reloaded");

    // Half-written certificate.
    replace(&tls.cert, &b_cert[..b_cert.len() / 2]);
    let err = reloader.check().unwrap_err();
    assert!(format!("{err:#}").contains("tls.cert"), "{err:#}");
    assert_eq!(serving(&slot), a_der);
    // New certificate, old key: not a pair.
    replace(&tls.cert, &b_cert);
    let err = reloader.check().unwrap_err();
    assert!(format!("{err:#}").contains("usable pair"), "{err:#}");
    assert_eq!(serving(&slot), a_der);
    // Key follows: B is served.
    replace(&tls.key, &b_key);
    assert!(reloader.check().unwrap());
    assert_eq!(serving(&slot), b_der);
    // A key file that disappears is an error, and B stays.
    std::fs::remove_file(&tls.key).unwrap();
    assert!(reloader.check().is_err());
    assert_eq!(serving(&slot), b_der);
    // Failures are counted apart (only this test makes reloads fail in this process).
    let errors = prometheus
        .render()
        .lines()
        .find(|l| l.starts_with("eventpipe_tls_reloads_total{result=\"error\"}"))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned());
    assert_eq!(errors.as_deref(), Some("3"));
}

#[test]
fn start_up_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, _, _) = self_signed();
    let (_, b_key, _) = self_signed();
    let tls = tls_config(dir.path(), &a_cert, &b_key, 0);
    let err = Reloader::new(&tls).map(|_| ()).unwrap_err();
    assert!(format!("{err:#}").contains("usable pair"), "{err:#}");
    let tls = TlsConfig {
        key: PathBuf::from("/nonexistent/key.pem"),
        ..tls
    };
    let err = Reloader::new(&tls).map(|_| ()).unwrap_err();
    assert!(format!("{err:#}").contains("tls.key"), "{err:#}");
}

/// A client trusting both certificates that reports which one the server presented.
fn client(roots: &[&str], addr: std::net::SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_info(true)
        .resolve("localhost", addr);
    for pem in roots {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Sends one request over `client` and returns the certificate its connection was given.
async fn presented(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"events":[]}"#)
        .send()
        .await
        .unwrap();
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    info.peer_certificate().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_get_the_new_certificate_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key, a_der) = self_signed();
    let (b_cert, b_key, b_der) = self_signed();
    let config = crate::config::Config {
        schemas: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas"),
        shutdown_grace_secs: 0.0,
        tls: Some(tls_config(dir.path(), &a_cert, &a_key, 20)),
        ..Default::default()
    };
    let registry = crate::schema::Registry::load(&config.schemas).unwrap();
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = public.local_addr().unwrap();
    let url = format!("https://localhost:{}/v1/events", addr.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = config.tls.clone().unwrap();
    let server = tokio::spawn(crate::server::serve_with_sink(
        config,
        registry,
        Arc::new(MemorySink::new()),
        public,
        admin,
        async {
            let _ = stopped.await;
        },
    ));

    let fresh = || client(&[&a_cert, &b_cert], addr);
    // A keep-alive connection opened while A is served.
    let kept = fresh();
    assert_eq!(presented(&kept, &url).await, a_der);

    replace(&tls.cert, &b_cert);
    replace(&tls.key, &b_key);
    // New connections see B once the watcher noticed (a new client: a new connection).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if presented(&fresh(), &url).await == b_der {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections still get the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection opened before the swap is still up, on the session it negotiated.
    assert_eq!(presented(&kept, &url).await, a_der);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
