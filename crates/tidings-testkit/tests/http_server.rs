//! The HTTP server itself: `http_server.internal_port` and
//! `http_server.header_read_timeout`.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tidings_testkit::TidingsServer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const API_KEY: &str = "internal-port-key";

/// Sends one raw HTTP/1.1 request and returns the status line's code.
async fn status_of(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<u16> {
    let mut tcp = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    timeout(Duration::from_secs(5), tcp.read_to_end(&mut response))
        .await
        .context("response timed out")??;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .with_context(|| format!("no status in {text:?}"))?
        .parse()
        .context("status")
}

#[tokio::test]
async fn internal_port_serves_api_health_and_metrics_and_public_port_does_not() -> anyhow::Result<()>
{
    let server = TidingsServer::builder()
        .config_json(json!({
            "http_server": { "internal_port": "0" },
            "http_api": { "key": API_KEY },
            "client": { "allow_anonymous_connect_without_token": true },
            "channel": { "without_namespace": { "allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true } },
        }))
        .start()
        .await?;
    let internal = server
        .internal_addr()
        .context("the server announced no internal listener")?;
    let public = server.addr();
    assert_ne!(internal, public);
    let publish = json!({"channel": "news", "data": {"n": 1}}).to_string();

    assert_eq!(
        status_of(public, "POST", "/api/publish", &publish).await?,
        404
    );
    assert_eq!(status_of(public, "GET", "/health", "").await?, 404);
    assert_eq!(status_of(public, "GET", "/metrics", "").await?, 404);

    assert_eq!(status_of(internal, "GET", "/health", "").await?, 200);
    assert_eq!(status_of(internal, "GET", "/metrics", "").await?, 200);
    // Client transports stay on the public listener only.
    assert_eq!(
        status_of(internal, "GET", "/connection/websocket", "").await?,
        404
    );

    // A client on the public port gets what the API on the internal port publishes.
    let mut client = server.connected_client().await?;
    client.subscribe("news").await?;
    assert_eq!(
        status_of(internal, "POST", "/api/publish", &publish).await?,
        200
    );
    let publication = client.next_pub("news").await?;
    assert_eq!(publication["data"]["n"], 1);
    Ok(())
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => anyhow::bail!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn connection_that_never_finishes_its_headers_is_closed() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(json!({ "http_server": { "header_read_timeout": "1s" } }))
        .start()
        .await?;

    // Slowloris: a request line and one header, then nothing more.
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.addr()).await?;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await?;
    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(server.addr()).await?;

    // Meanwhile a complete request on another connection is answered.
    assert_eq!(status_of(server.addr(), "GET", "/health", "").await?, 200);

    let sent = read_until_closed(&mut slow, Duration::from_secs(5)).await?;
    assert!(sent.is_empty(), "got {:?}", String::from_utf8_lossy(&sent));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
    let sent = read_until_closed(&mut silent, Duration::from_secs(5)).await?;
    assert!(sent.is_empty());
    Ok(())
}
