//! Server pings every `client.ping_interval`; a client that does not answer
//! within `client.pong_timeout` is closed with 3012 "no pong".

use std::time::Duration;

use serde_json::json;
use tidings_testkit::TidingsServer;

async fn fast_ping_server() -> anyhow::Result<TidingsServer> {
    TidingsServer::builder()
        .env("TIDINGS_CLIENT_PING_INTERVAL", "1s")
        .env("TIDINGS_CLIENT_PONG_TIMEOUT", "500ms")
        .start()
        .await
}

#[tokio::test]
async fn connect_reply_advertises_the_configured_ping_interval() -> anyhow::Result<()> {
    let server = fast_ping_server().await?;
    let mut client = server.client().await?;
    let result = client.connect(json!({})).await?;
    assert_eq!(result["ping"], json!(1), "{result}");
    assert_eq!(result["pong"], json!(true), "{result}");
    Ok(())
}

#[tokio::test]
async fn answered_pings_keep_the_connection_alive() -> anyhow::Result<()> {
    let server = fast_ping_server().await?;
    let mut client = server.connected_client().await?;
    client.set_wait(Duration::from_secs(3));
    // Three pings, each answered with a pong by the client.
    while client.pings_received() < 3 {
        let reply = client.recv_reply().await?;
        assert!(
            reply.as_object().is_some_and(|o| o.is_empty()),
            "an idle connection only gets pings, got {reply}"
        );
    }
    assert!(client.close_status().is_none());
    client.subscribe("alive").await?;
    Ok(())
}

#[tokio::test]
async fn client_that_never_pongs_is_closed_3012() -> anyhow::Result<()> {
    let server = fast_ping_server().await?;
    let mut client = server.client().await?;
    client.set_auto_pong(false);
    client.connect(json!({})).await?;
    let (code, reason) = client.expect_close_within(Duration::from_secs(5)).await?;
    assert_eq!(code, 3012, "reason {reason:?}");
    assert_eq!(reason, "no pong");
    Ok(())
}

#[tokio::test]
async fn closing_a_silent_client_leaves_others_alone() -> anyhow::Result<()> {
    // A subscribed client that never pongs is closed; a client that does
    // pong, on the same channel, keeps receiving.
    let server = fast_ping_server().await?;
    let mut steady = server.connected_client().await?;
    steady.subscribe("beat").await?;
    // Keep reading (and so answering pings) while the other one is closed.
    steady.set_wait(Duration::from_secs(10));
    let steady = tokio::spawn(async move {
        let publication = steady.next_pub("beat").await?;
        anyhow::Ok((steady, publication))
    });

    let mut lazy = server.client().await?;
    lazy.set_auto_pong(false);
    lazy.connect(json!({})).await?;
    lazy.subscribe("beat").await?;
    let (code, _) = lazy.expect_close_within(Duration::from_secs(5)).await?;
    assert_eq!(code, 3012);

    server.publish("beat", json!("still here")).await?;
    let (steady, publication) = steady.await??;
    assert_eq!(publication["data"], json!("still here"));
    assert!(steady.close_status().is_none());
    Ok(())
}
