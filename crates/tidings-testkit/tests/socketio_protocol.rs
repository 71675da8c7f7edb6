//! The Engine.IO v4 / Socket.IO v5 behaviours a client relies on, checked on the
//! wire: heartbeat, close, the upgrade from polling to WebSocket, namespaces, binary
//! attachments and leaving with DISCONNECT.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_channel_options, open_config};
use tidings_testkit::TidingsServer;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> anyhow::Result<TidingsServer> {
    let mut config = open_config("proto-key", "proto-secret-of-at-least-32-bytes!!");
    config["channel"]["namespaces"] = json!([namespace("chat", open_channel_options())]);
    config["socketio"] = json!({
        "enabled": true,
        "ping_interval": "300ms",
        "ping_timeout": "200ms"
    });
    TidingsServer::builder()
        .config_json(config)
        .api_key("proto-key")
        .start()
        .await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn open_polling(server: &TidingsServer) -> anyhow::Result<(String, String)> {
    let base = format!("{}/socket.io/?EIO=4&transport=polling", server.http_url());
    let body = http().get(&base).send().await?.text().await?;
    let open: Value = serde_json::from_str(body.strip_prefix('0').context("open packet")?)?;
    let sid = open["sid"].as_str().context("sid")?.to_string();
    Ok((format!("{base}&sid={sid}"), sid))
}

async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let res = http().get(url).send().await?;
    Ok((res.status().as_u16(), res.text().await?))
}

async fn post(url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let res = http().post(url).body(body.to_string()).send().await?;
    Ok((res.status().as_u16(), res.text().await?))
}

async fn ws_connect(server: &TidingsServer, sid: Option<&str>) -> anyhow::Result<Ws> {
    let mut url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        server.addr()
    );
    if let Some(sid) = sid {
        url.push_str("&sid=");
        url.push_str(sid);
    }
    Ok(tokio_tungstenite::connect_async(&url).await?.0)
}

/// The next text message that is not a ping (pings are answered).
async fn ws_text(ws: &mut Ws) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .context("no message within the deadline")?
            .context("socket ended")??;
        match msg {
            Message::Text(t) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Message::Text(t) => return Ok(t.as_str().to_string()),
            Message::Binary(_) => bail!("unexpected binary message"),
            Message::Close(_) => bail!("socket closed"),
            _ => {}
        }
    }
}

/// A WebSocket session with the main namespace connected, returning its socket id.
async fn ws_session(server: &TidingsServer) -> anyhow::Result<(Ws, String)> {
    let mut ws = ws_connect(server, None).await?;
    let open = ws_text(&mut ws).await?;
    let open: Value = serde_json::from_str(&open[1..])?;
    assert_eq!(open["upgrades"], json!([]));
    ws.send(Message::text("40")).await?;
    let connect = ws_text(&mut ws).await?;
    let reply: Value = serde_json::from_str(connect.strip_prefix("40").context("CONNECT")?)?;
    Ok((ws, reply["sid"].as_str().context("sid")?.to_string()))
}

#[tokio::test]
async fn polling_heartbeat_runs_and_a_missing_pong_closes_the_session() -> anyhow::Result<()> {
    let server = server().await?;
    let (url, _) = open_polling(&server).await?;
    for _ in 0..3 {
        assert_eq!(get(&url).await?, (200, "2".to_string()));
        assert_eq!(post(&url, "3").await?, (200, "ok".to_string()));
    }
    // No pong this time: the session ends; the next poll after the close is refused.
    assert_eq!(get(&url).await?, (200, "2".to_string()));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(&url).await?;
        if status == 400 {
            assert_eq!(body, r#"{"code":1,"message":"Session ID unknown"}"#);
            break;
        }
        assert_eq!(
            body, "1",
            "only the close packet may come before the refusal"
        );
        assert!(
            Instant::now() < deadline,
            "the session outlived its ping timeout"
        );
    }
    Ok(())
}

#[tokio::test]
async fn websocket_heartbeat_runs_and_a_missing_pong_closes_the_socket() -> anyhow::Result<()> {
    let server = server().await?;
    let mut ws = ws_connect(&server, None).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), ws.next())
            .await
            .context("the socket outlived its ping timeout")?;
        match msg {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                pings += 1;
                if pings < 3 {
                    ws.send(Message::text("3")).await?;
                }
            }
            Some(Ok(Message::Text(t))) => assert!(t.as_str().starts_with('0')),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert_eq!(pings, 3, "three pings, the last unanswered");
    Ok(())
}

#[tokio::test]
async fn a_client_close_ends_the_pending_poll_with_noop() -> anyhow::Result<()> {
    let server = server().await?;
    // The poll and the close race; when the close wins, the poll is simply refused.
    // Try a few sessions until the poll was the pending one.
    for _ in 0..20 {
        let (url, _) = open_polling(&server).await?;
        let (pending, closed) = tokio::join!(get(&url), post(&url, "1"));
        assert_eq!(closed?, (200, "ok".to_string()));
        let pending = pending?;
        assert_eq!(
            get(&url).await?.0,
            400,
            "the session is gone after the close"
        );
        if pending.0 == 400 {
            continue;
        }
        assert_eq!(pending, (200, "6".to_string()));
        return Ok(());
    }
    bail!("the poll never got to be pending before the close")
}

