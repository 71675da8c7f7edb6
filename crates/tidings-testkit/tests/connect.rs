//! `connect`, `refresh`, `rpc` and `send` over a real WebSocket.

use serde_json::json;
use tidings_testkit::{hs256_token, unix_now, TidingsServer};

const SECRET: &str = "connect-test-secret";

async fn server_with_tokens() -> anyhow::Result<TidingsServer> {
    TidingsServer::builder()
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .start()
        .await
}

#[tokio::test]
async fn connect_returns_client_id_version_and_ping_pong() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.client().await?;
    let reply = client
        .call(json!({ "connect": { "name": "test" } }))
        .await?;
    assert_eq!(
        reply["id"],
        json!(1),
        "reply echoes the command id: {reply}"
    );
    let result = &reply["connect"];
    let id = result["client"].as_str().unwrap_or_default();
    assert!(!id.is_empty(), "client id in {reply}");
    assert!(result["version"].is_string(), "version in {reply}");
    assert_eq!(
        result["ping"],
        json!(25),
        "default ping interval in {reply}"
    );
    assert_eq!(result["pong"], json!(true), "pong requested in {reply}");
    Ok(())
}

#[tokio::test]
async fn each_connection_gets_its_own_client_id() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let a = server.connected_client().await?;
    let b = server.connected_client().await?;
    assert_ne!(a.client_id(), b.client_id());
    Ok(())
}

#[tokio::test]
async fn token_connect_reports_expiry_and_sets_user() -> anyhow::Result<()> {
    let server = server_with_tokens().await?;
    let token = hs256_token(SECRET, "alice", Some(unix_now() + 60))?;
    let mut client = server.client().await?;
    let result = client.connect(json!({ "token": token })).await?;
    assert_eq!(result["expires"], json!(true), "{result}");
    let ttl = result["ttl"].as_u64().unwrap_or(0);
    assert!((1..=60).contains(&ttl), "ttl {ttl} in {result}");

    client.subscribe("room").await?;
    let presence = client
        .call_result(json!({ "presence": { "channel": "room" } }))
        .await?;
    let id = client.client_id().unwrap_or_default().to_owned();
    assert_eq!(
        presence["presence"][&id]["user"],
        json!("alice"),
        "{presence}"
    );
    Ok(())
}

#[tokio::test]
async fn refresh_with_new_token_extends_expiry() -> anyhow::Result<()> {
    let server = server_with_tokens().await?;
    let token = hs256_token(SECRET, "alice", Some(unix_now() + 30))?;
    let mut client = server.connected_client_with_token(&token).await?;
    let fresh = hs256_token(SECRET, "alice", Some(unix_now() + 600))?;
    let result = client
        .call_result(json!({ "refresh": { "token": fresh } }))
        .await?;
    assert_eq!(result["expires"], json!(true), "{result}");
    let ttl = result["ttl"].as_u64().unwrap_or(0);
    assert!(ttl > 30 && ttl <= 600, "ttl {ttl} in {result}");
    if let Some(id) = result.get("client") {
        assert_eq!(
            id.as_str(),
            client.client_id(),
            "refresh keeps the client id"
        );
    }
    // Still usable afterwards.
    client.subscribe("after-refresh").await?;
    Ok(())
}

#[tokio::test]
async fn rpc_without_handler_or_proxy_returns_108() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    let error = client
        .call_error(json!({ "rpc": { "method": "sum", "data": { "a": 1 } } }))
        .await?;
    assert_eq!(error["code"], json!(108), "{error}");
    // The connection survives the error.
    client.subscribe("still-here").await?;
    Ok(())
}

#[tokio::test]
async fn send_gets_no_reply() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client
        .send(&json!({ "send": { "data": { "hello": "server" } } }))
        .await?;
    client
        .send(&json!({ "id": 7, "subscribe": { "channel": "after-send" } }))
        .await?;
    // Commands are answered in order, so anything sent for `send` would come first.
    let first = client.recv_reply().await?;
    assert_eq!(first["id"], json!(7), "first reply after send: {first}");
    assert!(first.get("subscribe").is_some(), "{first}");
    Ok(())
}

#[tokio::test]
async fn connect_accepts_name_version_and_data() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.client().await?;
    let result = client
        .connect(json!({ "name": "rust-tests", "version": "1.2.3", "data": { "hello": 1 } }))
        .await?;
    assert!(result["client"].as_str().is_some_and(|c| !c.is_empty()));
    Ok(())
}
