//! A client that stops reading is closed with 3008 "slow" once its bounded
//! queue overflows; other subscribers keep receiving everything.

use std::time::Duration;

use serde_json::json;
use tidings_testkit::{TidingsServer, WsClient};

/// Publications per burst (32 KiB, half the queue bound).
const BURST: u64 = 8;
/// Give up after this many (16 MiB, four times the largest socket send buffer).
const MAX_PUBLICATIONS: u64 = 4096;
const PAYLOAD: usize = 4096;

#[tokio::test]
async fn slow_reader_is_closed_3008_while_others_keep_receiving() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_QUEUE_MAX_SIZE", "65536")
        // Long enough that the close frame can wait for the slow reader to
        // come back and read its backlog.
        .env("TIDINGS_WEBSOCKET_WRITE_TIMEOUT", "10s")
        .start()
        .await?;

    // A small receive buffer so the kernel cannot soak up the backlog.
    let mut slow = WsClient::open_with_recv_buffer(&server.ws_url(), 4096).await?;
    slow.connect(json!({})).await?;
    slow.subscribe("firehose").await?;

    let mut fast = server.connected_client().await?;
    fast.subscribe("firehose").await?;

    // Bursts of 32 KiB, each read by the fast client before the next one:
    // it never has more than half its queue outstanding, while the slow
    // client, which reads nothing, falls further behind with every burst
    // until the kernel's socket buffers and then its queue are full.
    let payload = "p".repeat(PAYLOAD);
    let mut published = 0u64;
    loop {
        let commands: Vec<_> = (published + 1..=published + BURST)
            .map(|n| json!({ "publish": { "channel": "firehose", "data": { "n": n, "pad": payload } } }))
            .collect();
        let (status, reply) = server.api("batch", json!({ "commands": commands })).await?;
        assert_eq!(status, 200, "{reply}");
        for _ in 0..BURST {
            published += 1;
            let publication = fast.next_pub("firehose").await?;
            assert_eq!(publication["offset"], json!(published), "{publication}");
        }
        let stats = server
            .api_ok("presence_stats", json!({ "channel": "firehose" }))
            .await?;
        if stats["num_clients"] == json!(1) {
            break;
        }
        assert!(
            published < MAX_PUBLICATIONS,
            "{published} publications of {PAYLOAD} bytes and the slow reader is still subscribed"
        );
    }

    // The slow one finds the backlog it was sent, then the close.
    let (code, reason) = slow.expect_close_within(Duration::from_secs(20)).await?;
    assert_eq!(code, 3008, "reason {reason:?}");
    assert_eq!(reason, "slow");

    // The fast subscriber is still healthy.
    server.publish("firehose", json!({ "n": "last" })).await?;
    let publication = fast.next_pub("firehose").await?;
    assert_eq!(publication["offset"], json!(published + 1));
    Ok(())
}

#[tokio::test]
async fn a_reader_that_keeps_up_is_never_closed() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_QUEUE_MAX_SIZE", "65536")
        .start()
        .await?;
    let mut client = server.connected_client().await?;
    client.subscribe("steady").await?;
    let payload = "q".repeat(1024);
    // Far more than the queue bound in total, but read as it comes.
    for n in 1..=200u64 {
        server
            .publish("steady", json!({ "n": n, "pad": payload }))
            .await?;
        let publication = client.next_pub("steady").await?;
        assert_eq!(publication["offset"], json!(n));
    }
    assert!(client.close_status().is_none());
    Ok(())
}
