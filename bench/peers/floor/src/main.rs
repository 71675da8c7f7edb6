//! Floor servers: the least a WebSocket broadcast server on this machine can cost,
//! to judge Tidings against ("within 1.1× of the floor measured in the same run").
//!
//! Every text frame a client sends on `/ws` is broadcast, unchanged, to every
//! connected client (the sender included), as its own WebSocket text frame. That is
//! what `tidings bench --protocol raw` drives.
//!
//! The same design on three WebSocket crates (`--backend`):
//! - `axum`: axum's `WebSocket` (tungstenite), served by `axum::serve`, with a small
//!   read buffer (`--read-buffer`, default 1 KiB: tungstenite zero-fills its whole
//!   read buffer on the first read, so its size is what an idle connection pays).
//! - `tokio-websockets`: tokio-websockets' `WebSocketStream` on the plain
//!   `TcpStream`, taken over after a hyper HTTP/1 upgrade.
//! - `fastwebsockets`: fastwebsockets' read half (frame parsing, unmasking, UTF-8
//!   check, fragment collection) and its frame encoder, on the split `TcpStream`,
//!   after the same hyper upgrade.
//!
//! What makes it a floor:
//! - one task per connection (no reader/writer pair, no lock between halves);
//! - one `tokio::sync::broadcast` ring of refcounted payloads (`Bytes`, or axum's
//!   `Utf8Bytes`, which wraps `Bytes`): publishing is one push, a delivery is a
//!   reference-count increment, nothing is copied per subscriber before the write;
//! - write coalescing: a woken connection takes what is queued, up to `--batch`
//!   (default 64) frames, encodes them all and flushes once: one write system call
//!   for up to 64 frames;
//! - buffers that an idle connection does not touch, and jemalloc.
//!
//! Bounded: the ring holds `--capacity` (default 4096) payloads; a client that falls
//! that far behind misses messages and is disconnected, like a slow client would be.
//! Incoming messages are limited to 64 KiB. Loopback only (127.0.0.1).
//!
//! Usage: floor [--backend axum|tokio-websockets|fastwebsockets] [--batch N]
//!              [--read-buffer BYTES] [--capacity N] [PORT]
//! PORT defaults to 3000 (0 picks a free port). Prints `listening on ADDR` once it
//! accepts connections.

use std::process::ExitCode;

use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Largest incoming message accepted, on every backend.
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Axum,
    TokioWebsockets,
    Fastwebsockets,
}

#[derive(Clone, Copy, Debug)]
struct Options {
    backend: Backend,
    port: u16,
    batch: usize,
    read_buffer: usize,
    capacity: usize,
}

fn usage() -> String {
    "usage: floor [--backend axum|tokio-websockets|fastwebsockets] [--batch N] \
     [--read-buffer BYTES] [--capacity N] [PORT]"
        .to_string()
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        backend: Backend::Axum,
        port: 3000,
        batch: 64,
        read_buffer: 1024,
        capacity: 4096,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<usize, String> {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("{name} must be a positive number, got {v:?}"))
        };
        match a.as_str() {
            "--backend" => {
                o.backend = match value("--backend")?.as_str() {
                    "axum" | "tungstenite" => Backend::Axum,
                    "tokio-websockets" => Backend::TokioWebsockets,
                    "fastwebsockets" => Backend::Fastwebsockets,
                    other => return Err(format!("unknown backend {other:?}\n{}", usage())),
                }
            }
            "--batch" => o.batch = number("--batch", value("--batch")?)?,
            "--read-buffer" => o.read_buffer = number("--read-buffer", value("--read-buffer")?)?,
            "--capacity" => o.capacity = number("--capacity", value("--capacity")?)?,
            "-h" | "--help" => return Err(usage()),
            port => {
                o.port = port
                    .parse()
                    .map_err(|_| format!("PORT must be a number, got {port:?}\n{}", usage()))?
            }
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // The multi-thread runtime, one worker per CPU the process may run on (one,
    // when pinned with taskset as bench/run.sh does).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(o: Options) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", o.port)).await?;
    let addr = listener.local_addr()?;
    println!(
        "listening on {addr} (backend {:?}, batch {})",
        o.backend, o.batch
    );
    match o.backend {
        Backend::Axum => axum_backend::serve(listener, o).await,
        Backend::TokioWebsockets | Backend::Fastwebsockets => {
            hyper_upgrade::serve(listener, o).await
        }
    }
}

