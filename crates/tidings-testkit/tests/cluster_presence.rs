//! Presence entries outlive the engine's presence TTL for as long as their client is
//! connected, whichever front door it came through, and go when the client goes.
//!
//! Regression: Socket.IO sockets used to drop out of presence one TTL after they
//! joined on Redis and NATS, because the Socket.IO session kept its own copy of the
//! join lifecycle and skipped the presence hold that the node's refresh timer reads.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidings_testkit::cluster::{merge, Cluster, Engine};
use tidings_testkit::{per_engine_tests, Transport};
use tokio_tungstenite::tungstenite::Message;

/// The engine's presence TTL in this test; the node refreshes every second.
const PRESENCE_TTL: Duration = Duration::from_secs(3);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn short_ttl(engine: Engine, config: &mut Value) {
    let ttl = format!("{}s", PRESENCE_TTL.as_secs());
    let patch = match engine {
        Engine::Redis | Engine::RedisShards | Engine::RedisSentinel | Engine::RedisCluster => {
            json!({"engine": {"redis": {"presence_ttl": ttl}}})
        }
        Engine::Nats => json!({"engine": {"nats": {"presence_ttl": ttl}}}),
    };
    merge(config, &patch);
    config["socketio"] = json!({ "enabled": true });
}

/// The next Engine.IO text message, answering pings on the way.
async fn ws_text(ws: &mut Ws) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .context("no message within the deadline")?
            .context("socket ended")??;
        match msg {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Message::Text(t) => return Ok(t.as_str().to_string()),
            Message::Close(_) => bail!("socket closed"),
            _ => {}
        }
    }
}

/// A Socket.IO socket in `room`: returns the socket and its client id (the sid of
/// the CONNECT reply, which presence lists).
async fn socketio_member(base: &str, room: &str) -> anyhow::Result<(Ws, String)> {
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        base.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    let open = ws_text(&mut ws).await?;
    ensure!(open.starts_with('0'), "open packet: {open}");
    ws.send(Message::text("40")).await?;
    let connect = ws_text(&mut ws).await?;
    let reply: Value = serde_json::from_str(connect.strip_prefix("40").context("CONNECT")?)?;
    let id = reply["sid"].as_str().context("sid")?.to_string();
    let join = json!(["tidings:join", {"room": room}]);
    ws.send(Message::text(format!("421{join}"))).await?;
    loop {
        let packet = ws_text(&mut ws).await?;
        if let Some(ack) = packet.strip_prefix("431") {
            ensure!(ack.contains("\"ok\":true"), "join ack {ack}");
            return Ok((ws, id));
        }
    }
}

/// The client ids the API of a node lists in `channel`.
async fn present(
    node: &tidings_testkit::TidingsServer,
    channel: &str,
) -> anyhow::Result<Vec<String>> {
    let result = node
        .api_ok("presence", json!({ "channel": channel }))
        .await?;
    let map = result["presence"].as_object().context("presence map")?;
    let mut ids: Vec<String> = map.keys().cloned().collect();
    ids.sort();
    Ok(ids)
}

async fn both_front_doors_stay_in_presence_past_the_ttl(engine: Engine) -> anyhow::Result<()> {
    let cluster = Cluster::builder(engine)
        .nodes(2)
        .config(|c| short_ttl(engine, c))
        .start()
        .await?;
    cluster.wait_for_nodes(2, Duration::from_secs(15)).await?;
    let (a, b) = (cluster.node(0), cluster.node(1));

    let mut centrifugo = a.connect_over(Transport::WebSocket).await?;
    centrifugo.subscribe("lobby").await?;
    let centrifugo_id = centrifugo.client_id().context("client id")?.to_owned();
    let (mut sio, sio_id) = socketio_member(&b.http_url(), "lobby").await?;
    let mut expected = vec![centrifugo_id.clone(), sio_id.clone()];
    expected.sort();

    // Keep the Socket.IO socket answering pings while the test waits.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop_rx => return Ok::<Ws, anyhow::Error>(sio),
                msg = sio.next() => match msg {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                        sio.send(Message::text("3")).await?;
                    }
                    Some(Ok(_)) => {}
                    _ => bail!("the Socket.IO socket ended"),
                }
            }
        }
    });

    // Three TTLs and more: both clients are listed by both nodes every time.
    let started = Instant::now();
    for check in 1..=4 {
        let at = PRESENCE_TTL.mul_f32(check as f32 * 0.9) + Duration::from_millis(500);
        tokio::time::sleep_until((started + at).into()).await;
        for (name, node) in [("A", a), ("B", b)] {
            let ids = present(node, "lobby").await?;
            ensure!(
                ids == expected,
                "check {check} ({:?} after joining): node {name} lists {ids:?}, expected {expected:?}",
                started.elapsed()
            );
        }
    }

    // The Socket.IO socket goes: it leaves presence (well before a TTL).
    let _ = stop_tx.send(());
    let mut sio = keeper.await??;
    sio.close(None).await?;
    drop(sio);
    wait_for(a, "lobby", vec![centrifugo_id.clone()]).await?;
    // And so does the Centrifugo client.
    drop(centrifugo);
    wait_for(b, "lobby", Vec::new()).await?;
    Ok(())
}

/// Polls a node's presence of `channel` until it is `want`, for at most a TTL.
async fn wait_for(
    node: &tidings_testkit::TidingsServer,
    channel: &str,
    want: Vec<String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PRESENCE_TTL;
    loop {
        let ids = present(node, channel).await?;
        if ids == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("presence still {ids:?}, expected {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

per_engine_tests!(both_front_doors_stay_in_presence_past_the_ttl);
