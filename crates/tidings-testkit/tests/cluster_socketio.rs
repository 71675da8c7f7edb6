//! Socket.IO polling without sticky sessions: every request of one Engine.IO session
//! alternates between two nodes joined by a real broker, and the session behaves as
//! if it had one server.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tidings_testkit::cluster::{Cluster, Engine};
use tidings_testkit::TidingsServer;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

fn polling_url(node: &TidingsServer) -> String {
    format!("{}/socket.io/?EIO=4&transport=polling", node.http_url())
}

async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let res = http().get(url).send().await?;
    Ok((res.status().as_u16(), res.text().await?))
}

async fn post(url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let res = http().post(url).body(body.to_string()).send().await?;
    Ok((res.status().as_u16(), res.text().await?))
}

/// Polls `url` until a packet starting with `prefix` arrives (answering server
/// pings on the way); returns it.
async fn poll_for(url: &str, ping_url: &str, prefix: &str) -> anyhow::Result<String> {
    for _ in 0..20 {
        let (status, body) = get(url).await?;
        if status != 200 {
            bail!("poll answered {status}: {body}");
        }
        for packet in body.split('\u{1e}') {
            if packet.starts_with(prefix) {
                return Ok(packet.to_string());
            }
            if packet == "2" {
                post(ping_url, "3").await?;
            }
        }
    }
    bail!("no packet starting with {prefix:?}")
}

async fn session_across_nodes(engine: Engine) -> anyhow::Result<()> {
    let cluster = Cluster::builder(engine)
        .nodes(2)
        .config(|c| {
            c["socketio"] = json!({ "enabled": true, "ping_interval": "2s" });
        })
        .start()
        .await?;
    cluster.wait_for_nodes(2, Duration::from_secs(15)).await?;
    let (a, b) = (cluster.node(0), cluster.node(1));

    // Handshake on A; every later request names the sid but goes to B or A in turn.
    let (status, open) = get(&polling_url(a)).await?;
    assert_eq!(status, 200, "{open}");
    let open: Value = serde_json::from_str(open.strip_prefix('0').context("open packet")?)?;
    let sid = open["sid"].as_str().context("sid")?.to_string();
    let on_a = format!("{}&sid={sid}", polling_url(a));
    let on_b = format!("{}&sid={sid}", polling_url(b));

    // CONNECT posted to B reaches the session on A; its answer is polled from B.
    let (status, body) = post(&on_b, "40").await?;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let connected = poll_for(&on_b, &on_a, "40").await?;
    let connected: Value = serde_json::from_str(&connected[2..])?;
    assert!(connected["sid"].is_string(), "{connected}");

    // Join a room through A with an ack; the ack comes back through B.
    let (status, _) = post(&on_a, r#"421["tidings:join",{"room":"across"}]"#).await?;
    assert_eq!(status, 200);
    let ack = poll_for(&on_b, &on_a, "431").await?;
    assert!(ack.contains("\"ok\":true"), "{ack}");

    // A publication through B's server API arrives on the session held by A,
    // collected by a poll sent to B.
    a.publish("across", json!({ "n": 1 })).await?;
    let event = poll_for(&on_b, &on_a, "42").await?;
    assert!(event.contains("{\"n\":1}"), "{event}");

    // A sid whose tag names no live node is unknown everywhere: the standard 400.
    let bogus = format!("{}&sid=zzzzzzzzzzzz{}", polling_url(b), "0".repeat(32));
    let (status, body) = get(&bogus).await?;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body)?;
    assert_eq!(body, json!({ "code": 1, "message": "Session ID unknown" }));
    Ok(())
}

#[tokio::test]
async fn socketio_polling_alternating_between_nodes_on_redis() -> anyhow::Result<()> {
    session_across_nodes(Engine::Redis).await
}

#[tokio::test]
async fn socketio_polling_alternating_between_nodes_on_nats() -> anyhow::Result<()> {
    session_across_nodes(Engine::Nats).await
}
