//! The Protobuf client protocol at the wire: frames written byte by byte over
//! the `centrifuge-protobuf` WebSocket subprotocol.
//!
//! - Hostile frames (a truncated length, a length past the frame, a wrong wire
//!   type, a text frame, an empty frame, a batch over the message limit) each
//!   close that connection with 3501 "bad request", while a JSON and a Protobuf
//!   control client on the same node go on receiving; unknown fields are skipped.
//! - Through Redis and through NATS, a Protobuf client on one node receives, byte
//!   for byte, binary publications made on another node, live and from history;
//!   the server API's history gives them back as `b64data`.
//!
//! Commands are encoded with `tidings_protocol::proto`, replies decoded with it,
//! as an SDK does.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tidings_protocol::proto::{self, FrameLimits};
use tidings_protocol::{
    Command, ConnectRequest, HistoryRequest, Payload, Publication, PublishRequest, Reply,
    SubscribeRequest,
};
use tidings_testkit::{
    Cluster, Engine, TidingsServer, TidingsServerBuilder, WsClient, DEFAULT_WAIT,
};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The channel the control clients watch.
const CONTROL: &str = "control";

/// Bytes that are not UTF-8, let alone JSON.
const BINARY: &[u8] = &[0x00, 0xff, 0xfe, 0x80, 0x0a, 0xc3, 0x28, 0x7b];

/// A Centrifugo client speaking Protobuf over a WebSocket: commands go out
/// length-delimited in binary frames, replies come back decoded, server pings
/// (an empty reply) are answered with an empty command.
struct PbClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The next command id; ids start at 1.
    next_id: u32,
    /// Replies and pushes read but not yet handed to the test.
    inbox: VecDeque<Reply>,
    /// The close code and reason, once the server closed.
    close: Option<(u16, String)>,
}

