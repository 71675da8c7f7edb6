//! The deadline of request bodies, for every endpoint at once.
//!
//! `http_server.header_read_timeout` bounds how long a client may take over its
//! request headers; nothing bounded the body after them, so a client could announce
//! `Content-Length: 60000` and then send a byte every few seconds, holding a socket
//! and its buffers for as long as it liked. [`enforce`] is one middleware on the
//! node's routers that wraps every request body that is not already complete:
//!
//! - the whole body must arrive within `http_server.body_read_timeout` of the
//!   request headers; past that, reading it fails and the request is answered
//!   **408** "request body not received within http_server.body_read_timeout",
//!   with `Connection: close`, whatever the handler made of the failed read;
//! - a body that is not all there when the handler first reads it (the client is
//!   still sending) holds a slot of `client.connection_limit` until it is complete,
//!   so thousands of trickled bodies cannot take more sockets than the limit
//!   allows; when no slot is free the request is answered **503** "connection limit
//!   reached", with `Connection: close`. A body that arrived with its headers, as
//!   small bodies do, never takes a slot, so commands of existing sessions are not
//!   refused at the limit.
//!
//! Handlers read bodies as before (axum's `Bytes`, `to_bytes`); the size limits
//! (`DefaultBodyLimit`, each transport's own) still apply on top.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};

use crate::limit::ConnectionPermit;
use crate::node::Node;

/// Why a request body was cut off before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyCut {
    /// The body did not arrive within `http_server.body_read_timeout` (HTTP 408).
    #[error("request body not received within http_server.body_read_timeout")]
    TimedOut,
    /// The body was still arriving and `client.connection_limit` slots were all
    /// taken (HTTP 503).
    #[error("connection limit reached")]
    ConnectionLimit,
}

/// Whether `error`, from reading a body, is a cut made here (and which one), as
/// opposed to a size limit or a client that went away.
pub fn cut_of(error: &(dyn std::error::Error + 'static)) -> Option<BodyCut> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(why) = e.downcast_ref::<BodyCut>() {
            return Some(*why);
        }
        next = e.source();
    }
    None
}

