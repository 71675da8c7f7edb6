//! `presence`, `presence_stats`, and `join`/`leave` pushes.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_config};
use tidings_testkit::{hs256_token_with_claims, TidingsServer, WsClient};

const API_KEY: &str = "presence-test-key";
const SECRET: &str = "presence-test-secret";

async fn server_with_tokens() -> anyhow::Result<TidingsServer> {
    TidingsServer::builder()
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .start()
        .await
}

async fn user(server: &TidingsServer, sub: &str, info: Value) -> anyhow::Result<WsClient> {
    let token = hs256_token_with_claims(SECRET, &json!({ "sub": sub, "info": info }))?;
    server.connected_client_with_token(&token).await
}

#[tokio::test]
async fn presence_lists_each_subscriber_with_user_and_conn_info() -> anyhow::Result<()> {
    let server = server_with_tokens().await?;
    let mut alice = user(&server, "alice", json!({ "name": "Alice" })).await?;
    let mut bob = user(&server, "bob", json!({ "name": "Bob" })).await?;
    alice.subscribe("lobby").await?;
    bob.subscribe("lobby").await?;

    let result = alice
        .call_result(json!({ "presence": { "channel": "lobby" } }))
        .await?;
    let presence = result["presence"].as_object().cloned().unwrap_or_default();
    assert_eq!(presence.len(), 2, "{result}");
    for (client, name, id) in [(&alice, "alice", "Alice"), (&bob, "bob", "Bob")] {
        let client_id = client.client_id().unwrap_or_default();
        let entry = &presence[client_id];
        assert_eq!(entry["client"], json!(client_id), "{result}");
        assert_eq!(entry["user"], json!(name), "{result}");
        assert_eq!(entry["conn_info"], json!({ "name": id }), "{result}");
    }
    Ok(())
}

#[tokio::test]
async fn presence_stats_counts_clients_and_unique_users() -> anyhow::Result<()> {
    let server = server_with_tokens().await?;
    let mut a1 = user(&server, "ann", json!(null)).await?;
    let mut a2 = user(&server, "ann", json!(null)).await?;
    let mut b = user(&server, "ben", json!(null)).await?;
    for client in [&mut a1, &mut a2, &mut b] {
        client.subscribe("stats").await?;
    }
    let stats = b
        .call_result(json!({ "presence_stats": { "channel": "stats" } }))
        .await?;
    assert_eq!(stats["num_clients"], json!(3), "{stats}");
    assert_eq!(stats["num_users"], json!(2), "{stats}");
    Ok(())
}

#[tokio::test]
async fn join_and_leave_pushes_carry_client_info() -> anyhow::Result<()> {
    let server = server_with_tokens().await?;
    let mut alice = user(&server, "alice", json!({ "name": "Alice" })).await?;
    let mut bob = user(&server, "bob", json!({ "name": "Bob" })).await?;
    alice.subscribe("party").await?;
    bob.subscribe("party").await?;
    let bob_id = bob.client_id().unwrap_or_default().to_owned();

    let join = loop {
        let push = alice.next_push_of("join", "party").await?;
        if push["join"]["info"]["client"] == json!(bob_id) {
            break push;
        }
    };
    assert_eq!(join["join"]["info"]["user"], json!("bob"), "{join}");
    assert_eq!(
        join["join"]["info"]["conn_info"],
        json!({ "name": "Bob" }),
        "{join}"
    );

    bob.unsubscribe("party").await?;
    let leave = alice.next_push_of("leave", "party").await?;
    assert_eq!(leave["leave"]["info"]["client"], json!(bob_id), "{leave}");
    assert_eq!(leave["leave"]["info"]["user"], json!("bob"), "{leave}");
    Ok(())
}

#[tokio::test]
async fn leave_push_and_presence_removal_when_subscriber_disconnects() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut stayer = server.connected_client().await?;
    let mut goner = server.connected_client().await?;
    stayer.subscribe("room").await?;
    goner.subscribe("room").await?;
    let goner_id = goner.client_id().unwrap_or_default().to_owned();
    goner.close().await?;

    let leave = stayer.next_push_of("leave", "room").await?;
    assert_eq!(leave["leave"]["info"]["client"], json!(goner_id), "{leave}");

    // Presence converges to the one remaining client.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = stayer
            .call_result(json!({ "presence_stats": { "channel": "room" } }))
            .await?;
        if stats["num_clients"] == json!(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence still counts the closed client: {stats}"
        );
        tokio::task::yield_now().await;
    }
    Ok(())
}

#[tokio::test]
async fn presence_requires_subscription_returns_103() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    let code = client
        .error_code(json!({ "presence": { "channel": "elsewhere" } }))
        .await?;
    assert_eq!(code, 103);
    let code = client
        .error_code(json!({ "presence_stats": { "channel": "elsewhere" } }))
        .await?;
    assert_eq!(code, 103);
    Ok(())
}

#[tokio::test]
async fn presence_in_channel_without_presence_returns_108() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["namespaces"] = json!([namespace(
        "quiet",
        json!({
            "allow_subscribe_for_client": true,
            "allow_subscribe_for_anonymous": true,
            "allow_presence_for_subscriber": true,
            "allow_presence_for_anonymous": true
        })
    )]);
    let server = TidingsServer::builder().config_json(config).start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("quiet:room").await?;
    let code = client
        .error_code(json!({ "presence": { "channel": "quiet:room" } }))
        .await?;
    assert_eq!(code, 108);
    Ok(())
}

#[tokio::test]
async fn no_join_leave_pushes_when_join_leave_is_off() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["namespaces"] = json!([namespace(
        "silent",
        json!({
            "presence": true,
            "allow_subscribe_for_client": true,
            "allow_subscribe_for_anonymous": true
        })
    )]);
    let server = TidingsServer::builder().config_json(config).start().await?;
    let mut first = server.connected_client().await?;
    let mut second = server.connected_client().await?;
    first.subscribe("silent:room").await?;
    second.subscribe("silent:room").await?;
    second.unsubscribe("silent:room").await?;
    server.publish("silent:room", json!("marker")).await?;
    let push = first.next_push().await?;
    assert!(
        push.get("pub").is_some(),
        "expected only the publication, got {push}"
    );
    Ok(())
}
