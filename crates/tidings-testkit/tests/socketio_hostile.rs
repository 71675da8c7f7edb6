//! Hostile input at the Socket.IO front door: every abuse gets the standard
//! Engine.IO answer (400 with `{"code":N,"message":...}`, 413 past `maxPayload`) and
//! ends only the offending session, while a bystander session on the same node keeps
//! receiving its room's publications.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tidings_testkit::profile::open_config;
use tidings_testkit::TidingsServer;

const MAX_PAYLOAD: usize = 4096;

async fn server() -> anyhow::Result<TidingsServer> {
    let mut config = open_config("hostile-key", "hostile-secret-of-at-least-32-bytes!");
    config["socketio"] = json!({
        "enabled": true,
        "max_payload": MAX_PAYLOAD,
        "max_attachments": 4,
        "ping_interval": "2s",
        "ping_timeout": "1s"
    });
    TidingsServer::builder()
        .config_json(config)
        .api_key("hostile-key")
        .start()
        .await
}

/// An Engine.IO session driven by hand over HTTP long polling.
struct Poller {
    http: reqwest::Client,
    url: String,
    sid: String,
}

impl Poller {
    async fn open(server: &TidingsServer) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let base = format!("{}/socket.io/?EIO=4&transport=polling", server.http_url());
        let body = http.get(&base).send().await?.text().await?;
        let open: Value = serde_json::from_str(body.strip_prefix('0').context("open packet")?)?;
        assert_eq!(open["upgrades"], json!(["websocket"]));
        assert_eq!(open["maxPayload"], json!(MAX_PAYLOAD));
        assert_eq!(open["pingInterval"], json!(2000));
        assert_eq!(open["pingTimeout"], json!(1000));
        let sid = open["sid"].as_str().context("sid")?.to_string();
        Ok(Self {
            url: format!("{base}&sid={sid}"),
            http,
            sid,
        })
    }

    async fn get(&self) -> anyhow::Result<(u16, String)> {
        let res = self.http.get(&self.url).send().await?;
        Ok((res.status().as_u16(), res.text().await?))
    }

    async fn post(&self, body: impl Into<reqwest::Body>) -> anyhow::Result<(u16, String)> {
        let res = self.http.post(&self.url).body(body).send().await?;
        Ok((res.status().as_u16(), res.text().await?))
    }

    /// Polls until a payload holds a packet starting with `prefix`, answering pings.
    async fn expect(&self, prefix: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let (status, body) = self.get().await?;
            if status != 200 {
                bail!("poll answered {status}: {body}");
            }
            for packet in body.split('\x1e') {
                if packet == "2" {
                    self.post("3").await?;
                } else if packet.starts_with(prefix) {
                    return Ok(packet.to_string());
                }
            }
        }
        bail!("no packet starting with {prefix:?} within the deadline")
    }

    /// Polls until the session is gone (400 "Session ID unknown"), answering pings.
    /// A `close` packet may come first.
    async fn expect_gone(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let (status, body) = self.get().await?;
            if status == 400 {
                let err: Value = serde_json::from_str(&body)?;
                assert_eq!(err, json!({"code": 1, "message": "Session ID unknown"}));
                return Ok(());
            }
            if body == "2" {
                self.post("3").await?;
            }
        }
        bail!("session {} still open", self.sid)
    }
}

