//! A scripted stand-in for the gateway (hyper, HTTP/1.1) that records what each request carried,
//! for the unit tests of the client's behaviour. The real gateway is used in the workspace's
//! `tests/client.rs`.

use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub attempt: u32,
    pub ids: Vec<String>,
    pub at: Instant,
    pub gzip: bool,
    pub auth: Option<String>,
    pub bytes: usize,
}

/// The fake's answer.
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
    /// Take a permit of this before answering (the test adds permits to release answers).
    pub hold: Option<Arc<Semaphore>>,
}

impl Reply {
    pub fn ok(n: usize) -> Reply {
        Reply::new(200, serde_json::json!({"accepted": n, "rejected": []}))
    }

    pub fn new(status: u16, body: Value) -> Reply {
        Reply {
            status,
            retry_after: None,
            body,
            hold: None,
        }
    }

    pub fn retry_after(mut self, v: &str) -> Reply {
        self.retry_after = Some(v.into());
        self
    }

    pub fn hold(mut self, n: Arc<Semaphore>) -> Reply {
        self.hold = Some(n);
        self
    }
}

type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

pub struct Fake {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// `handler(seen, n)` answers the n-th request (0-based).
    pub async fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let handler: Handler = Arc::new(handler);
        let (s, a) = (seen.clone(), arrived.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (seen, arrived, handler) = (s.clone(), a.clone(), handler.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (seen, arrived, handler) =
                            (seen.clone(), arrived.clone(), handler.clone());
                        async move { Ok::<_, Infallible>(answer(req, &seen, &arrived, &handler).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Fake { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    seen: &Mutex<Vec<Seen>>,
    arrived: &Notify,
    handler: &Handler,
) -> hyper::Response<Full<Bytes>> {
    let at = Instant::now();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let attempt = header(crate::ATTEMPT_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let gzip = header("content-encoding").as_deref() == Some("gzip");
    let auth = header("authorization");
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    let mut body = Vec::new();
    if gzip {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut body)
            .unwrap();
    } else {
        body = raw.to_vec();
    }
    let bundle: Value = serde_json::from_slice(&body).unwrap();
    let ids = bundle["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let s = Seen {
        attempt,
        ids,
        at,
        gzip,
        auth,
        bytes: body.len(),
    };
    let n = {
        let mut all = seen.lock().unwrap();
        all.push(s.clone());
        all.len() - 1
    };
    arrived.notify_waiters();
    let reply = handler(&s, n);
    if let Some(hold) = reply.hold {
        hold.acquire().await.unwrap().forget();
    }
    let mut resp = hyper::Response::builder()
        .status(reply.status)
        .header("content-type", "application/json");
    if let Some(ra) = reply.retry_after {
        resp = resp.header("retry-after", ra);
    }
    resp.body(Full::new(Bytes::from(reply.body.to_string())))
        .unwrap()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}
