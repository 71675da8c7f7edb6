//! The server HTTP API: authorization, envelopes and every method.

use serde_json::{json, Value};
use tidings_testkit::{hs256_token, TidingsServer, WsClient};

const API_KEY: &str = "api-test-key";
const SECRET: &str = "api-test-secret";

async fn server() -> anyhow::Result<TidingsServer> {
    TidingsServer::builder()
        .env("TIDINGS_HTTP_API_KEY", API_KEY)
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .start()
        .await
}

async fn user(server: &TidingsServer, sub: &str) -> anyhow::Result<WsClient> {
    let token = hs256_token(SECRET, sub, None)?;
    server.connected_client_with_token(&token).await
}

fn offset(v: &Value) -> u64 {
    v["offset"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn api_without_or_with_wrong_key_returns_401() -> anyhow::Result<()> {
    let server = server().await?;
    let body = r#"{"channel":"x","data":{}}"#;
    let (status, _) = server.api_raw("publish", body, &[]).await?;
    assert_eq!(status, 401, "no key");
    let (status, _) = server
        .api_raw("publish", body, &[("X-API-Key", "wrong")])
        .await?;
    assert_eq!(status, 401, "wrong X-API-Key");
    let (status, _) = server
        .api_raw("publish", body, &[("Authorization", "apikey wrong")])
        .await?;
    assert_eq!(status, 401, "wrong Authorization apikey");
    let (status, _) = server
        .api_raw(
            "publish",
            body,
            &[("Authorization", &format!("Bearer {API_KEY}"))],
        )
        .await?;
    assert_eq!(status, 401, "a bearer token is not an API key");
    Ok(())
}

#[tokio::test]
async fn api_accepts_x_api_key_and_authorization_apikey() -> anyhow::Result<()> {
    let server = server().await?;
    let body = r#"{"channel":"x","data":{"n":1}}"#;
    for header in [
        ("X-API-Key", API_KEY.to_owned()),
        ("Authorization", format!("apikey {API_KEY}")),
    ] {
        let (status, text) = server
            .api_raw("publish", body, &[(header.0, &header.1)])
            .await?;
        assert_eq!(status, 200, "{header:?}: {text}");
        let reply: Value = serde_json::from_str(&text)?;
        assert!(reply.get("result").is_some(), "{header:?}: {text}");
        assert!(reply.get("error").is_none(), "{header:?}: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn api_unknown_method_returns_404() -> anyhow::Result<()> {
    let server = server().await?;
    let (status, _) = server
        .api_raw("no_such_method", "{}", &[("X-API-Key", API_KEY)])
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn api_unparsable_body_returns_400() -> anyhow::Result<()> {
    let server = server().await?;
    let (status, _) = server
        .api_raw("publish", "{\"channel\": ", &[("X-API-Key", API_KEY)])
        .await?;
    assert_eq!(status, 400);
    Ok(())
}

#[tokio::test]
async fn api_publish_returns_position_and_reaches_subscribers() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("news").await?;
    let (status, reply) = server
        .api(
            "publish",
            json!({ "channel": "news", "data": { "text": "hello" } }),
        )
        .await?;
    assert_eq!(status, 200);
    let result = &reply["result"];
    assert_eq!(offset(result), 1, "{reply}");
    assert!(
        result["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{reply}"
    );
    let publication = client.next_pub("news").await?;
    assert_eq!(publication["data"], json!({ "text": "hello" }));
    Ok(())
}

#[tokio::test]
async fn api_publish_to_unknown_namespace_returns_error_102() -> anyhow::Result<()> {
    let server = server().await?;
    let (status, reply) = server
        .api("publish", json!({ "channel": "nope:chat", "data": {} }))
        .await?;
    assert_eq!(status, 200, "errors travel in the body: {reply}");
    assert_eq!(reply["error"]["code"], json!(102), "{reply}");
    assert!(reply.get("result").is_none(), "{reply}");
    Ok(())
}

#[tokio::test]
async fn api_publish_with_invalid_channel_returns_error_107() -> anyhow::Result<()> {
    let server = server().await?;
    let (status, reply) = server
        .api("publish", json!({ "channel": "a".repeat(300), "data": {} }))
        .await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["error"]["code"], json!(107), "{reply}");
    Ok(())
}

#[tokio::test]
async fn api_broadcast_publishes_into_every_channel() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("b1").await?;
    client.subscribe("b2").await?;
    let result = server
        .api_ok(
            "broadcast",
            json!({ "channels": ["b1", "b2"], "data": { "all": true } }),
        )
        .await?;
    let responses = result["responses"].as_array().cloned().unwrap_or_default();
    assert_eq!(responses.len(), 2, "{result}");
    for response in &responses {
        assert!(response.get("error").is_none(), "{result}");
        assert_eq!(offset(&response["result"]), 1, "{result}");
    }
    for channel in ["b1", "b2"] {
        let publication = client.next_pub(channel).await?;
        assert_eq!(publication["data"], json!({ "all": true }));
    }
    Ok(())
}

#[tokio::test]
async fn api_subscribe_pushes_server_side_subscription() -> anyhow::Result<()> {
    let server = server().await?;
    let mut dave = user(&server, "dave").await?;
    server
        .api_ok(
            "subscribe",
            json!({ "user": "dave", "channel": "alerts", "info": { "role": "admin" } }),
        )
        .await?;
    let push = dave.next_push_of("subscribe", "alerts").await?;
    assert!(push["subscribe"].is_object(), "{push}");

    server.publish("alerts", json!({ "level": "high" })).await?;
    let publication = dave.next_pub("alerts").await?;
    assert_eq!(publication["data"], json!({ "level": "high" }));

    let presence = server
        .api_ok("presence", json!({ "channel": "alerts" }))
        .await?;
    let id = dave.client_id().unwrap_or_default();
    assert_eq!(
        presence["presence"][id]["user"],
        json!("dave"),
        "{presence}"
    );
    assert_eq!(
        presence["presence"][id]["chan_info"],
        json!({ "role": "admin" }),
        "{presence}"
    );
    Ok(())
}

#[tokio::test]
async fn api_unsubscribe_sends_unsubscribe_push() -> anyhow::Result<()> {
    let server = server().await?;
    let mut dave = user(&server, "dave").await?;
    dave.subscribe("topic").await?;
    dave.subscribe("marker").await?;
    server
        .api_ok("unsubscribe", json!({ "user": "dave", "channel": "topic" }))
        .await?;
    let push = dave.next_push_of("unsubscribe", "topic").await?;
    assert_eq!(push["unsubscribe"]["code"], json!(2000), "{push}");
    assert_eq!(
        push["unsubscribe"]["reason"],
        json!("server unsubscribe"),
        "{push}"
    );

    server.publish("topic", json!("gone")).await?;
    server.publish("marker", json!("here")).await?;
    let publication = dave.next_pub("marker").await?;
    assert_eq!(publication["data"], json!("here"));
    let leaked = dave
        .skipped_pushes()
        .iter()
        .any(|p| p["channel"] == json!("topic") && p.get("pub").is_some());
    assert!(!leaked, "publication after server unsubscribe");
    Ok(())
}

#[tokio::test]
async fn api_disconnect_closes_every_connection_of_the_user_with_given_code() -> anyhow::Result<()>
{
    let server = server().await?;
    let mut dave1 = user(&server, "dave").await?;
    let mut dave2 = user(&server, "dave").await?;
    let mut erin = user(&server, "erin").await?;
    erin.subscribe("still").await?;
    server
        .api_ok(
            "disconnect",
            json!({ "user": "dave", "disconnect": { "code": 4321, "reason": "kicked" } }),
        )
        .await?;
    for client in [&mut dave1, &mut dave2] {
        assert_eq!(client.expect_close().await?, (4321, "kicked".to_owned()));
    }
    server.publish("still", json!(1)).await?;
    assert_eq!(erin.next_pub("still").await?["data"], json!(1));
    Ok(())
}

#[tokio::test]
async fn api_disconnect_without_code_uses_3503_force_disconnect() -> anyhow::Result<()> {
    let server = server().await?;
    let mut dave = user(&server, "dave").await?;
    server
        .api_ok("disconnect", json!({ "user": "dave" }))
        .await?;
    let (code, reason) = dave.expect_close().await?;
    assert_eq!(code, 3503, "reason {reason:?}");
    Ok(())
}

#[tokio::test]
async fn api_presence_and_presence_stats() -> anyhow::Result<()> {
    let server = server().await?;
    let mut a = user(&server, "ann").await?;
    let mut b = user(&server, "ben").await?;
    a.subscribe("room").await?;
    b.subscribe("room").await?;
    let presence = server
        .api_ok("presence", json!({ "channel": "room" }))
        .await?;
    let entries = presence["presence"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries.len(), 2, "{presence}");
    let a_id = a.client_id().unwrap_or_default();
    assert_eq!(entries[a_id]["client"], json!(a_id), "{presence}");
    assert_eq!(entries[a_id]["user"], json!("ann"), "{presence}");

    let stats = server
        .api_ok("presence_stats", json!({ "channel": "room" }))
        .await?;
    assert_eq!(stats["num_clients"], json!(2), "{stats}");
    assert_eq!(stats["num_users"], json!(2), "{stats}");
    Ok(())
}

#[tokio::test]
async fn api_history_and_history_remove() -> anyhow::Result<()> {
    let server = server().await?;
    for n in 1..=4 {
        server.publish("log", json!({ "n": n })).await?;
    }
    let position = server
        .api_ok("history", json!({ "channel": "log" }))
        .await?;
    assert_eq!(offset(&position), 4, "{position}");
    assert!(
        position["publications"]
            .as_array()
            .is_none_or(|p| p.is_empty()),
        "no limit means position only: {position}"
    );
    let history = server
        .api_ok(
            "history",
            json!({ "channel": "log", "limit": 2, "reverse": true }),
        )
        .await?;
    let offsets: Vec<u64> = history["publications"]
        .as_array()
        .map(|l| l.iter().map(offset).collect())
        .unwrap_or_default();
    assert_eq!(offsets, vec![4, 3], "{history}");

    server
        .api_ok("history_remove", json!({ "channel": "log" }))
        .await?;
    let after = server
        .api_ok("history", json!({ "channel": "log", "limit": -1 }))
        .await?;
    assert!(
        after["publications"]
            .as_array()
            .is_none_or(|p| p.is_empty()),
        "{after}"
    );
    assert_eq!(offset(&after), 4, "the stream position is kept: {after}");
    assert_eq!(after["epoch"], position["epoch"], "{after}");
    Ok(())
}

#[tokio::test]
async fn api_channels_lists_active_channels_with_client_counts() -> anyhow::Result<()> {
    let server = server().await?;
    let mut a = server.connected_client().await?;
    let mut b = server.connected_client().await?;
    a.subscribe("busy").await?;
    b.subscribe("busy").await?;
    b.subscribe("quiet").await?;
    let result = server.api_ok("channels", json!({})).await?;
    assert_eq!(
        result["channels"]["busy"]["num_clients"],
        json!(2),
        "{result}"
    );
    assert_eq!(
        result["channels"]["quiet"]["num_clients"],
        json!(1),
        "{result}"
    );
    let filtered = server
        .api_ok("channels", json!({ "pattern": "bu*" }))
        .await?;
    let names: Vec<&String> = filtered["channels"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["busy"], "{filtered}");
    Ok(())
}

#[tokio::test]
async fn api_info_reports_this_node() -> anyhow::Result<()> {
    let server = server().await?;
    let mut a = user(&server, "ann").await?;
    a.subscribe("one").await?;
    let info = server.api_ok("info", json!({})).await?;
    let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 1, "{info}");
    let node = &nodes[0];
    assert!(
        node["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{info}"
    );
    assert!(node["name"].is_string(), "{info}");
    assert_eq!(node["num_clients"], json!(1), "{info}");
    assert_eq!(node["num_users"], json!(1), "{info}");
    assert_eq!(node["num_channels"], json!(1), "{info}");
    Ok(())
}

#[tokio::test]
async fn api_batch_runs_commands_in_order_with_per_command_errors() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("batch").await?;
    let (status, reply) = server
        .api(
            "batch",
            json!({ "commands": [
                { "publish": { "channel": "batch", "data": { "n": 1 } } },
                { "publish": { "channel": "unknown:x", "data": {} } },
                { "publish": { "channel": "batch", "data": { "n": 2 } } },
                { "presence_stats": { "channel": "batch" } }
            ] }),
        )
        .await?;
    assert_eq!(status, 200, "{reply}");
    let replies = reply["replies"].as_array().cloned().unwrap_or_default();
    assert_eq!(replies.len(), 4, "{reply}");
    assert_eq!(offset(&replies[0]["publish"]), 1, "{reply}");
    assert_eq!(replies[1]["error"]["code"], json!(102), "{reply}");
    assert_eq!(offset(&replies[2]["publish"]), 2, "{reply}");
    assert_eq!(
        replies[3]["presence_stats"]["num_clients"],
        json!(1),
        "{reply}"
    );
    for n in 1..=2 {
        assert_eq!(client.next_pub("batch").await?["data"]["n"], json!(n));
    }
    Ok(())
}

/// `/api/publish` delivers `data` byte for byte: keys keep their order (the body is
/// not re-serialised through a parsed value), and so does `/api/broadcast`.
#[tokio::test]
async fn published_data_keeps_its_key_order() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = user(&server, "reader").await?;
    client.subscribe("order").await?;
    let data = r#"{"b":1,"a":2,"nested":{"z":0,"y":[1,{"d":3,"c":4}]}}"#;
    let key = server.api_key().unwrap_or_default().to_owned();
    for (method, body) in [
        ("publish", format!(r#"{{"channel":"order","data":{data}}}"#)),
        (
            "broadcast",
            format!(r#"{{"channels":["order"],"data":{data}}}"#),
        ),
    ] {
        let (status, answer) = server
            .api_raw(method, &body, &[("X-API-Key", key.as_str())])
            .await?;
        anyhow::ensure!(
            status == 200 && answer.contains("result"),
            "{method}: {status} {answer}"
        );
        let frame = loop {
            let frame = client.recv_frame().await?;
            if frame.contains("\"pub\"") {
                break frame;
            }
        };
        anyhow::ensure!(
            frame.contains(&format!(r#""data":{data}"#)),
            "{method}: keys reordered: {frame}"
        );
    }
    Ok(())
}
