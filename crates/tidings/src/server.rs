//! Routes and the serve loop.
//!
//! [`router`] gives the endpoints of a node as an axum `Router` to merge into an app
//! ([`client_router`] and [`internal_router`] give its two halves, for serving the
//! server API, health and metrics on a listener of their own); [`run`] and [`serve`]
//! serve routers on listeners that the caller already bound (so tests bind port 0)
//! until the shutdown future resolves, then drain the node.
//!
//! The accept loop is ours rather than `axum::serve`, for three things that one does
//! not do: a header read timeout (slowloris), TLS, and several listeners sharing one
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::Node;

/// Every endpoint of the node: [`client_router`] and [`internal_router`] together.
pub fn router(node: &Node) -> Router {
    client_router(node).merge(internal_router(node))
}

/// The client transports that are enabled: what browsers and SDKs connect to.
pub fn client_router(node: &Node) -> Router {
    let cfg = node.config();
    let mut app = Router::new().route(
        &cfg.websocket.handler_prefix,
        get(crate::transport::websocket::handler),
    );
    if cfg.uni_websocket.enabled {
        app = app.route(
            &cfg.uni_websocket.handler_prefix,
            get(crate::transport::websocket::uni_handler),
        );
    }
    #[cfg(feature = "socketio")]
    if cfg.socketio.enabled {
        app = app.merge(crate::socketio::router(node));
    }
    #[cfg(not(feature = "socketio"))]
    if cfg.socketio.enabled {
        tracing::error!(
            "socketio.enabled is set, but tidings was built without the `socketio` feature: \
             there is no /socket.io/ endpoint"
        );
    }
    // The HTTP transports explain a wrong method inside their CORS layer, so that a
    // preflight still reaches CORS first.
    explain_wrong_method(app)
        .merge(http_transports(node))
        .with_state(node.clone())
        // Every request body must arrive within `http_server.body_read_timeout`,
        // and one that keeps the server waiting holds a connection slot meanwhile.
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            crate::request_body::enforce,
        ))
}

/// The endpoints for operators and backends, not for the internet: the server API,
/// `/health`, `/metrics` and, when `admin.enabled`, the admin UI. `http_server.internal_port` serves them on a listener
/// of their own.
pub fn internal_router(node: &Node) -> Router {
    let cfg = node.config();
    let api_path = format!(
        "{}/{{method}}",
        cfg.http_api.handler_prefix.trim_end_matches('/')
    );
    let mut app = Router::new().route(
        &api_path,
        post(crate::api::handler).layer(body_limit(cfg.http_api.max_request_body_size)),
    );
    if cfg.health.enabled {
        app = app.route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({})) }),
        );
    }
    if cfg.prometheus.enabled {
        app = app.route("/metrics", get(metrics));
    }
    if let Some(admin) = crate::admin::router(node) {
        app = app.merge(admin);
    }
    explain_wrong_method(app)
        .with_state(node.clone())
        // As on the client routes: API bodies get the same deadline.
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            crate::request_body::enforce,
        ))
}

/// axum answers a wrong method with an empty 405; say what is wrong instead, as
/// every other refusal does.
fn explain_wrong_method(app: Router<Node>) -> Router<Node> {
    app.method_not_allowed_fallback(|| async {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    })
}

/// The HTTP-based client transports, with CORS for browsers on allowed origins.
fn http_transports(node: &Node) -> Router<Node> {
    use crate::transport::{emulation, long_poll, stream};
    use axum::routing::{delete, MethodRouter};
    let cfg = node.config();
    let mut app = Router::new();
    crate::transport::serve_forwarded_requests(node);
    if cfg.sse.enabled {
        let sse: MethodRouter<Node> = get(stream::sse).post(stream::sse);
        app = app.route(
            cfg.sse.path("/connection/sse"),
            sse.layer(body_limit(cfg.sse.max_request_body_size)),
        );
    }
    if cfg.http_stream.enabled {
        app = app.route(
            cfg.http_stream.path("/connection/http_stream"),
            post(stream::http_stream).layer(body_limit(cfg.http_stream.max_request_body_size)),
        );
    }
    if cfg.uni_sse.enabled {
        app = app.route(
            cfg.uni_sse.path("/connection/uni_sse"),
            get(stream::uni_sse)
                .post(stream::uni_sse)
                .layer(body_limit(cfg.uni_sse.max_request_body_size)),
        );
    }
    if cfg.uni_http_stream.enabled {
        app = app.route(
            cfg.uni_http_stream.path("/connection/uni_http_stream"),
            post(stream::uni_http_stream)
                .layer(body_limit(cfg.uni_http_stream.max_request_body_size)),
        );
    }
    if cfg.long_poll.enabled {
        app = app.route(
            &cfg.long_poll.handler_prefix,
            post(long_poll::open)
                .get(long_poll::poll)
                .merge(delete(long_poll::close))
                .layer(body_limit(cfg.emulation.max_request_body_size)),
        );
    }
    if cfg.sse.enabled || cfg.http_stream.enabled || cfg.long_poll.enabled {
        app = app.route(
            &cfg.emulation.handler_prefix,
            post(emulation::handler).layer(body_limit(cfg.emulation.max_request_body_size)),
        );
    }
    let config = node.config_arc();
    // Browsers on allowed origins may call these cross-origin. The allowed origin is
    // echoed back, never `*`, and credentials are not allowed.
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::predicate(
            move |origin, _| {
                origin
                    .to_str()
                    .is_ok_and(|o| crate::origin::matches_allowed(&config, o))
            },
        ))
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::DELETE,
        ])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600));
    explain_wrong_method(app).layer(cors)
}

