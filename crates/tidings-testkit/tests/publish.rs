//! `publish` from clients and from the API, the `pub` push, and publish
//! permissions.

use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_channel_options, open_config};
use tidings_testkit::{hs256_token, TidingsServer};

const API_KEY: &str = "publish-test-key";
const SECRET: &str = "publish-test-secret";

fn offset(v: &Value) -> u64 {
    v["offset"].as_u64().unwrap_or(0)
}

/// Namespaces: `ro` (subscribe only), `subs` (publish for subscribers),
/// `users` (publish for authenticated clients), `eph` (no history).
async fn permission_server() -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    let mut ephemeral = open_channel_options();
    if let Some(map) = ephemeral.as_object_mut() {
        map.remove("history_size");
        map.remove("history_ttl");
        map.remove("force_recovery");
    }
    config["channel"]["namespaces"] = json!([
        namespace(
            "ro",
            json!({
                "allow_subscribe_for_client": true,
                "allow_subscribe_for_anonymous": true
            })
        ),
        namespace(
            "subs",
            json!({
                "allow_subscribe_for_client": true,
                "allow_subscribe_for_anonymous": true,
                "allow_publish_for_subscriber": true,
                "allow_publish_for_anonymous": true
            })
        ),
        namespace(
            "users",
            json!({
                "allow_subscribe_for_client": true,
                "allow_subscribe_for_anonymous": true,
                "allow_publish_for_client": true
            })
        ),
        namespace("eph", ephemeral),
    ]);
    TidingsServer::builder().config_json(config).start().await
}

#[tokio::test]
async fn client_publication_reaches_subscribers_with_offset_and_publisher_info(
) -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .start()
        .await?;
    let alice_token = hs256_token(SECRET, "alice", None)?;
    let bob_token = hs256_token(SECRET, "bob", None)?;
    let mut alice = server.connected_client_with_token(&alice_token).await?;
    let mut bob = server.connected_client_with_token(&bob_token).await?;
    alice.subscribe("chat").await?;
    bob.subscribe("chat").await?;

    let reply = alice
        .call(json!({ "publish": { "channel": "chat", "data": { "text": "hi" } } }))
        .await?;
    assert!(reply.get("error").is_none(), "{reply}");
    assert!(reply.get("publish").is_some(), "publish result in {reply}");

    for client in [&mut bob, &mut alice] {
        let publication = client.next_pub("chat").await?;
        assert_eq!(
            publication["data"],
            json!({ "text": "hi" }),
            "{publication}"
        );
        assert_eq!(offset(&publication), 1, "{publication}");
        assert_eq!(publication["info"]["user"], json!("alice"), "{publication}");
    }
    let alice_id = alice.client_id().unwrap_or_default().to_owned();
    let publication = {
        bob.publish("chat", json!({ "text": "yo" })).await?;
        alice.next_pub("chat").await?
    };
    assert_eq!(offset(&publication), 2, "{publication}");
    assert_eq!(publication["info"]["user"], json!("bob"), "{publication}");
    assert_ne!(publication["info"]["client"], json!(alice_id));
    assert_eq!(
        publication["info"]["client"].as_str(),
        bob.client_id(),
        "{publication}"
    );
    Ok(())
}

#[tokio::test]
async fn api_publication_has_offset_and_no_client_info() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("feed").await?;
    let result = server.publish("feed", json!({ "from": "backend" })).await?;
    assert_eq!(offset(&result), 1, "{result}");
    let publication = client.next_pub("feed").await?;
    assert_eq!(publication["data"], json!({ "from": "backend" }));
    assert_eq!(offset(&publication), 1, "{publication}");
    assert!(publication.get("info").is_none(), "{publication}");
    Ok(())
}

#[tokio::test]
async fn publications_arrive_in_order_with_increasing_offsets() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut publisher = server.connected_client().await?;
    let mut reader = server.connected_client().await?;
    reader.subscribe("ordered").await?;
    for n in 1..=50 {
        publisher.publish("ordered", json!({ "n": n })).await?;
    }
    for n in 1..=50u64 {
        let publication = reader.next_pub("ordered").await?;
        assert_eq!(publication["data"]["n"], json!(n), "{publication}");
        assert_eq!(offset(&publication), n, "{publication}");
    }
    Ok(())
}

#[tokio::test]
async fn publish_without_permission_returns_103() -> anyhow::Result<()> {
    let server = permission_server().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("ro:board").await?;
    let code = client
        .error_code(json!({ "publish": { "channel": "ro:board", "data": {} } }))
        .await?;
    assert_eq!(code, 103);
    // The API may still publish there.
    server.publish("ro:board", json!("from api")).await?;
    assert_eq!(
        client.next_pub("ro:board").await?["data"],
        json!("from api")
    );
    Ok(())
}

#[tokio::test]
async fn publish_for_subscriber_requires_subscription() -> anyhow::Result<()> {
    let server = permission_server().await?;
    let mut client = server.connected_client().await?;
    let code = client
        .error_code(json!({ "publish": { "channel": "subs:room", "data": 1 } }))
        .await?;
    assert_eq!(code, 103, "not subscribed yet");
    client.subscribe("subs:room").await?;
    client.publish("subs:room", json!(2)).await?;
    assert_eq!(client.next_pub("subs:room").await?["data"], json!(2));
    Ok(())
}

#[tokio::test]
async fn anonymous_publish_needs_allow_publish_for_anonymous() -> anyhow::Result<()> {
    let server = permission_server().await?;
    let mut anonymous = server.connected_client().await?;
    let code = anonymous
        .error_code(json!({ "publish": { "channel": "users:wall", "data": 1 } }))
        .await?;
    assert_eq!(code, 103);
    let token = hs256_token(SECRET, "carol", None)?;
    let mut carol = server.connected_client_with_token(&token).await?;
    carol.publish("users:wall", json!(1)).await?;
    Ok(())
}

#[tokio::test]
async fn publication_without_history_has_no_offset() -> anyhow::Result<()> {
    let server = permission_server().await?;
    let mut typist = server.connected_client().await?;
    let mut watcher = server.connected_client().await?;
    watcher.subscribe("eph:typing").await?;
    typist
        .publish("eph:typing", json!({ "typing": true }))
        .await?;
    let publication = watcher.next_pub("eph:typing").await?;
    assert_eq!(publication["data"], json!({ "typing": true }));
    assert_eq!(
        offset(&publication),
        0,
        "no offset without history: {publication}"
    );
    Ok(())
}

#[tokio::test]
async fn publish_to_unknown_namespace_returns_102() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    let code = client
        .error_code(json!({ "publish": { "channel": "ghost:room", "data": 1 } }))
        .await?;
    assert_eq!(code, 102);
    Ok(())
}