#[tokio::test]
async fn upgrade_from_polling_probes_then_moves_the_session_to_websocket() -> anyhow::Result<()> {
    let server = server().await?;
    let (url, sid) = open_polling(&server).await?;
    post(&url, r#"40"#).await?;
    let (_, body) = get(&url).await?;
    assert!(body.starts_with("40{"), "{body}");
    post(&url, r#"421["tidings:join",{"room":"up"}]"#).await?;
    assert_eq!(get(&url).await?.1, r#"431[{"ok":true,"room":"up"}]"#);

    let mut ws = ws_connect(&server, Some(&sid)).await?;
    ws.send(Message::text("2probe")).await?;
    assert_eq!(ws_text(&mut ws).await?, "3probe");
    // Polls end with noop while the upgrade is under way.
    assert_eq!(get(&url).await?, (200, "6".to_string()));
    ws.send(Message::text("5")).await?;
    // From here polling is refused, the session itself goes on over the WebSocket.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&url).await?.0 != 400 {
        assert!(
            Instant::now() < deadline,
            "polling still answered after the upgrade"
        );
    }
    let again = http()
        .get(format!(
            "http://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
            server.addr()
        ))
        .send()
        .await?;
    assert_eq!(again.status().as_u16(), 400, "a second upgrade is refused");
    server.publish("up", json!({"via": "websocket"})).await?;
    assert_eq!(
        ws_text(&mut ws).await?,
        r#"42["message",{"via":"websocket"}]"#
    );
    Ok(())
}

#[tokio::test]
async fn namespaces_map_onto_tidings_namespaces() -> anyhow::Result<()> {
    let server = server().await?;
    let (mut ws, _) = ws_session(&server).await?;
    ws.send(Message::text("40/nowhere,")).await?;
    assert_eq!(
        ws_text(&mut ws).await?,
        r#"44/nowhere,{"message":"Invalid namespace"}"#
    );
    ws.send(Message::text("40/chat,")).await?;
    let connect = ws_text(&mut ws).await?;
    assert!(connect.starts_with("40/chat,{\"sid\":"), "{connect}");
    ws.send(Message::text(
        r#"40/chat,7["tidings:join",{"room":"general"}]"#,
    ))
    .await?;
    // That was a CONNECT with an array, which is malformed: the session closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => bail!("a malformed CONNECT left the session open"),
        }
    }

    let (mut ws, _) = ws_session(&server).await?;
    ws.send(Message::text("40/chat,")).await?;
    ws_text(&mut ws).await?;
    ws.send(Message::text(
        r#"42/chat,7["tidings:join",{"room":"general"}]"#,
    ))
    .await?;
    assert_eq!(
        ws_text(&mut ws).await?,
        r#"43/chat,7[{"ok":true,"room":"general"}]"#
    );
    // The room is the channel chat:general: the server API reaches it in /chat only.
    server.publish("chat:general", json!({"hi": 1})).await?;
    assert_eq!(ws_text(&mut ws).await?, r#"42/chat,["message",{"hi":1}]"#);
    Ok(())
}

#[tokio::test]
async fn binary_arguments_travel_as_attachments_and_as_base64_for_centrifugo() -> anyhow::Result<()>
{
    let server = server().await?;
    let (mut a, _) = ws_session(&server).await?;
    let (mut b, _) = ws_session(&server).await?;
    for ws in [&mut a, &mut b] {
        ws.send(Message::text(r#"421["tidings:join",{"room":"bin"}]"#))
            .await?;
        assert_eq!(ws_text(ws).await?, r#"431[{"ok":true,"room":"bin"}]"#);
    }
    let mut centrifugo = server.connected_client().await?;
    centrifugo.subscribe("bin").await?;

    a.send(Message::text(
        r#"451-2["tidings:publish",{"room":"bin","event":"file","args":[{"_placeholder":true,"num":0}]}]"#,
    ))
    .await?;
    a.send(Message::binary(vec![1u8, 2, 3])).await?;
    assert_eq!(ws_text(&mut a).await?, r#"432[{"offset":1,"ok":true}]"#);
    assert_eq!(
        ws_text(&mut b).await?,
        r#"451-["file",{"_placeholder":true,"num":0}]"#
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let attachment = loop {
        match tokio::time::timeout_at(deadline.into(), b.next()).await? {
            Some(Ok(Message::Binary(bytes))) => break bytes,
            Some(Ok(_)) => {}
            _ => bail!("no attachment"),
        }
    };
    assert_eq!(&attachment[..], &[1, 2, 3]);
    let publication = centrifugo.next_pub("bin").await?;
    assert_eq!(
        publication["data"],
        json!({"event": "file", "args": [{"$binary": "AQID"}]})
    );
    Ok(())
}

#[tokio::test]
async fn disconnecting_a_namespace_leaves_its_rooms() -> anyhow::Result<()> {
    let server = server().await?;
    let (mut a, a_id) = ws_session(&server).await?;
    let (mut b, b_id) = ws_session(&server).await?;
    for ws in [&mut a, &mut b] {
        ws.send(Message::text(r#"421["tidings:join",{"room":"lobby"}]"#))
            .await?;
        ws_text(ws).await?;
    }
    let members = |reply: &str| -> anyhow::Result<Vec<String>> {
        let v: Value = serde_json::from_str(reply.strip_prefix("433").context("ack 3")?)?;
        let mut ids: Vec<String> = v[0]["members"]
            .as_array()
            .context("members")?
            .iter()
            .map(|m| m["client"].as_str().unwrap_or_default().to_string())
            .collect();
        ids.sort();
        Ok(ids)
    };
    a.send(Message::text(r#"423["tidings:presence",{"room":"lobby"}]"#))
        .await?;
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(members(&ws_text(&mut a).await?)?, both);
    b.send(Message::text("41")).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        a.send(Message::text(r#"423["tidings:presence",{"room":"lobby"}]"#))
            .await?;
        if members(&ws_text(&mut a).await?)? == vec![a_id.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b is still present after DISCONNECT"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_forged_recovery_offset_joins_only_permitted_rooms_and_is_not_recovered(
) -> anyhow::Result<()> {
    let mut config = open_config("proto-key", "proto-secret-of-at-least-32-bytes!!");
    config["socketio"] = json!({ "enabled": true, "connection_state_recovery": true });
    let server = TidingsServer::builder()
        .config_json(config)
        .api_key("proto-key")
        .start()
        .await?;
    use base64::Engine as _;
    let offset =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json!([
            ["$secret", "e", 0],
            ["open", "e", 0]
        ]))?);
    let mut ws = ws_connect(&server, None).await?;
    ws_text(&mut ws).await?;
    ws.send(Message::text(format!(
        r#"40{{"pid":"forged","offset":"{offset}"}}"#
    )))
    .await?;
    let connect = ws_text(&mut ws).await?;
    let reply: Value = serde_json::from_str(connect.strip_prefix("40").context("CONNECT")?)?;
    assert_ne!(reply["pid"], json!("forged"), "not reported as recovered");
    assert!(reply["pid"].is_string(), "a fresh pid: {reply}");
    // Joins are done before the CONNECT reply: presence shows them at once.
    let members = |v: Value| v["presence"].as_object().map_or(0, serde_json::Map::len);
    let secret = server
        .api_ok("presence", json!({"channel": "$secret"}))
        .await?;
    assert_eq!(members(secret), 0, "a $ channel needs a token");
    let open = server
        .api_ok("presence", json!({"channel": "open"}))
        .await?;
    assert_eq!(members(open), 1, "a permitted room is joined again");
    Ok(())
}

#[tokio::test]
async fn configured_and_server_api_subscriptions_join_rooms() -> anyhow::Result<()> {
    const SECRET: &str = "proto-secret-of-at-least-32-bytes!!";
    let mut config = open_config("proto-key", SECRET);
    config["socketio"] = json!({ "enabled": true, "subscriptions": ["news"] });
    let server = TidingsServer::builder()
        .config_json(config)
        .api_key("proto-key")
        .start()
        .await?;
    let token = tidings_testkit::hs256_token(SECRET, "ann", None)?;
    let mut ws = ws_connect(&server, None).await?;
    ws_text(&mut ws).await?;
    ws.send(Message::text(format!(r#"40{{"token":"{token}"}}"#)))
        .await?;
    assert!(ws_text(&mut ws).await?.starts_with("40{"));
    // socketio.subscriptions: in "news" from the start.
    server.publish("news", json!({"headline": 1})).await?;
    assert_eq!(ws_text(&mut ws).await?, r#"42["message",{"headline":1}]"#);
    // Server API subscribe of the user: joins "alerts".
    server
        .api_ok("subscribe", json!({"user": "ann", "channel": "alerts"}))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let presence = server
            .api_ok("presence", json!({"channel": "alerts"}))
            .await?;
        if presence["presence"]
            .as_object()
            .is_some_and(|m| m.len() == 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server API subscribe never joined"
        );
    }
    server
        .publish("alerts", json!({"event": "alert", "args": ["fire"]}))
        .await?;
    assert_eq!(ws_text(&mut ws).await?, r#"42["alert","fire"]"#);
    // Server API unsubscribe: leaves it again.
    server
        .api_ok("unsubscribe", json!({"user": "ann", "channel": "news"}))
        .await?;
    loop {
        let presence = server
            .api_ok("presence", json!({"channel": "news"}))
            .await?;
        if presence["presence"]
            .as_object()
            .is_some_and(|m| m.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server API unsubscribe never left"
        );
    }
    Ok(())
}
