//! Router tests for `GET /v1/tracker.js` (`tracker`).

use std::net::SocketAddr;
use std::path::Path;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::config::{self, Config};
use crate::sink::memory::MemorySink;

fn router(config: Config) -> (Router, AppState) {
    let registry = Registry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let gw = crate::server::gateway(&config, registry, Arc::new(MemorySink::new()));
    (
        app(gw.clone(), &config.cors, config.limits.request_timeout()),
        gw,
    )
}

fn get(extra: Option<(&str, &str)>) -> Request<Body> {
    let mut b = Request::get(tracker::PATH);
    if let Some((k, v)) = extra {
        b = b.header(k, v);
    }
    let mut req = b.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    req
}

#[tokio::test]
async fn serves_the_committed_tracker_with_type_cache_and_etag() {
    let (router, _) = router(Config::default());
    let resp = router.clone().oneshot(get(None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(
        h[header::CONTENT_TYPE],
        "application/javascript; charset=utf-8"
    );
    assert_eq!(h[header::CACHE_CONTROL], tracker::CACHE_CONTROL);
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let on_disk = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/dist/eventpipe.min.js"),
    )
    .unwrap();
    assert_eq!(&body[..], &on_disk[..]);
    assert!(String::from_utf8_lossy(&body).contains("var eventpipe="));

    // A browser revalidating with the tag gets a 304 and no body; another tag gets the script.
    let resp = router
        .clone()
        .oneshot(get(Some(("if-none-match", &etag))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()[header::ETAG], etag.as_str());
    assert!(resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    let resp = router
        .oneshot(get(Some(("if-none-match", "\"other\""))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_script_needs_no_write_key_when_events_do() {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.toml");
    std::fs::write(
        &keys_file,
        "[[keys]]\nkey = \"wk_web_0123456789abcdef\"\nname = \"web\"\n",
    )
    .unwrap();
    let config = config::load(
        None,
        vec![(
            "EVENTPIPE_AUTH__KEYS_FILE".to_string(),
            keys_file.display().to_string(),
        )],
        vec![],
    )
    .unwrap();
    let (router, gw) = router(config);
    gw.access.keys().unwrap().reload().unwrap();
    let resp = router.clone().oneshot(get(None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut post = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{\"events\":[]}"))
        .unwrap();
    post.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = router.oneshot(post).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
