//! Bad input gets the protocol's answer (close 3501, close 1009, error 107…),
//! never a panic, and never disturbs other connections on the node.

use serde_json::json;
use tidings_testkit::{Outcome, TidingsServer, WsClient};

/// A connected, subscribed client that must keep working whatever the
/// misbehaving connection does.
struct Bystander {
    client: WsClient,
    next: u64,
}

impl Bystander {
    async fn join(server: &TidingsServer) -> anyhow::Result<Self> {
        let mut client = server.connected_client().await?;
        client.subscribe("calm").await?;
        Ok(Self { client, next: 0 })
    }

    /// The bystander still receives publications, and the node still
    /// accepts and serves a brand new connection.
    async fn still_fine(&mut self, server: &TidingsServer) -> anyhow::Result<()> {
        self.next += 1;
        server.publish("calm", json!({ "n": self.next })).await?;
        let publication = self.client.next_pub("calm").await?;
        assert_eq!(publication["data"]["n"], json!(self.next));
        let mut fresh = server.connected_client().await?;
        fresh.subscribe("fresh").await?;
        Ok(())
    }
}

async fn expect_bad_request(client: &mut WsClient, frame: &str) -> anyhow::Result<()> {
    let (code, reason) = client.send_raw_expect_close(frame).await?;
    assert_eq!(code, 3501, "frame {frame:?} closed with {code} {reason:?}");
    assert_eq!(reason, "bad request", "frame {frame:?}");
    Ok(())
}

#[tokio::test]
async fn malformed_json_closes_3501() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    for frame in [
        "not json at all",
        "{\"id\":2,\"subscribe\":",
        "{\"id\":2}}",
        "[1,2,3",
    ] {
        let mut client = server.connected_client().await?;
        expect_bad_request(&mut client, frame).await?;
        bystander.still_fine(&server).await?;
    }
    Ok(())
}

#[tokio::test]
async fn malformed_line_inside_a_batch_closes_3501() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    expect_bad_request(
        &mut client,
        "{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":3,\"subscr",
    )
    .await?;
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn command_before_connect_closes_3501() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    for frame in [
        r#"{"id":1,"subscribe":{"channel":"early"}}"#,
        r#"{"id":1,"publish":{"channel":"early","data":{}}}"#,
        "{}",
    ] {
        let mut client = server.client().await?;
        expect_bad_request(&mut client, frame).await?;
        bystander.still_fine(&server).await?;
    }
    Ok(())
}

#[tokio::test]
async fn second_connect_is_rejected() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    match client.call_or_close(json!({ "connect": {} })).await? {
        Outcome::Closed(code, reason) => assert_eq!(code, 3501, "reason {reason:?}"),
        Outcome::Reply(reply) => assert!(reply.get("error").is_some(), "accepted: {reply}"),
    }
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn unknown_command_is_rejected() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    for frame in [r#"{"id":2}"#, r#"{"id":2,"teleport":{"to":"mars"}}"#] {
        let mut client = server.connected_client().await?;
        let _ = client.send_raw(frame).await;
        // Centrifugo closes with 3501; an error reply for id 2 is also an answer.
        match client
            .call_or_close(json!({ "id": 3, "subscribe": { "channel": "after" } }))
            .await?
        {
            Outcome::Closed(code, reason) => {
                assert_eq!(code, 3501, "frame {frame:?}: reason {reason:?}")
            }
            Outcome::Reply(_) => {
                let reply = client.wait_reply(2).await?;
                assert!(reply.get("error").is_some(), "frame {frame:?} got {reply}");
            }
        }
        bystander.still_fine(&server).await?;
    }
    Ok(())
}

#[tokio::test]
async fn command_without_id_closes_3501() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    expect_bad_request(&mut client, r#"{"subscribe":{"channel":"no-id"}}"#).await?;
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn wrong_field_types_close_3501() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    for frame in [
        r#"{"id":2,"subscribe":{"channel":123}}"#,
        r#"{"id":"two","subscribe":{"channel":"x"}}"#,
        r#"{"id":2,"subscribe":"x"}"#,
        r#"{"id":2,"history":{"channel":"x","limit":"ten"}}"#,
        r#"{"id":2,"subscribe":{"channel":"x","recover":"yes"}}"#,
        r#"{"id":-2,"subscribe":{"channel":"x"}}"#,
    ] {
        let mut client = server.connected_client().await?;
        expect_bad_request(&mut client, frame).await?;
        bystander.still_fine(&server).await?;
    }
    // Wrong types in the connect command itself.
    let mut client = server.client().await?;
    expect_bad_request(&mut client, r#"{"id":1,"connect":{"token":42}}"#).await?;
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn oversized_frame_closes_1009() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    let big = "x".repeat(70_000);
    let frame = json!({ "id": 2, "publish": { "channel": "calm", "data": big } }).to_string();
    let (code, reason) = client.send_raw_expect_close(&frame).await?;
    assert_eq!(code, 1009, "reason {reason:?}");
    // Nothing of the oversized publication reached the channel.
    bystander.still_fine(&server).await?;
    let skipped = bystander
        .client
        .skipped_pushes()
        .iter()
        .any(|p| p["pub"]["data"].is_string());
    assert!(!skipped, "the oversized publication was delivered");
    Ok(())
}

#[tokio::test]
async fn frame_just_under_the_limit_is_accepted() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("roomy").await?;
    let big = "y".repeat(60_000);
    client.publish("roomy", json!(big)).await?;
    let publication = client.next_pub("roomy").await?;
    assert_eq!(publication["data"].as_str().map(str::len), Some(60_000));
    Ok(())
}

#[tokio::test]
async fn invalid_channel_name_returns_107_and_keeps_the_connection() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    let too_long = "z".repeat(256);
    for channel in ["naïve", too_long.as_str(), "bad*name"] {
        for method in ["subscribe", "publish", "presence", "history"] {
            let mut params = json!({ "channel": channel });
            if method == "publish" {
                params["data"] = json!({});
            }
            let code = client.error_code(json!({ method: params })).await?;
            assert_eq!(code, 107, "{method} on {channel:?}");
        }
    }
    client.subscribe("valid").await?;
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn binary_garbage_closes_the_connection_without_hurting_others() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    let _ = client.send_binary(vec![0xff, 0x00, 0x13, 0x37]).await;
    let (code, reason) = client.expect_close().await?;
    assert!(
        code == 3501 || code == 3506 || code == 1003,
        "binary garbage closed with {code} {reason:?}"
    );
    bystander.still_fine(&server).await
}
