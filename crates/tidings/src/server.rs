//! Routes and the serve loop.
//!
//! [`router`] gives the endpoints of a node as an axum `Router` to merge into an app;
//! [`run`] serves them on a listener that the caller already bound (so tests bind
//! port 0) until the shutdown future resolves, then drains the node.

use std::future::Future;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::node::Node;

/// The node's endpoints: the WebSocket transport, the server API, health and metrics.
pub fn router(node: &Node) -> Router {
    let cfg = node.config();
    let api_path = format!(
        "{}/{{method}}",
        cfg.http_api.handler_prefix.trim_end_matches('/')
    );
    let mut app = Router::new()
        .route(
            &cfg.websocket.handler_prefix,
            get(crate::transport::websocket::handler),
        )
        .route(&api_path, post(crate::api::handler));
    if cfg.health.enabled {
        app = app.route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({})) }),
        );
    }
    if cfg.prometheus.enabled {
        app = app.route("/metrics", get(metrics));
    }
    app.with_state(node.clone())
}

async fn metrics(axum::extract::State(node): axum::extract::State<Node>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves, then tells every client
/// (disconnect 3001) and waits up to `shutdown.timeout` for connections to drain.
///
/// # Errors
/// Returns the I/O error that stopped the accept loop.
pub async fn run(
    listener: TcpListener,
    node: Node,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = node.shutdown_token();
    let signal_node = node.clone();
    // axum's graceful shutdown does not track upgraded WebSocket tasks; the node's
    // own token and tracker do, so trigger both from the same future.
    let stop = async move {
        shutdown.await;
        signal_node.inner.shutdown.cancel();
    };
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        token.cancelled().await;
    });
    let stopper = tokio::spawn(stop);
    let result = serve.await;
    stopper.abort();
    node.shutdown().await;
    result
}
