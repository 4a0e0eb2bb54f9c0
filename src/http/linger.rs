//! Lingering close: an early error answer (413 from `Content-Length`, 503 `overloaded`, 415, 408,
//! any answer given before the body was read) must reach a client that writes its whole body
//! before it reads, as browsers and Python's `http.client` do.
//!
//! hyper 1, when a handler drops an unread HTTP/1 body, reads what is already buffered and then
//! closes the connection; the kernel answers the client's further data with RST, and an RST
//! discards the response still in the client's receive buffer: the client sees a network error
//! and retries forever. So when a request ends with its body unread, this layer marks the answer
//! `Connection: close`, lets it go out at once, and hands the rest of the body to a task that
//! reads and discards it — at most `2 × max_body_bytes` and [`LINGER_MAX_TIME`] — so hyper closes
//! a drained connection cleanly. A longer or slower body is cut (that client was lost anyway).
//! Nothing is drained when the client sent `Expect: 100-continue` and the body was never read:
//! it is waiting for our answer and will not send the body. HTTP/2 needs none of this (the
//! stream is reset with NO_ERROR after the answer).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::metrics as m;

/// The longest a connection stays open to discard the rest of a refused body.
pub const LINGER_MAX_TIME: Duration = Duration::from_secs(5);

/// How much of a refused body is read and discarded.
#[derive(Clone, Copy)]
pub struct Linger {
    pub max_bytes: usize,
    pub max_time: Duration,
}

/// Middleware: see the module doc.
pub async fn linger(State(bounds): State<Linger>, req: Request, next: Next) -> Response {
    if req.version() > Version::HTTP_11 {
        return next.run(req).await;
    }
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let slot: Arc<Mutex<Option<Leftover>>> = Arc::default();
    let req = req.map(|body| {
        Body::new(Watched {
            inner: Some(body),
            slot: slot.clone(),
            polled: false,
            done: false,
        })
    });
    let mut response = next.run(req).await;
    let leftover = slot.lock().ok().and_then(|mut s| s.take());
    if let Some(Leftover { body, polled }) = leftover {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        // A client that asked `Expect: 100-continue` and was never told to continue sends no body.
        if polled || !expects_continue {
            tokio::spawn(discard(body, bounds));
        }
    }
    response
}

async fn discard(mut body: Body, bounds: Linger) {
    let drained = tokio::time::timeout(bounds.max_time, async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    seen += frame.data_ref().map_or(0, Bytes::len);
                    if seen > bounds.max_bytes {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    let outcome = if drained { "drained" } else { "cut" };
    metrics::counter!(m::LINGER, "outcome" => outcome).increment(1);
}

/// The unread rest of a request body, left behind when the handler dropped it.
struct Leftover {
    body: Body,
    polled: bool,
}

/// A request body that, dropped before its end, leaves its rest in `slot`.
struct Watched {
    inner: Option<Body>,
    slot: Arc<Mutex<Option<Leftover>>>,
    polled: bool,
    done: bool,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(body) = self.inner.take() {
            if body.is_end_stream() {
                return;
            }
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some(Leftover {
                    body,
                    polled: self.polled,
                });
            }
        }
    }
}