impl PbClient {
    /// Opens `ws_url` with the `centrifuge-protobuf` subprotocol.
    async fn open(ws_url: &str) -> anyhow::Result<Self> {
        let mut request = ws_url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("centrifuge-protobuf"),
        );
        let (ws, response) =
            tokio::time::timeout(DEFAULT_WAIT, tokio_tungstenite::connect_async(request))
                .await
                .map_err(|_| anyhow!("timed out opening {ws_url}"))??;
        let agreed = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        ensure!(
            agreed == Some("centrifuge-protobuf"),
            "the server agreed to {agreed:?}"
        );
        Ok(Self {
            ws,
            next_id: 1,
            inbox: VecDeque::new(),
            close: None,
        })
    }

    /// Opens `ws_url` and connects anonymously.
    async fn connected(ws_url: &str) -> anyhow::Result<Self> {
        let mut client = Self::open(ws_url).await?;
        let reply = client
            .call(Command {
                connect: Some(ConnectRequest::default()),
                ..Default::default()
            })
            .await?;
        ensure!(reply.connect.is_some(), "connect reply: {reply:?}");
        Ok(client)
    }

    /// Sends `bytes` as one binary frame, as they are.
    async fn send_frame(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// Sends `cmd` with the next id and waits for the reply with that id; pushes
    /// that arrive meanwhile stay in the inbox.
    async fn call(&mut self, mut cmd: Command) -> anyhow::Result<Reply> {
        cmd.id = self.next_id;
        self.next_id += 1;
        let mut frame = Vec::new();
        proto::encode_command(&cmd, &mut frame);
        self.send_frame(frame).await?;
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r.id == cmd.id) {
                let reply = self.inbox.remove(i).context("reply just found")?;
                if let Some(error) = &reply.error {
                    bail!("command {} failed: {error:?}", cmd.id);
                }
                return Ok(reply);
            }
            self.read_until(deadline).await?;
        }
    }

    /// Subscribes to `channel`.
    async fn subscribe(&mut self, channel: &str) -> anyhow::Result<()> {
        self.call(Command {
            subscribe: Some(SubscribeRequest {
                channel: channel.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// Publishes `data` (any bytes) into `channel`.
    async fn publish(&mut self, channel: &str, data: &[u8]) -> anyhow::Result<()> {
        self.call(Command {
            publish: Some(PublishRequest {
                channel: channel.to_owned(),
                data: Some(Payload::from_bytes(data.to_vec())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        Ok(())
    }

    /// Every publication in `channel`'s history.
    async fn history(&mut self, channel: &str) -> anyhow::Result<Vec<Publication>> {
        let reply = self
            .call(Command {
                history: Some(HistoryRequest {
                    channel: channel.to_owned(),
                    limit: -1,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        Ok(reply.history.context("a history result")?.publications)
    }

    /// The next publication pushed in `channel`, skipping other pushes.
    async fn next_pub(&mut self, channel: &str) -> anyhow::Result<Publication> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            while let Some(reply) = self.inbox.pop_front() {
                if let Some(push) = reply.push {
                    if push.channel == channel {
                        if let Some(publication) = push.publication {
                            return Ok(publication);
                        }
                    }
                }
            }
            self.read_until(deadline)
                .await
                .with_context(|| format!("waiting for a publication in {channel}"))?;
        }
    }

    /// Reads until the server closes; the close code and reason.
    async fn expect_close(&mut self) -> anyhow::Result<(u16, String)> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            if let Some(close) = &self.close {
                return Ok(close.clone());
            }
            self.read_until(deadline).await?;
        }
    }

    /// Reads one message: replies go to the inbox, pings are answered, a close
    /// is recorded.
    async fn read_until(&mut self, deadline: Instant) -> anyhow::Result<()> {
        if let Some((code, reason)) = &self.close {
            bail!("the server closed the connection: {code} {reason:?}");
        }
        let message = match timeout_at(deadline, self.ws.next()).await {
            Err(_) => bail!("timed out waiting for the server"),
            Ok(None) => bail!("the connection ended without a close frame"),
            Ok(Some(message)) => message?,
        };
        match message {
            Message::Binary(bytes) => {
                for reply in proto::decode_replies(&bytes, FrameLimits::default())? {
                    if is_ping(&reply) {
                        self.send_frame(proto::PING_FRAME.to_vec()).await?;
                    } else {
                        self.inbox.push_back(reply);
                    }
                }
            }
            Message::Text(text) => bail!("a text frame on a Protobuf connection: {text}"),
            Message::Close(frame) => {
                self.close = Some(frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                }));
            }
            _ => {}
        }
        Ok(())
    }
}

/// A server ping: a reply with nothing set.
fn is_ping(reply: &Reply) -> bool {
    reply.id == 0 && reply.error.is_none() && reply.push.is_none() && reply.connect.is_none()
}

/// A frame holding `commands`, each length-delimited.
fn frame_of(commands: &[Command]) -> Vec<u8> {
    let mut frame = Vec::new();
    for cmd in commands {
        proto::encode_command(cmd, &mut frame);
    }
    frame
}

/// A node with two well-behaved clients on [`CONTROL`], one per encoding.
struct Watched {
    server: TidingsServer,
    json: WsClient,
    protobuf: PbClient,
    published: u64,
}

impl Watched {
    async fn start(builder: TidingsServerBuilder) -> anyhow::Result<Self> {
        let server = builder.start().await?;
        let mut json = server.connected_client().await?;
        json.subscribe(CONTROL).await?;
        let mut protobuf = PbClient::connected(&server.ws_url()).await?;
        protobuf.subscribe(CONTROL).await?;
        Ok(Self {
            server,
            json,
            protobuf,
            published: 0,
        })
    }

    /// Sends `frame` on a fresh connected Protobuf client and expects 3501 "bad
    /// request"; then both control clients still get a publication.
    async fn closes_3501(&mut self, what: &str, frame: Message) -> anyhow::Result<()> {
        let mut attacker = PbClient::connected(&self.server.ws_url()).await?;
        attacker.ws.send(frame).await?;
        let close = attacker
            .expect_close()
            .await
            .with_context(|| format!("{what}: expected a close"))?;
        ensure!(
            close == (3501, "bad request".to_owned()),
            "{what}: closed with {close:?}"
        );
        self.unhurt(what).await
    }

    async fn unhurt(&mut self, what: &str) -> anyhow::Result<()> {
        self.published += 1;
        let n = self.published;
        self.server.publish(CONTROL, json!({ "n": n })).await?;
        let seen = self.json.next_pub(CONTROL).await?;
        ensure!(
            seen["data"] == json!({ "n": n }),
            "{what}: JSON control saw {seen}"
        );
        let seen = self.protobuf.next_pub(CONTROL).await?;
        let data = seen.data.context("data")?;
        ensure!(
            data.as_bytes().as_ref() == format!("{{\"n\":{n}}}").as_bytes(),
            "{what}: Protobuf control saw {data:?}"
        );
        let logs = self.server.logs().join("\n");
        ensure!(
            !logs.contains("panicked"),
            "{what}: the server panicked:\n{logs}"
        );
        Ok(())
    }
}

#[tokio::test]
async fn malformed_protobuf_frames_close_3501_and_spare_other_clients() -> anyhow::Result<()> {
    let mut node = Watched::start(TidingsServer::builder()).await?;
    // A length prefix whose continuation bit promises a byte that never comes.
    node.closes_3501("truncated varint", Message::binary(vec![0x80]))
        .await?;
    // A prefix of five bytes in a frame that holds one.
    node.closes_3501("length past the frame", Message::binary(vec![0x05, 0x0a]))
        .await?;
    // Field 1 (`id`, a varint) sent as a length-delimited field.
    node.closes_3501(
        "wrong wire type",
        Message::binary(vec![0x03, 0x0a, 0x01, 0x00]),
    )
    .await?;
    // A length prefix that does not end within ten bytes.
    node.closes_3501("overlong varint", Message::binary(vec![0xff; 11]))
        .await?;
    // The Protobuf protocol is binary; text is not part of it.
    node.closes_3501("text frame", Message::text(r#"{"id":2,"ping":{}}"#))
        .await?;
    // A frame with no command in it.
    node.closes_3501("empty binary frame", Message::binary(Vec::<u8>::new()))
        .await?;
    // A well-framed command after a broken one in the same frame is never run.
    let mut frame = vec![0x03, 0x0a, 0x01, 0x00];
    frame.extend(frame_of(&[Command {
        id: 9,
        publish: Some(PublishRequest {
            channel: CONTROL.to_owned(),
            data: Some(Payload::from_bytes(&b"{\"n\":0}"[..])),
            ..Default::default()
        }),
        ..Default::default()
    }]));
    node.closes_3501("a command after a broken one", Message::binary(frame))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_of_more_than_a_thousand_commands_closes_3501() -> anyhow::Result<()> {
    // Every command (pongs included) takes a token of the command rate limit, so
    // the budget is raised past the batch: the frame limit is what is tested.
    let mut node = Watched::start(
        TidingsServer::builder().env("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_BURST", "5000"),
    )
    .await?;
    // 1001 pongs: one byte each (an empty command), well within the frame size.
    node.closes_3501(
        "1001 messages in a frame",
        Message::binary(vec![0x00; 1001]),
    )
    .await?;
    // A thousand are fine.
    let mut client = PbClient::connected(&node.server.ws_url()).await?;
    client.send_frame(vec![0x00; 1000]).await?;
    client.subscribe("after-a-thousand").await?;
    node.unhurt("1000 messages in a frame").await
}

#[tokio::test]
async fn unknown_protobuf_fields_are_skipped() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = PbClient::open(&server.ws_url()).await?;
    let connect = frame_of(&[Command {
        id: 1,
        connect: Some(ConnectRequest::default()),
        ..Default::default()
    }]);
    // The message body after its one-byte length, plus field 99 (a varint) that no
    // version of client.proto has, as a newer SDK might send.
    ensure!(usize::from(connect[0]) == connect.len() - 1, "{connect:?}");
    let mut body = connect[1..].to_vec();
    body.extend([0x98, 0x06, 0x01]);
    let mut frame = vec![u8::try_from(body.len())?];
    frame.extend(body);
    client.send_frame(frame).await?;
    let deadline = Instant::now() + DEFAULT_WAIT;
    while !client.inbox.iter().any(|r| r.id == 1) {
        client.read_until(deadline).await?;
    }
    let reply = client.inbox.pop_front().context("connect reply")?;
    ensure!(reply.connect.is_some(), "{reply:?}");
    client.subscribe("after-unknown-fields").await?;
    Ok(())
}

/// A Protobuf client on node A receives exactly the bytes published on node B
/// (by a Protobuf client there and through B's API with `b64data`), live and
/// from history read on node A.
async fn binary_publications_cross_nodes_byte_for_byte(engine: Engine) -> anyhow::Result<()> {
    let cluster = Cluster::start(engine).await?;
    cluster.wait_for_nodes(3, Duration::from_secs(10)).await?;
    let channel = "binary";
    let mut on_a = PbClient::connected(&cluster.node(0).ws_url()).await?;
    on_a.subscribe(channel).await?;
    let mut on_b = PbClient::connected(&cluster.node(1).ws_url()).await?;

    on_b.publish(channel, BINARY).await?;
    let first = on_a.next_pub(channel).await?;
    ensure!(
        first.data.as_ref().map(|d| d.as_bytes().as_ref()) == Some(BINARY),
        "{engine:?}: from B's client, A got {first:?}"
    );

    let api_bytes: Vec<u8> = BINARY.iter().rev().copied().collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&api_bytes);
    cluster
        .node(1)
        .api_ok("publish", json!({ "channel": channel, "b64data": b64 }))
        .await?;
    let second = on_a.next_pub(channel).await?;
    ensure!(
        second.data.as_ref().map(|d| d.as_bytes().as_ref()) == Some(&api_bytes[..]),
        "{engine:?}: from B's API, A got {second:?}"
    );
    ensure!(
        second.offset == first.offset + 1,
        "offsets {} then {}",
        first.offset,
        second.offset
    );

    let history = on_a.history(channel).await?;
    let stored: Vec<&[u8]> = history
        .iter()
        .filter_map(|p| p.data.as_ref().map(|d| d.as_bytes().as_ref()))
        .collect();
    ensure!(
        stored == [BINARY, &api_bytes[..]],
        "{engine:?}: history on A holds {stored:?}"
    );

    // The server API answers in JSON, so it gives such bytes back as b64data.
    let api_history = cluster
        .node(0)
        .api_ok("history", json!({ "channel": channel, "limit": -1 }))
        .await?;
    let b64_of = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    ensure!(
        api_history["publications"]
            == json!([
                { "b64data": b64_of(BINARY), "info": api_history["publications"][0]["info"], "offset": first.offset },
                { "b64data": b64, "offset": second.offset },
            ]),
        "{engine:?}: API history {api_history}"
    );
    Ok(())
}

tidings_testkit::per_engine_tests!(binary_publications_cross_nodes_byte_for_byte);
