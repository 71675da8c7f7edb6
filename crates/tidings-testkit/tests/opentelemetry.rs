//! OpenTelemetry traces against a local OTLP/HTTP receiver (an axum app started by
//! the test, as a collector would listen): with `opentelemetry.enabled`, `api` and
//! `proxy`, a server API call and a connect through the connect proxy each arrive
//! as a span in an OTLP protobuf export, under the service name `tidings`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::ensure;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tidings_testkit::profile::open_config;
use tidings_testkit::TidingsServer;

#[derive(Default)]
struct Exports {
    /// Each export request: its content type and body.
    requests: Mutex<Vec<(String, Bytes)>>,
}

async fn traces(State(seen): State<Arc<Exports>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let kind = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    seen.requests.lock().unwrap().push((kind, body));
    StatusCode::OK
}

/// The application backend's connect proxy: everyone is `traced-user`.
async fn connect(Json(_body): Json<Value>) -> Json<Value> {
    Json(json!({ "result": { "user": "traced-user" } }))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_proxy_calls_arrive_as_otlp_spans() -> anyhow::Result<()> {
    let seen = Arc::new(Exports::default());
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(seen.clone())
        .route("/connect", post(connect));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let mut config = open_config("api-key", "otel-test-secret-that-is-long-enough-0123");
    config["client"]["allow_anonymous_connect_without_token"] = json!(false);
    config["opentelemetry"] = json!({ "enabled": true, "api": true, "proxy": true });
    config["client"]["proxy"] = json!({
        "connect": { "enabled": true, "endpoint": format!("http://{addr}/connect"), "timeout": "2s" }
    });
    let server = TidingsServer::builder()
        .config_json(config)
        .api_key("api-key")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{addr}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await?;

    server.publish("traced", json!({ "n": 1 })).await?;
    // Connected through the connect proxy (a token-less client is refused without it:
    // anonymous connects are not allowed by this configuration).
    let client = server.connected_client().await?;

    let deadline = Instant::now() + Duration::from_secs(15);
    let wanted: [&[u8]; 3] = [b"api.publish", b"proxy.connect", b"tidings"];
    loop {
        let done = {
            let requests = seen.requests.lock().unwrap();
            let all: Vec<u8> = requests.iter().flat_map(|(_, b)| b.to_vec()).collect();
            if let Some((kind, _)) = requests.iter().find(|(k, _)| k != "application/x-protobuf") {
                anyhow::bail!("an export with content type {kind:?}");
            }
            wanted.iter().all(|w| contains(&all, w))
        };
        if done {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "spans not exported in time: {} requests",
            seen.requests.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    drop(server);
    receiver.abort();
    Ok(())
}
