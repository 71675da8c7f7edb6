//! Newline-delimited batching in both directions: many commands in one
//! frame, and many replies or pushes in one frame.

use serde_json::{json, Value};
use tidings_testkit::{TidingsServer, WsClient};

#[tokio::test]
async fn many_commands_in_one_frame_get_every_reply() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.client().await?;
    let mut commands = vec![json!({ "id": 1, "connect": {} })];
    for i in 0..20 {
        commands.push(json!({ "id": 2 + i, "subscribe": { "channel": format!("ch-{i}") } }));
    }
    commands.push(json!({ "id": 22, "publish": { "channel": "ch-0", "data": "batched" } }));
    commands.push(json!({ "id": 23, "presence_stats": { "channel": "ch-0" } }));
    client.send_batch(&commands).await?;

    for id in 1..=23u64 {
        let reply = client.wait_reply(id).await?;
        assert!(reply.get("error").is_none(), "command {id}: {reply}");
    }
    Ok(())
}

#[tokio::test]
async fn replies_are_in_command_order_within_a_batch() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("order").await?;
    let commands: Vec<Value> = (10..40)
        .map(|id| json!({ "id": id, "history": { "channel": "order", "limit": 0 } }))
        .collect();
    client.send_batch(&commands).await?;
    let mut seen = Vec::new();
    while seen.len() < commands.len() {
        let reply = client.recv_reply().await?;
        if let Some(id) = reply.get("id").and_then(Value::as_u64) {
            seen.push(id);
        }
    }
    assert_eq!(seen, (10..40).collect::<Vec<u64>>());
    Ok(())
}

#[tokio::test]
async fn replies_to_a_batch_share_frames() -> anyhow::Result<()> {
    const COMMANDS: u64 = 600;
    // More commands at once than the default command budget lets through.
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_BURST", "1000")
        .start()
        .await?;
    let pad = "r".repeat(200);
    server.publish("big", json!({ "pad": pad })).await?;

    let mut observer = server.connected_client().await?;
    observer.subscribe("done").await?;
    let mut client = WsClient::open_with_recv_buffer(&server.ws_url(), 4096).await?;
    client.connect(json!({})).await?;
    client.subscribe("big").await?;

    let mut commands: Vec<Value> = (0..COMMANDS)
        .map(|i| json!({ "id": 100 + i, "history": { "channel": "big", "limit": 1 } }))
        .collect();
    commands.push(
        json!({ "id": 100 + COMMANDS, "publish": { "channel": "done", "data": "all queued" } }),
    );
    client.send_batch(&commands).await?;
    // Commands run in order, so once this publication arrives every history
    // reply is already queued for the client that has not read anything yet.
    observer.next_pub("done").await?;

    let before = client.frames_received();
    for i in 0..=COMMANDS {
        let reply = client.wait_reply(100 + i).await?;
        assert!(reply.get("error").is_none(), "{reply}");
    }
    let frames = client.frames_received() - before;
    assert!(
        (frames as u64) < COMMANDS,
        "{COMMANDS} replies took {frames} frames: replies are not batched"
    );
    Ok(())
}

#[tokio::test]
async fn pushes_share_frames_when_the_client_lags() -> anyhow::Result<()> {
    const PUBLICATIONS: u64 = 500;
    let server = TidingsServer::start().await?;
    let mut client = WsClient::open_with_recv_buffer(&server.ws_url(), 4096).await?;
    client.connect(json!({})).await?;
    client.subscribe("burst").await?;
    let pad = "b".repeat(200);
    let commands: Vec<Value> = (1..=PUBLICATIONS)
        .map(|n| json!({ "publish": { "channel": "burst", "data": { "n": n, "pad": pad } } }))
        .collect();
    let (status, reply) = server.api("batch", json!({ "commands": commands })).await?;
    assert_eq!(status, 200, "{reply}");

    let before = client.frames_received();
    for n in 1..=PUBLICATIONS {
        let publication = client.next_pub("burst").await?;
        assert_eq!(publication["data"]["n"], json!(n));
    }
    let frames = client.frames_received() - before;
    assert!(
        (frames as u64) < PUBLICATIONS,
        "{PUBLICATIONS} publications took {frames} frames: pushes are not batched"
    );
    Ok(())
}