/// A Socket.IO client in room `calm`, to show that abuse elsewhere leaves it alone.
async fn bystander(server: &TidingsServer) -> anyhow::Result<Poller> {
    let p = Poller::open(server).await?;
    assert_eq!(p.post("40").await?, (200, "ok".to_string()));
    let connect = p.expect("40").await?;
    assert!(connect.contains("\"sid\""), "{connect}");
    p.post(r#"421["tidings:join",{"room":"calm"}]"#).await?;
    let ack = p.expect("431").await?;
    assert_eq!(ack, r#"431[{"ok":true,"room":"calm"}]"#);
    Ok(p)
}

async fn bystander_still_served(server: &TidingsServer, p: &Poller, n: u32) -> anyhow::Result<()> {
    server.publish("calm", json!({ "n": n })).await?;
    let event = p.expect("42").await?;
    assert_eq!(event, format!(r#"42["message",{{"n":{n}}}]"#));
    Ok(())
}

fn standard(body: &str, code: u8, message: &str) {
    let err: Value = serde_json::from_str(body).expect("a JSON error body");
    assert_eq!(err, json!({"code": code, "message": message}));
}

#[tokio::test]
async fn bad_handshakes_get_the_standard_error_codes() -> anyhow::Result<()> {
    let server = server().await?;
    let http = reqwest::Client::new();
    let base = format!("{}/socket.io/", server.http_url());
    for (query, code, message) in [
        ("transport=polling", 5, "Unsupported protocol version"),
        ("EIO=3&transport=polling", 5, "Unsupported protocol version"),
        ("EIO=4", 0, "Transport unknown"),
        ("EIO=4&transport=flash", 0, "Transport unknown"),
        (
            "EIO=4&transport=polling&sid=nosuchsession",
            1,
            "Session ID unknown",
        ),
    ] {
        let res = http.get(format!("{base}?{query}")).send().await?;
        assert_eq!(res.status().as_u16(), 400, "{query}");
        standard(&res.text().await?, code, message);
    }
    let res = http
        .post(format!("{base}?EIO=4&transport=polling"))
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 400);
    standard(&res.text().await?, 2, "Bad handshake method");
    let res = http
        .get(format!("{base}?EIO=4&transport=polling"))
        .header("Origin", "https://evil.example")
        .send()
        .await?;
    // open_config allows every origin, so this one is fine.
    assert_eq!(res.status().as_u16(), 200);

    // With an allow-list, another origin is Forbidden, on both transports.
    let mut config = open_config("hostile-key", "hostile-secret-of-at-least-32-bytes!");
    config["client"]["allowed_origins"] = json!(["https://app.example"]);
    config["socketio"] = json!({ "enabled": true });
    let strict = TidingsServer::builder().config_json(config).start().await?;
    let base = format!("{}/socket.io/", strict.http_url());
    for transport in ["polling", "websocket"] {
        let res = http
            .get(format!("{base}?EIO=4&transport={transport}"))
            .header("Origin", "https://evil.example")
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await?;
        assert_eq!(res.status().as_u16(), 403, "{transport}");
        standard(&res.text().await?, 4, "Forbidden");
    }
    let res = http
        .get(format!("{base}?EIO=4&transport=polling"))
        .header("Origin", "https://app.example")
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 200);
    Ok(())
}

#[tokio::test]
async fn malformed_engine_and_socketio_packets_close_only_their_session() -> anyhow::Result<()> {
    let server = server().await?;
    let calm = bystander(&server).await?;
    // Not an Engine.IO packet: 400 Bad request at once, and the session is gone.
    let bad = Poller::open(&server).await?;
    let (status, body) = bad.post("abc").await?;
    assert_eq!(status, 400);
    standard(&body, 3, "Bad request");
    bad.expect_gone().await?;
    bystander_still_served(&server, &calm, 1).await?;

    // Valid Engine.IO, broken Socket.IO: the session is closed.
    for broken in [
        "4{oops",
        "49",
        r#"42{"not":"an array"}"#,
        "42[]",
        r#"44{"message":"x"}"#,
    ] {
        let bad = Poller::open(&server).await?;
        let (status, _) = bad.post(broken).await?;
        assert!(status == 200 || status == 400, "{broken}: {status}");
        bad.expect_gone().await?;
    }
    bystander_still_served(&server, &calm, 2).await?;
    Ok(())
}

#[tokio::test]
async fn unknown_and_cross_node_sids_get_400_session_id_unknown() -> anyhow::Result<()> {
    let server = server().await?;
    let calm = bystander(&server).await?;
    let http = reqwest::Client::new();
    // A sid naming another node: routed when the cluster seam is wired; until then,
    // refused like any unknown sid.
    for sid in ["zzzzzzzzzzzz0123456789abcdef", &calm.sid[..12]] {
        let url = format!(
            "{}/socket.io/?EIO=4&transport=polling&sid={sid}",
            server.http_url()
        );
        for res in [
            http.get(&url).send().await?,
            http.post(&url).body("40").send().await?,
        ] {
            assert_eq!(res.status().as_u16(), 400);
            standard(&res.text().await?, 1, "Session ID unknown");
        }
    }
    bystander_still_served(&server, &calm, 1).await?;
    Ok(())
}

#[tokio::test]
async fn a_second_concurrent_poll_gets_400_and_closes_the_session() -> anyhow::Result<()> {
    let server = server().await?;
    let calm = bystander(&server).await?;
    let p = Poller::open(&server).await?;
    // Two polls at once: whichever the server sees second is refused with 400, and
    // the session closes, so the pending one ends with the close packet.
    let (a, b) = tokio::join!(p.get(), p.get());
    let mut answers = [a?, b?];
    answers.sort();
    assert_eq!(
        answers[0],
        (200, "1".to_string()),
        "the pending poll ends with close"
    );
    assert_eq!(answers[1].0, 400);
    standard(&answers[1].1, 3, "Bad request");
    p.expect_gone().await?;
    bystander_still_served(&server, &calm, 1).await?;
    Ok(())
}

#[tokio::test]
async fn payloads_over_max_payload_get_413_and_close_the_session() -> anyhow::Result<()> {
    let server = server().await?;
    let calm = bystander(&server).await?;
    let p = Poller::open(&server).await?;
    let big = format!(r#"42["x","{}"]"#, "y".repeat(MAX_PAYLOAD));
    let (status, _) = p.post(big).await?;
    assert_eq!(status, 413);
    p.expect_gone().await?;
    // Over WebSocket, the message is refused and the socket closed.
    let ws_url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        server.addr()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
    use futures_util::{SinkExt, StreamExt};
    let open = ws.next().await.context("open packet")??;
    assert!(open.to_text()?.starts_with('0'));
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::text(format!(
            "4{}",
            "z".repeat(MAX_PAYLOAD + 10)
        )))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(m))) if m.is_close() => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => bail!("the WebSocket stayed open after an oversized message"),
        }
    }
    bystander_still_served(&server, &calm, 1).await?;
    Ok(())
}