/// The axum backend: axum's router and `WebSocketUpgrade`, tungstenite underneath.
mod axum_backend {
    use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
    use axum::extract::State;
    use axum::response::Response;
    use axum::routing::get;
    use axum::Router;
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpListener;
    use tokio::sync::broadcast::{self, error::TryRecvError};

    use super::{Options, MAX_MESSAGE};

    #[derive(Clone)]
    struct Hub {
        tx: broadcast::Sender<Utf8Bytes>,
        o: Options,
    }

    pub async fn serve(listener: TcpListener, o: Options) -> std::io::Result<()> {
        let (tx, _) = broadcast::channel(o.capacity);
        let app = Router::new()
            .route("/ws", get(upgrade))
            .with_state(Hub { tx, o });
        axum::serve(listener, app).await
    }

    async fn upgrade(ws: WebSocketUpgrade, State(hub): State<Hub>) -> Response {
        ws.read_buffer_size(hub.o.read_buffer)
            // Frames are written out when this much is buffered, or at the flush.
            .write_buffer_size(64 * 1024)
            .max_message_size(MAX_MESSAGE)
            .max_frame_size(MAX_MESSAGE)
            .on_upgrade(move |socket| connection(socket, hub))
    }

    async fn connection(mut ws: WebSocket, hub: Hub) {
        let mut rx = hub.tx.subscribe();
        loop {
            tokio::select! {
                r = rx.recv() => {
                    // Lagged: this client fell `capacity` messages behind; closed.
                    let Ok(first) = r else { return };
                    if ws.feed(Message::Text(first)).await.is_err() {
                        return;
                    }
                    for _ in 1..hub.o.batch {
                        match rx.try_recv() {
                            Ok(m) => {
                                if ws.feed(Message::Text(m)).await.is_err() {
                                    return;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
                // Cancel-safe: a partly read frame stays in tungstenite's buffer.
                m = ws.next() => match m {
                    Some(Ok(Message::Text(text))) => {
                        let _ = hub.tx.send(text);
                    }
                    // Pings are answered by tungstenite itself.
                    Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                },
            }
        }
    }
}

/// The tokio-websockets and fastwebsockets backends: a hyper HTTP/1 server that
/// answers the upgrade on `/ws` and hands the plain `TcpStream` to the crate.
mod hyper_upgrade {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::header::{
        HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
    };
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::broadcast;

    use super::{Backend, Options};

    pub async fn serve(listener: TcpListener, o: Options) -> std::io::Result<()> {
        let (tx, _) = broadcast::channel::<Bytes>(o.capacity);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                // Out of file descriptors and the like: wait a little, go on.
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let tx = tx.clone();
                    async move { Ok::<_, Infallible>(handle(req, tx, o)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    }

    fn status(code: StatusCode) -> Response<Empty<Bytes>> {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = code;
        r
    }

    /// Answers the HTTP/1.1 upgrade (RFC 6455 section 4.2) and spawns the
    /// connection once hyper hands the socket over.
    fn handle<B>(
        mut req: Request<B>,
        tx: broadcast::Sender<Bytes>,
        o: Options,
    ) -> Response<Empty<Bytes>> {
        if req.uri().path() != "/ws" {
            return status(StatusCode::NOT_FOUND);
        }
        let has = |name, want: &str| {
            req.headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(want))
        };
        let version_ok = req
            .headers()
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13");
        let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).cloned() else {
            return status(StatusCode::BAD_REQUEST);
        };
        if !has(UPGRADE, "websocket") || !has(CONNECTION, "upgrade") || !version_ok {
            return status(StatusCode::BAD_REQUEST);
        }
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            // The plain socket back from hyper: no dynamic dispatch, and it can be
            // split without a lock. Bytes read past the request would be lost, so
            // such a client (it sent frames before the 101) is dropped.
            let stream = match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) if parts.read_buf.is_empty() => parts.io.into_inner(),
                _ => {
                    eprintln!("dropped a client that sent data before the upgrade completed");
                    return;
                }
            };
            match o.backend {
                Backend::TokioWebsockets => super::tokio_ws::connection(stream, tx, o).await,
                Backend::Fastwebsockets => super::fast_ws::connection(stream, tx, o).await,
                Backend::Axum => {}
            }
        });
        let mut r = status(StatusCode::SWITCHING_PROTOCOLS);
        let h = r.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }
}

/// tokio-websockets: its `Sink` queues encoded frames (header + the shared payload,
/// no copy) and writes the queue with vectored writes at the flush.
mod tokio_ws {
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio::sync::broadcast::{self, error::TryRecvError};
    use tokio_websockets::{Config, Limits, Message, ServerBuilder};