/// Bounds how much of a request body is read: past `max` bytes the request is
/// answered 413 (with axum's "length limit exceeded" message) before the handler
/// runs, so an oversized body is never buffered whole.
fn body_limit(max: usize) -> DefaultBodyLimit {
    DefaultBodyLimit::max(max)
}

async fn metrics(axum::extract::State(node): axum::extract::State<Node>) -> impl IntoResponse {
    use crate::transport::ws::deflate::{COMPRESSED, SHARED};
    use std::sync::atomic::Ordering::Relaxed;
    node.metrics()
        .set_deflate_segments(COMPRESSED.load(Relaxed), SHARED.load(Relaxed));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
}

/// How long connections get to finish their in-flight requests once the listeners
/// have stopped at the end of a shutdown.
const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// Pause after an accept error that is not about one connection (out of file
/// descriptors, say), so the loop does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// One listener and what it serves.
pub struct Endpoint {
    /// Already bound, so the caller picks the address (port 0 in tests).
    listener: TcpListener,
    /// The routes answered on this listener.
    app: Router,
    /// When set, every connection does a TLS handshake first (https://, wss://).
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Endpoint {
    /// Serves `app` on `listener` in plain HTTP.
    pub fn new(listener: TcpListener, app: Router) -> Self {
        Self {
            listener,
            app,
            tls: None,
        }
    }

    /// Serves TLS with `config` (see [`crate::tls::server_config`]).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }
}

/// Serves `app` on `listener` until `shutdown` resolves (or [`Node::shutdown`] is
/// called), then tells every client (disconnect 3001) and waits up to
/// `shutdown.timeout` for connections to drain before it stops listening.
///
/// This is [`serve`] with one plain-HTTP endpoint; see there for the details.
///
/// # Errors
/// None today: accept errors are logged and the loop goes on. The `Result` is kept
/// for errors a future listener kind may have.
pub async fn run(
    listener: TcpListener,
    node: Node,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(node, vec![Endpoint::new(listener, app)], shutdown).await
}

/// Serves every endpoint until `shutdown` resolves (or [`Node::shutdown`] is
/// called), then shuts down in this order:
///
/// 1. The node drains ([`Node::shutdown`]: disconnect 3001 to every client, at most
///    `shutdown.timeout`). The listeners stay open meanwhile: new connections are
///    refused with 503 by the handlers, while long-poll and emulation requests of
///    existing sessions still get through, so every client can collect its
///    disconnect.
/// 2. The listeners close.
/// 3. Open HTTP connections finish their in-flight requests (idle keep-alive ones
///    close at once), for at most 5 s more.
///
/// A connection that has not sent its complete request headers within
/// `http_server.header_read_timeout` of opening (or of its previous response) is
/// closed; on a TLS endpoint the handshake counts towards that time. A request
/// body gets `http_server.body_read_timeout` after the headers (the routers of
/// this module carry [`crate::request_body::enforce`]).
///
/// # Errors
/// None today: accept errors are logged and the loop goes on.
pub async fn serve(
    node: Node,
    endpoints: Vec<Endpoint>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = node.config().http_server.header_read_timeout;
    // Stops the accept loops; then `closing` asks every connection to wind down.
    let stop_accepting = CancellationToken::new();
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut accept_loops = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        accept_loops.push(tokio::spawn(accept_loop(
            endpoint,
            header_timeout,
            stop_accepting.clone(),
            closing.clone(),
            connections.clone(),
        )));
    }
    let token = node.shutdown_token();
    tokio::select! {
        _ = shutdown => {}
        _ = token.cancelled() => {}
    }
    // axum's own graceful shutdown would not track upgraded WebSocket tasks or
    // streams; the node's tracker does, so the node drains first.
    node.shutdown().await;
    stop_accepting.cancel();
    for accept in accept_loops {
        let _ = accept.await;
    }
    closing.cancel();
    connections.close();
    if tokio::time::timeout(CONNECTION_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!(
            open = connections.len(),
            "connections still open after the grace period are dropped"
        );
    }
    Ok(())
}

/// Accepts connections until `stop` fires, each in a task on `connections`.
async fn accept_loop(
    endpoint: Endpoint,
    header_timeout: Duration,
    stop: CancellationToken,
    closing: CancellationToken,
    connections: TaskTracker,
) {
    let Endpoint { listener, app, tls } = endpoint;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let closing = closing.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, remote, app, header_timeout, closing).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    let stream = tokio::select! {
                        _ = closing.cancelled() => return,
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    serve_connection(stream, remote, app, header_timeout, closing).await;
                }
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection, WebSocket upgrades included, until it ends or
/// `closing` fires (then in-flight requests finish and the connection closes).
async fn serve_connection<S>(
    stream: S,
    remote: SocketAddr,
    app: Router,
    header_timeout: Duration,
    closing: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Handlers may ask for the peer address with `ConnectInfo<SocketAddr>`.
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, request).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = closing.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Header timeouts, clients that vanish, malformed requests: all routine.
        tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
    }
}

/// Accept errors that concern only the connection being accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
