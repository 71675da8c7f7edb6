//! Namespace permission options not already covered by subscribe.rs, publish.rs,
//! presence.rs and history_recovery.rs: each is shown granting what it names and
//! nothing more, for authenticated and anonymous connections; and user-limited
//! channels with the `#` boundary.

use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_config};
use tidings_testkit::{hs256_token, TidingsServer, WsClient};

const API_KEY: &str = "permissions-test-key";
const SECRET: &str = "permissions-test-secret-long-enough";

/// Channel options with presence and history on, plus `grants`.
fn with_data(grants: Value) -> Value {
    let mut options = json!({ "presence": true, "history_size": 10, "history_ttl": "60s" });
    for (k, v) in grants.as_object().into_iter().flatten() {
        options[k] = v.clone();
    }
    options
}

async fn server() -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["namespaces"] = json!([
        namespace(
            "subanon",
            with_data(json!({
                "allow_subscribe_for_client": true,
                "allow_subscribe_for_anonymous": true
            }))
        ),
        namespace(
            "prsclient",
            with_data(json!({ "allow_presence_for_client": true }))
        ),
        namespace(
            "prsanon",
            with_data(json!({
                "allow_presence_for_client": true,
                "allow_presence_for_anonymous": true
            }))
        ),
        namespace(
            "prssub",
            with_data(json!({
                "allow_subscribe_for_client": true,
                "allow_presence_for_subscriber": true
            }))
        ),
        namespace(
            "hstclient",
            with_data(json!({ "allow_history_for_client": true }))
        ),
        namespace(
            "hstanon",
            with_data(json!({
                "allow_history_for_client": true,
                "allow_history_for_anonymous": true
            }))
        ),
        namespace(
            "hstsub",
            with_data(json!({
                "allow_subscribe_for_client": true,
                "allow_history_for_subscriber": true
            }))
        ),
        namespace(
            "pubclient",
            with_data(json!({ "allow_publish_for_client": true }))
        ),
    ]);
    TidingsServer::builder().config_json(config).start().await
}

async fn user(server: &TidingsServer, name: &str) -> anyhow::Result<WsClient> {
    server
        .connected_client_with_token(&hs256_token(SECRET, name, None)?)
        .await
}

/// The error code of `cmd`, or 0 when it succeeded.
async fn outcome(client: &mut WsClient, cmd: Value) -> anyhow::Result<u64> {
    let reply = client.call(cmd).await?;
    Ok(reply["error"]["code"].as_u64().unwrap_or(0))
}

fn presence(channel: &str) -> Value {
    json!({ "presence": { "channel": channel } })
}

fn presence_stats(channel: &str) -> Value {
    json!({ "presence_stats": { "channel": channel } })
}

fn history(channel: &str) -> Value {
    json!({ "history": { "channel": channel, "limit": 10 } })
}

#[tokio::test]
async fn allow_subscribe_for_anonymous_admits_anonymous_connections() -> anyhow::Result<()> {
    let server = server().await?;
    let mut anonymous = server.connected_client().await?;
    anonymous.subscribe("subanon:lobby").await?;
    // Without it (prssub has allow_subscribe_for_client only) anonymous is refused.
    let code = outcome(
        &mut anonymous,
        json!({ "subscribe": { "channel": "prssub:lobby" } }),
    )
    .await?;
    assert_eq!(code, 103);
    Ok(())
}

#[tokio::test]
async fn allow_presence_for_client_needs_no_subscription_but_a_user() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    let mut anonymous = server.connected_client().await?;
    for cmd in [presence("prsclient:room"), presence_stats("prsclient:room")] {
        assert_eq!(outcome(&mut alice, cmd.clone()).await?, 0, "{cmd}");
        assert_eq!(outcome(&mut anonymous, cmd.clone()).await?, 103, "{cmd}");
    }
    // Presence only: history stays closed.
    assert_eq!(outcome(&mut alice, history("prsclient:room")).await?, 103);
    Ok(())
}

#[tokio::test]
async fn allow_presence_for_anonymous_extends_it_to_anonymous() -> anyhow::Result<()> {
    let server = server().await?;
    let mut anonymous = server.connected_client().await?;
    for cmd in [presence("prsanon:room"), presence_stats("prsanon:room")] {
        assert_eq!(outcome(&mut anonymous, cmd.clone()).await?, 0, "{cmd}");
    }
    Ok(())
}