    use super::{Options, MAX_MESSAGE};

    pub async fn connection(stream: TcpStream, tx: broadcast::Sender<Bytes>, o: Options) {
        let mut ws = ServerBuilder::new()
            // Written out early only past this much; otherwise at the flush.
            .config(Config::default().flush_threshold(64 * 1024))
            .limits(Limits::default().max_payload_len(Some(MAX_MESSAGE)))
            .serve(stream);
        let mut rx = tx.subscribe();
        loop {
            tokio::select! {
                r = rx.recv() => {
                    let Ok(first) = r else { return };
                    if ws.feed(Message::text(first)).await.is_err() {
                        return;
                    }
                    for _ in 1..o.batch {
                        match rx.try_recv() {
                            Ok(m) => {
                                if ws.feed(Message::text(m)).await.is_err() {
                                    return;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
                // Cancel-safe: the stream keeps a partly read frame in its state.
                m = ws.next() => match m {
                    Some(Ok(msg)) if msg.is_text() => {
                        let _ = tx.send(Bytes::from(msg.into_payload()));
                    }
                    // Pings are answered by the stream itself; close ends us.
                    Some(Ok(msg)) if !msg.is_close() => {}
                    _ => return,
                },
            }
        }
    }
}

/// fastwebsockets: its reader is an `async fn` that is not cancel-safe (a header
/// half read is lost if the future is dropped), so reading and writing are two
/// futures that live as long as the connection, polled together by one task on the
/// two halves of the socket.
mod fast_ws {
    use bytes::Bytes;
    use fastwebsockets::{
        after_handshake_split, FragmentCollectorRead, Frame, OpCode, Payload, Role,
    };
    use tokio::io::BufWriter;
    use tokio::net::TcpStream;
    use tokio::sync::broadcast::{self, error::TryRecvError};

    use super::{Options, MAX_MESSAGE};

    pub async fn connection(stream: TcpStream, tx: broadcast::Sender<Bytes>, o: Options) {
        let (r, w) = stream.into_split();
        // fastwebsockets writes each frame at once; a buffered writer under it makes
        // the flush the only write. Its buffer is allocated here but not touched
        // before the first broadcast.
        let w = BufWriter::with_capacity(16 * 1024, w);
        let (mut rd, mut wr) = after_handshake_split(r, w, Role::Server);
        // Pings and close frames come back to us instead of being answered from
        // inside the reader (which has no access to the writer while it runs).
        rd.set_auto_close(false);
        rd.set_auto_pong(false);
        rd.set_max_message_size(MAX_MESSAGE);
        wr.set_writev(false);
        let mut rd = FragmentCollectorRead::new(rd);
        let mut rx = tx.subscribe();
        let reader = async {
            let mut no_send = |_: Frame<'_>| async { Ok::<(), std::io::Error>(()) };
            loop {
                let Ok(frame) = rd.read_frame(&mut no_send).await else {
                    return;
                };
                match frame.opcode {
                    OpCode::Text => {
                        let bytes = match frame.payload {
                            Payload::Bytes(b) => b.freeze(),
                            other => Bytes::copy_from_slice(&other),
                        };
                        let _ = tx.send(bytes);
                    }
                    OpCode::Close => return,
                    // Pings are not answered: no client of the benchmark sends them.
                    _ => {}
                }
            }
        };
        let writer = async {
            loop {
                let Ok(first) = rx.recv().await else { return };
                if wr
                    .write_frame(Frame::text(Payload::Borrowed(&first)))
                    .await
                    .is_err()
                {
                    return;
                }
                for _ in 1..o.batch {
                    match rx.try_recv() {
                        Ok(m) => {
                            if wr
                                .write_frame(Frame::text(Payload::Borrowed(&m)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(_) => return,
                    }
                }
                if wr.flush().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = reader => {}
            _ = writer => {}
        }
        // A close frame back (best effort), then the socket closes on drop.
        let _ = wr.write_frame(Frame::close(1000, b"")).await;
        let _ = wr.flush().await;
    }
}
