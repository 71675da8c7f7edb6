//! SIGTERM/SIGINT: every client gets close 3001 "shutdown", new connections
//! are refused, and the process exits within `shutdown.timeout`.

use std::time::{Duration, Instant};

use serde_json::json;
use tidings_testkit::{Outcome, TidingsServer, WsClient};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

async fn server() -> anyhow::Result<TidingsServer> {
    TidingsServer::builder()
        .env("TIDINGS_SHUTDOWN_TIMEOUT", "3s")
        .start()
        .await
}

/// After the shutdown began, a new connection must not become a working
/// session: the dial fails, or the session is closed with 3001.
async fn assert_refuses_new_sessions(url: &str) -> anyhow::Result<()> {
    let Ok(mut late) = WsClient::open(url).await else {
        return Ok(());
    };
    match late.call_or_close(json!({ "connect": {} })).await {
        Ok(Outcome::Closed(code, _)) => assert_eq!(code, 3001),
        Ok(Outcome::Reply(reply)) => panic!("a new session was accepted during shutdown: {reply}"),
        // Dropped without a close frame: also refused.
        Err(_) => {}
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_clients_with_3001_and_exits_within_timeout() -> anyhow::Result<()> {
    let mut server = server().await?;
    let mut subscribed = server.connected_client().await?;
    subscribed.subscribe("news").await?;
    let mut idle = server.connected_client().await?;

    let started = Instant::now();
    server.sigterm()?;
    for client in [&mut subscribed, &mut idle] {
        let (code, reason) = client.expect_close_within(SHUTDOWN_TIMEOUT).await?;
        assert_eq!((code, reason.as_str()), (3001, "shutdown"));
    }
    assert_refuses_new_sessions(&server.ws_url()).await?;
    let status = server
        .wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(1))
        .await?;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() <= SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn sigint_shuts_down_the_same_way() -> anyhow::Result<()> {
    let mut server = server().await?;
    let mut client = server.connected_client().await?;
    server.sigint()?;
    let (code, reason) = client.expect_close_within(SHUTDOWN_TIMEOUT).await?;
    assert_eq!((code, reason.as_str()), (3001, "shutdown"));
    let status = server
        .wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(1))
        .await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn shutdown_also_closes_a_socket_that_never_connected() -> anyhow::Result<()> {
    let mut server = server().await?;
    let mut fresh = server.client().await?;
    server.sigterm()?;
    let closed = fresh.expect_close_within(SHUTDOWN_TIMEOUT).await;
    if let Ok((code, _)) = closed {
        assert_eq!(code, 3001);
    }
    server
        .wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(1))
        .await?;
    Ok(())
}

#[tokio::test]
async fn idle_server_exits_promptly_on_sigterm() -> anyhow::Result<()> {
    let mut server = server().await?;
    let started = Instant::now();
    server.sigterm()?;
    let status = server.wait_exit(SHUTDOWN_TIMEOUT).await?;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < SHUTDOWN_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}