#[tokio::test]
async fn allow_presence_for_subscriber_admits_subscribed_users_only() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    assert_eq!(outcome(&mut alice, presence("prssub:room")).await?, 103);
    alice.subscribe("prssub:room").await?;
    let reply = alice.call_result(presence("prssub:room")).await?;
    let id = alice.client_id().unwrap_or_default().to_owned();
    assert_eq!(reply["presence"][&id]["user"], json!("alice"), "{reply}");
    assert_eq!(outcome(&mut alice, presence_stats("prssub:room")).await?, 0);
    Ok(())
}

#[tokio::test]
async fn allow_history_for_client_needs_no_subscription_but_a_user() -> anyhow::Result<()> {
    let server = server().await?;
    server.publish("hstclient:log", json!({ "n": 1 })).await?;
    let mut alice = user(&server, "alice").await?;
    let result = alice.call_result(history("hstclient:log")).await?;
    assert_eq!(
        result["publications"][0]["data"],
        json!({ "n": 1 }),
        "{result}"
    );
    let mut anonymous = server.connected_client().await?;
    assert_eq!(
        outcome(&mut anonymous, history("hstclient:log")).await?,
        103
    );
    // History only: presence stays closed.
    assert_eq!(outcome(&mut alice, presence("hstclient:log")).await?, 103);
    Ok(())
}

#[tokio::test]
async fn allow_history_for_anonymous_extends_it_to_anonymous() -> anyhow::Result<()> {
    let server = server().await?;
    server.publish("hstanon:log", json!({ "n": 1 })).await?;
    let mut anonymous = server.connected_client().await?;
    let result = anonymous.call_result(history("hstanon:log")).await?;
    assert_eq!(
        result["publications"][0]["data"],
        json!({ "n": 1 }),
        "{result}"
    );
    Ok(())
}

#[tokio::test]
async fn allow_history_for_subscriber_admits_subscribed_users_only() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    assert_eq!(outcome(&mut alice, history("hstsub:log")).await?, 103);
    alice.subscribe("hstsub:log").await?;
    assert_eq!(outcome(&mut alice, history("hstsub:log")).await?, 0);
    Ok(())
}

#[tokio::test]
async fn allow_publish_for_client_needs_no_subscription_but_a_user() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    alice.publish("pubclient:board", json!("hi")).await?;
    let mut anonymous = server.connected_client().await?;
    let code = outcome(
        &mut anonymous,
        json!({ "publish": { "channel": "pubclient:board", "data": "hi" } }),
    )
    .await?;
    assert_eq!(code, 103);
    // Publishing is not subscribing.
    let code = outcome(
        &mut alice,
        json!({ "subscribe": { "channel": "pubclient:board" } }),
    )
    .await?;
    assert_eq!(code, 103);
    Ok(())
}

/// `dialog#42,43` without a namespace and `chat:#7` in one, both with
/// `allow_user_limited_channels`; `open` allows subscribing to all but has no
/// user-limited channels.
async fn user_limited_server() -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["without_namespace"] = json!({ "allow_user_limited_channels": true });
    config["channel"]["namespaces"] = json!([
        namespace(
            "chat",
            json!({ "allow_user_limited_channels": true, "presence": true })
        ),
        namespace(
            "open",
            json!({
                "allow_subscribe_for_client": true,
                "allow_subscribe_for_anonymous": true
            })
        ),
    ]);
    TidingsServer::builder().config_json(config).start().await
}

#[tokio::test]
async fn user_limited_channels_admit_exactly_the_listed_users() -> anyhow::Result<()> {
    let server = user_limited_server().await?;
    for (who, channel, expected) in [
        ("42", "dialog#42,43", 0),
        ("43", "dialog#42,43", 0),
        ("44", "dialog#42,43", 103),
        // The list after `#` is matched whole, not by prefix.
        ("4", "dialog#42,43", 103),
        ("42", "dialog#420", 103),
        ("42", "dialog#", 103),
        ("7", "chat:#7", 0),
        ("8", "chat:#7", 103),
        // Outside a namespace that enables them, `#` grants nothing.
        ("42", "open:room#42", 103),
    ] {
        let mut client = user(&server, who).await?;
        let code = outcome(&mut client, json!({ "subscribe": { "channel": channel } })).await?;
        assert_eq!(code, expected, "user {who} on {channel}");
    }
    // Anonymous connections are never among the listed users.
    let mut anonymous = server.connected_client().await?;
    let code = outcome(
        &mut anonymous,
        json!({ "subscribe": { "channel": "dialog#42,43" } }),
    )
    .await?;
    assert_eq!(code, 103);
    // And `open` still admits a plain channel to everyone.
    anonymous.subscribe("open:room").await?;
    Ok(())
}
