//! `subscribe` and `unsubscribe`, their errors, and channel name validation.

use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_config};
use tidings_testkit::{hs256_token, Outcome, TidingsServer};

const API_KEY: &str = "subscribe-test-key";
const SECRET: &str = "subscribe-test-secret";

/// Offsets of zero may be left out of the JSON.
fn offset(v: &Value) -> u64 {
    v["offset"].as_u64().unwrap_or(0)
}

/// Dev-like config plus a namespace nobody may subscribe to and one only
/// authenticated users may subscribe to.
async fn restricted_server() -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["namespaces"] = json!([
        namespace("locked", json!({ "presence": true })),
        namespace("members", json!({ "allow_subscribe_for_client": true })),
    ]);
    TidingsServer::builder().config_json(config).start().await
}

#[tokio::test]
async fn subscribe_returns_recoverable_stream_position() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    server.publish("news", json!({ "n": 1 })).await?;
    server.publish("news", json!({ "n": 2 })).await?;
    let mut client = server.connected_client().await?;
    let result = client.subscribe("news").await?;
    assert_eq!(result["recoverable"], json!(true), "{result}");
    assert!(
        result["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "epoch in {result}"
    );
    assert_eq!(offset(&result), 2, "top offset in {result}");
    Ok(())
}

#[tokio::test]
async fn double_subscribe_returns_105() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("twice").await?;
    let code = client
        .error_code(json!({ "subscribe": { "channel": "twice" } }))
        .await?;
    assert_eq!(code, 105);
    // The first subscription is still live.
    server
        .publish("twice", json!({ "still": "subscribed" }))
        .await?;
    let publication = client.next_pub("twice").await?;
    assert_eq!(publication["data"], json!({ "still": "subscribed" }));
    Ok(())
}

#[tokio::test]
async fn unknown_namespace_returns_102() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    let code = client
        .error_code(json!({ "subscribe": { "channel": "nowhere:room" } }))
        .await?;
    assert_eq!(code, 102);
    Ok(())
}

#[tokio::test]
async fn subscribe_not_permitted_returns_103() -> anyhow::Result<()> {
    let server = restricted_server().await?;
    let mut anonymous = server.connected_client().await?;
    let code = anonymous
        .error_code(json!({ "subscribe": { "channel": "locked:room" } }))
        .await?;
    assert_eq!(code, 103, "namespace without subscribe permission");
    let code = anonymous
        .error_code(json!({ "subscribe": { "channel": "members:room" } }))
        .await?;
    assert_eq!(code, 103, "anonymous in a namespace open to clients only");

    let token = hs256_token(SECRET, "bob", None)?;
    let mut bob = server.connected_client_with_token(&token).await?;
    bob.subscribe("members:room").await?;
    let code = bob
        .error_code(json!({ "subscribe": { "channel": "locked:room" } }))
        .await?;
    assert_eq!(code, 103, "authenticated user in a closed namespace");
    Ok(())
}

#[tokio::test]
async fn unsubscribe_replies_and_stops_publications() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("leaving").await?;
    client.subscribe("staying").await?;
    let reply = client
        .call(json!({ "unsubscribe": { "channel": "leaving" } }))
        .await?;
    assert!(reply.get("error").is_none(), "{reply}");
    assert!(reply.get("unsubscribe").is_some(), "{reply}");

    server.publish("leaving", json!({ "lost": true })).await?;
    server.publish("staying", json!({ "kept": true })).await?;
    // Publications are delivered in publish order, so a leaked one would come first.
    let push = client.next_push_of("pub", "staying").await?;
    assert_eq!(push["pub"]["data"], json!({ "kept": true }));
    let leaked: Vec<&Value> = client
        .skipped_pushes()
        .iter()
        .filter(|p| p["channel"] == json!("leaving") && p.get("pub").is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "publication after unsubscribe: {leaked:?}"
    );
    Ok(())
}

#[tokio::test]
async fn resubscribe_after_unsubscribe_works() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("again").await?;
    client.unsubscribe("again").await?;
    client.subscribe("again").await?;
    server.publish("again", json!("back")).await?;
    assert_eq!(client.next_pub("again").await?["data"], json!("back"));
    Ok(())
}

#[tokio::test]
async fn channel_name_over_max_length_returns_107() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    let longest = "a".repeat(255);
    client.subscribe(&longest).await?;
    let too_long = "b".repeat(256);
    let code = client
        .error_code(json!({ "subscribe": { "channel": too_long } }))
        .await?;
    assert_eq!(code, 107);
    Ok(())
}

#[tokio::test]
async fn non_ascii_channel_name_returns_107() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    for channel in ["чат", "café", "room\u{1F600}"] {
        let code = client
            .error_code(json!({ "subscribe": { "channel": channel } }))
            .await?;
        assert_eq!(code, 107, "channel {channel:?}");
    }
    Ok(())
}

#[tokio::test]
async fn reserved_characters_in_channel_name_return_107() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    for channel in ["news*", "a&b"] {
        let code = client
            .error_code(json!({ "subscribe": { "channel": channel } }))
            .await?;
        assert_eq!(code, 107, "channel {channel:?}");
    }
    // Ordinary punctuation stays allowed.
    client.subscribe("room-1_b.c").await?;
    Ok(())
}

#[tokio::test]
async fn empty_channel_name_is_rejected() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    match client
        .call_or_close(json!({ "subscribe": { "channel": "" } }))
        .await?
    {
        Outcome::Reply(reply) => assert_eq!(reply["error"]["code"], json!(107), "{reply}"),
        Outcome::Closed(code, reason) => assert_eq!(code, 3501, "closed: {reason}"),
    }
    Ok(())
}