#[tokio::test]
async fn abusive_binary_posts_are_bounded() -> anyhow::Result<()> {
    let server = server().await?;
    let calm = bystander(&server).await?;
    // Raw bytes that are not UTF-8: not an Engine.IO v4 payload.
    let p = Poller::open(&server).await?;
    let (status, body) = p.post(vec![0xff, 0xfe, 0x00, 0x80]).await?;
    assert_eq!(status, 400);
    standard(&body, 3, "Bad request");
    p.expect_gone().await?;

    // A binary body (application/octet-stream): v4 polling is text only.
    let p = Poller::open(&server).await?;
    let res = p
        .http
        .post(&p.url)
        .header("Content-Type", "application/octet-stream")
        .body(vec![0x04u8, 1, 2, 3])
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 400);
    standard(&res.text().await?, 3, "Bad request");
    p.expect_gone().await?;

    // More attachments announced than socketio.max_attachments (4).
    let p = Poller::open(&server).await?;
    p.post("40").await?;
    p.expect("40").await?;
    p.post(r#"451000-["x"]"#).await?;
    p.expect_gone().await?;

    // Attachments nobody announced.
    let p = Poller::open(&server).await?;
    p.post("40\x1ebAQID\x1ebAQID").await?;
    p.expect_gone().await?;

    // Announced attachments whose total passes maxPayload, sent over several POSTs.
    let p = Poller::open(&server).await?;
    p.post("40").await?;
    p.expect("40").await?;
    p.post(
        r#"454-["tidings:publish",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1},{"_placeholder":true,"num":2},{"_placeholder":true,"num":3}]"#,
    )
    .await?;
    use base64::Engine as _;
    let chunk = format!(
        "b{}",
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; MAX_PAYLOAD / 2])
    );
    for _ in 0..3 {
        let (status, _) = p.post(chunk.clone()).await?;
        if status != 200 {
            break;
        }
    }
    p.expect_gone().await?;

    // Bad base64 in a binary record.
    let p = Poller::open(&server).await?;
    let (status, _) = p.post("b!!!!").await?;
    assert_eq!(status, 400);
    p.expect_gone().await?;

    bystander_still_served(&server, &calm, 1).await?;
    Ok(())
}

#[tokio::test]
async fn an_event_flood_is_refused_then_closed_by_the_command_budget() -> anyhow::Result<()> {
    let mut config = open_config("hostile-key", "hostile-secret-of-at-least-32-bytes!");
    config["socketio"] = json!({
        "enabled": true,
        "max_payload": MAX_PAYLOAD,
        "ping_interval": "2s",
        "ping_timeout": "1s"
    });
    config["client"]["command_rate_limit"] =
        json!({ "enabled": true, "rate": 1, "burst": 3, "disconnect_after": 5 });
    let server = TidingsServer::builder()
        .config_json(config)
        .api_key("hostile-key")
        .start()
        .await?;
    let calm = bystander(&server).await?;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        server.addr()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
    ws.send(Message::text("40")).await?;
    // CONNECT takes one token of the burst of three; of twenty acknowledged events,
    // two fit, the next ones are refused, and the fifth refusal closes the session.
    for id in 1..=20 {
        ws.send(Message::text(format!(
            r#"42{id}["tidings:join",{{"room":"flood"}}]"#
        )))
        .await?;
    }
    let mut acks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with("43") => {
                acks.push(t.as_str().to_string());
            }
            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => break,
            Ok(Some(Ok(_))) => {}
            Err(_) => bail!("the flooding socket was not closed; acks: {acks:?}"),
        }
    }
    let refusal = r#"[{"error":"too many requests","ok":false}]"#;
    assert_eq!(
        acks,
        vec![
            r#"431[{"ok":true,"room":"flood"}]"#.to_string(),
            r#"432[{"ok":true,"room":"flood"}]"#.to_string(),
            format!("433{refusal}"),
            format!("434{refusal}"),
            format!("435{refusal}"),
            format!("436{refusal}"),
        ],
        "two allowed, four refused, then the close"
    );
    let (status, metrics) = server.http_get("/metrics").await?;
    assert_eq!(status, 200);
    let count = |event: &str| {
        tidings_testkit::metrics::sample(
            &metrics,
            "tidings_socketio_events_total",
            &[("event", event)],
        )
    };
    assert_eq!(count("refused"), Some(4.0));
    // The bystander's join and the flood's two.
    assert_eq!(count("join"), Some(3.0));
    bystander_still_served(&server, &calm, 1).await?;
    Ok(())
}
