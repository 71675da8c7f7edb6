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

/// The node's endpoints: the client transports that are enabled, the server API,
/// health and metrics.
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
    if cfg.uni_websocket.enabled {
        app = app.route(
            &cfg.uni_websocket.handler_prefix,
            get(crate::transport::websocket::uni_handler),
        );
    }
    app = app.merge(http_transports(node));
    if cfg.health.enabled {
        app = app.route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({})) }),
        );
    }
    if cfg.prometheus.enabled {
        app = app.route("/metrics", get(metrics));
    }
    // axum answers a wrong method with an empty 405; say what is wrong instead, as
    // every other refusal does.
    app.method_not_allowed_fallback(|| async {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    })
    .with_state(node.clone())
}

/// The HTTP-based client transports, with CORS for browsers on allowed origins.
fn http_transports(node: &Node) -> Router<Node> {
    use crate::transport::{emulation, long_poll, stream};
    use axum::routing::{delete, MethodRouter};
    let cfg = node.config();
    let mut app = Router::new();
    if cfg.sse.enabled {
        let sse: MethodRouter<Node> = get(stream::sse).post(stream::sse);
        app = app.route(cfg.sse.path("/connection/sse"), sse);
    }
    if cfg.http_stream.enabled {
        app = app.route(
            cfg.http_stream.path("/connection/http_stream"),
            post(stream::http_stream),
        );
    }
    if cfg.uni_sse.enabled {
        app = app.route(
            cfg.uni_sse.path("/connection/uni_sse"),
            get(stream::uni_sse).post(stream::uni_sse),
        );
    }
    if cfg.uni_http_stream.enabled {
        app = app.route(
            cfg.uni_http_stream.path("/connection/uni_http_stream"),
            post(stream::uni_http_stream),
        );
    }
    if cfg.long_poll.enabled {
        app = app.route(
            &cfg.long_poll.handler_prefix,
            post(long_poll::open)
                .get(long_poll::poll)
                .merge(delete(long_poll::close)),
        );
    }
    if cfg.sse.enabled || cfg.http_stream.enabled || cfg.long_poll.enabled {
        app = app.route(&cfg.emulation.handler_prefix, post(emulation::handler));
    }
    let config = node.inner.config.clone();
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
    app.layer(cors)
}

async fn metrics(axum::extract::State(node): axum::extract::State<Node>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
}

/// Serves `app` on `listener` until `shutdown` resolves (or [`Node::shutdown`] is
/// called), then tells every client (disconnect 3001) and waits up to
/// `shutdown.timeout` for connections to drain before it stops listening.
///
/// The listener stays open during the drain: new connections are refused with 503
/// by the handlers, while long-poll and emulation requests of existing sessions still
/// get through, so every client can collect its disconnect.
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
    let drain = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = token.cancelled() => {}
        }
        node.shutdown().await;
    };
    // axum's graceful shutdown does not track upgraded WebSocket tasks or streams; the
    // node's tracker does, so the drain above runs first.
    axum::serve(listener, app)
        .with_graceful_shutdown(drain)
        .await
}