impl IntoResponse for BodyCut {
    fn into_response(self) -> Response {
        let status = match self {
            BodyCut::TimedOut => StatusCode::REQUEST_TIMEOUT,
            BodyCut::ConnectionLimit => StatusCode::SERVICE_UNAVAILABLE,
        };
        // The rest of the body is still on its way: the connection cannot carry
        // another request, so say that it closes.
        let mut response = (status, self.to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The middleware: gives the request's body a deadline and, while it is still
/// arriving, a connection slot; answers 408 or 503 when it was cut (see the
/// module docs).
pub async fn enforce(State(node): State<Node>, request: Request, next: Next) -> Response {
    // GETs, upgrades and empty POSTs: nothing will arrive, nothing to watch.
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let cut = Arc::new(OnceLock::new());
    let timeout = node.config().http_server.body_read_timeout;
    let request = request.map(|body| Body::new(WatchedBody::new(body, timeout, node, cut.clone())));
    let response = next.run(request).await;
    match cut.get() {
        Some(why) => why.into_response(),
        None => response,
    }
}

/// A request body with a deadline and, once it has to be waited for, a slot.
struct WatchedBody {
    inner: Body,
    /// When the whole body must have arrived: set from the request headers.
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Asked for a slot the first time the body has to be waited for.
    node: Option<Node>,
    /// The slot, held until the body is complete or dropped.
    slot: Option<ConnectionPermit>,
    /// Set once, when the body is cut; the middleware reads it for the answer.
    cut: Arc<OnceLock<BodyCut>>,
}

impl WatchedBody {
    fn new(inner: Body, timeout: Duration, node: Node, cut: Arc<OnceLock<BodyCut>>) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            node: Some(node),
            slot: None,
            cut,
        }
    }

    fn cut(&mut self, why: BodyCut) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let why = *self.cut.get_or_init(|| why);
        self.slot = None;
        Poll::Ready(Some(Err(axum::Error::new(why))))
    }
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Some(why) = this.cut.get().copied() {
            return this.cut(why);
        }
        // Checked on every frame, not only while waiting: a body that keeps
        // coming in small pieces must still end in time.
        if tokio::time::Instant::now() >= this.deadline.deadline() {
            return this.cut(BodyCut::TimedOut);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream() {
                // Complete (or failed): the socket is no longer held by a wait.
                this.slot = None;
            }
            return Poll::Ready(frame);
        }
        if let Some(node) = this.node.take() {
            match node.try_hold_for_body() {
                Ok(slot) => this.slot = Some(slot),
                Err(_) => return this.cut(BodyCut::ConnectionLimit),
            }
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.cut(BodyCut::TimedOut);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    // Passed on, so that a `Content-Length` over a size limit is refused before
    // anything is read.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A body that sends `first`, then nothing until `rest` is fed.
    fn trickled(first: &'static [u8]) -> (Body, tokio::sync::mpsc::Sender<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let head = futures_util::stream::once(async move {
            Ok::<_, std::io::Error>(Bytes::from_static(first))
        });
        let rest = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(b), rx))
        });
        (
            Body::from_stream(futures_util::StreamExt::chain(head, rest)),
            tx,
        )
    }

    fn node(limit: usize) -> Node {
        let mut cfg = Config::default();
        cfg.client.connection_limit = limit;
        cfg.http_server.body_read_timeout = Duration::from_secs(2);
        Node::new(cfg)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_finish_in_time_is_cut() {
        let node = node(0);
        let cut = Arc::new(OnceLock::new());
        let (body, _tx) = trickled(b"{\"a\":");
        let watched = Body::new(WatchedBody::new(
            body,
            Duration::from_secs(2),
            node.clone(),
            cut.clone(),
        ));
        let read = axum::body::to_bytes(watched, 1024).await.unwrap_err();
        assert_eq!(cut_of(&read), Some(BodyCut::TimedOut));
        assert_eq!(cut.get(), Some(&BodyCut::TimedOut));
        // The slot it held while waiting is back.
        assert_eq!(node.num_connections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_body_holds_a_slot_until_it_is_complete() {
        let node = node(1);
        let cut = Arc::new(OnceLock::new());
        let (body, tx) = trickled(b"{\"a\":");
        let watched = Body::new(WatchedBody::new(
            body,
            Duration::from_secs(2),
            node.clone(),
            cut.clone(),
        ));
        let reader = tokio::spawn(axum::body::to_bytes(watched, 1024));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(node.num_connections(), 1);
        // A second waiting body finds no slot.
        let other_cut = Arc::new(OnceLock::new());
        let (other, _other_tx) = trickled(b"{");
        let other = Body::new(WatchedBody::new(
            other,
            Duration::from_secs(2),
            node.clone(),
            other_cut.clone(),
        ));
        assert!(axum::body::to_bytes(other, 1024).await.is_err());
        assert_eq!(other_cut.get(), Some(&BodyCut::ConnectionLimit));
        tx.send(Bytes::from_static(b"1}")).await.unwrap();
        drop(tx);
        assert_eq!(&reader.await.unwrap().unwrap()[..], b"{\"a\":1}");
        assert!(cut.get().is_none());
        assert_eq!(node.num_connections(), 0);
    }

    #[tokio::test]
    async fn a_complete_body_takes_no_slot() {
        let node = node(1);
        let _only = node.try_admit().unwrap();
        let cut = Arc::new(OnceLock::new());
        let watched = Body::new(WatchedBody::new(
            Body::from("{}"),
            Duration::from_secs(2),
            node.clone(),
            cut.clone(),
        ));
        assert_eq!(
            &axum::body::to_bytes(watched, 1024).await.unwrap()[..],
            b"{}"
        );
        assert!(cut.get().is_none());
    }

    #[test]
    fn cut_bodies_get_408_or_503_and_close() {
        let timed_out = BodyCut::TimedOut.into_response();
        assert_eq!(timed_out.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(timed_out.headers()[header::CONNECTION], "close");
        let full = BodyCut::ConnectionLimit.into_response();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
