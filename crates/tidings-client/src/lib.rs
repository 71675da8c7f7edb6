//! A lean client for Tidings and for the servers it is compared with.
//!
//! Built for load generation: one process holds thousands of connections, so a
//! connection is a WebSocket stream with small buffers and nothing else (no task, no
//! channel, no parsed pushes). The caller drives it: [`Client::recv`] returns the
//! next frame that carries data, and answers the protocol's pings on the way.
//!
//! Four protocols over WebSocket ([`Protocol`]):
//! - `Centrifugo`: the Centrifugo JSON protocol that Tidings speaks (connect,
//!   subscribe, publish commands; newline-delimited replies and pushes; `{}` pings).
//! - `CentrifugoProtobuf`: the same protocol in Protobuf (subprotocol
//!   `centrifuge-protobuf`; binary frames of varint-length-delimited messages, encoded
//!   and decoded with `tidings-protocol`; an empty message is a ping, answered by an
//!   empty command). Received frames are not decoded: a publication's data bytes
//!   appear in the frame as they are, so a load generator scans them like JSON text.
//! - `Raw`: plain text frames, for broadcast servers that send every frame to all.
//! - `EngineIo`: Engine.IO v4 / Socket.IO v5 (open packet, namespace connect,
//!   `2`/`3` ping-pong, `42["event",payload]` events).
//!
//! And one over HTTP: [`sse::SseClient`], a unidirectional Server-Sent Events
//! subscriber.
//!
//! Protocol handling is written here rather than taken from a library because the
//! Centrifugo and Socket.IO client crates each bring a task, channels and parsed
//! messages per connection, which is exactly the overhead a load generator cannot
//! afford at tens of thousands of connections.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tidings_protocol::proto;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

pub mod sse;

/// What can go wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad url {0:?}")]
    Url(String),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server refused: {0}")]
    Refused(String),
    #[error("connection closed")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The application protocol spoken over the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The Centrifugo JSON protocol (Tidings, Centrifugo).
    Centrifugo,
    /// The Centrifugo Protobuf protocol (WebSocket subprotocol `centrifuge-protobuf`).
    CentrifugoProtobuf,
    /// Raw text frames; publishing sends the payload as a frame.
    Raw,
    /// Engine.IO v4 with Socket.IO v5 packets on the default namespace.
    EngineIo,
}

impl Protocol {
    /// One of the two encodings of the Centrifugo protocol.
    pub fn is_centrifugo(self) -> bool {
        matches!(self, Protocol::Centrifugo | Protocol::CentrifugoProtobuf)
    }
}

/// Socket.IO event name used for publications.
pub const EIO_EVENT: &str = "msg";

/// The WebSocket subprotocol that selects the Centrifugo Protobuf protocol.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// How to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Local address to bind before connecting (spreading connections over
    /// 127.0.0.x goes past one address's ephemeral port range).
    pub bind: Option<IpAddr>,
    /// Read buffer of the WebSocket stream. Small by default: an idle connection
    /// should cost the generator little memory.
    pub read_buffer: usize,
    /// Connection token (Centrifugo protocol), if the server wants one.
    pub token: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            bind: None,
            read_buffer: 4 * 1024,
            token: None,
        }
    }
}

/// One connection.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    protocol: Protocol,
    next_id: u64,
    /// A ping was seen and its pong is not yet sent.
    pending_pong: bool,
}

/// Resolves `host:port` of a `ws://` or `http://` URL to a socket address.
pub async fn resolve(url: &str) -> Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| Error::Url(url.into()))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    tokio::net::lookup_host(with_port)
        .await?
        .next()
        .ok_or_else(|| Error::Url(url.into()))
}

/// Opens a TCP connection to `addr`, from `bind` if given, with Nagle off.
pub async fn tcp_connect(addr: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        // Without this, bind() picks a free port for the address alone, and with
        // tens of thousands of sockets bound (the swarm's generators) that search
        // becomes most of the process's CPU. With it the kernel picks the port at
        // connect(), needing only the 4-tuple to be unique. Best effort: the
        // bind below works without it.
        #[cfg(target_os = "linux")]
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Client {
    /// Connects to `url` (a `ws://` URL; `addr` is its resolved address) and runs
    /// the protocol's handshake: the `connect` command for Centrifugo, the open
    /// packet and namespace connect for Engine.IO, nothing for raw.
    pub async fn connect(
        url: &str,
        addr: SocketAddr,
        protocol: Protocol,
        opts: &ConnectOptions,
    ) -> Result<Client> {
        let stream = tcp_connect(addr, opts.bind).await?;
        let mut request = url.into_client_request()?;
        if protocol == Protocol::CentrifugoProtobuf {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(PROTOBUF_SUBPROTOCOL),
            );
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(opts.read_buffer)
            .write_buffer_size(0);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        let mut client = Client {
            ws,
            protocol,
            next_id: 1,
            pending_pong: false,
        };
        match protocol {
            Protocol::Centrifugo => {
                let mut connect = serde_json::json!({});
                if let Some(token) = &opts.token {
                    connect["token"] = token.clone().into();
                }
                client
                    .command(serde_json::json!({ "connect": connect }))
                    .await?;
            }
            Protocol::CentrifugoProtobuf => {
                let connect = tidings_protocol::ConnectRequest {
                    token: opts.token.clone().unwrap_or_default(),
                    ..Default::default()
                };
                client
                    .command_protobuf(tidings_protocol::Command {
                        connect: Some(connect),
                        ..Default::default()
                    })
                    .await?;
            }
            Protocol::EngineIo => {
                // The open packet: `0{"sid":...,"pingInterval":...}`.
                let open = client.next_frame().await?;
                if !open.starts_with('0') {
                    return Err(Error::Protocol(format!(
                        "expected open packet, got {open:?}"
                    )));
                }
                client.send_text("40").await?;
                loop {
                    let f = client.next_frame().await?;
                    if f.starts_with("40") {
                        break;
                    }
                    if f.starts_with("44") {
                        return Err(Error::Refused(f.to_string()));
                    }
                }
            }
            Protocol::Raw => {}
        }
        Ok(client)
    }

    /// The protocol this connection speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Subscribes to `channel` and waits for the reply (Centrifugo only; the other
    /// protocols have one broadcast and this does nothing).
    pub async fn subscribe(&mut self, channel: &str) -> Result<()> {
        match self.protocol {
            Protocol::Centrifugo => {
                self.command(serde_json::json!({ "subscribe": { "channel": channel } }))
                    .await?;
            }
            Protocol::CentrifugoProtobuf => {
                self.command_protobuf(tidings_protocol::Command {
                    subscribe: Some(tidings_protocol::SubscribeRequest {
                        channel: channel.to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?;
            }
            Protocol::Raw | Protocol::EngineIo => {}
        }
        Ok(())
    }

    /// Joins a Tidings room over Socket.IO (`tidings:join` with an ack) and waits
    /// for the ack: how a Socket.IO client subscribes to a Tidings channel. For
    /// the other protocols this is [`Client::subscribe`].
    pub async fn join_room(&mut self, channel: &str) -> Result<()> {
        if self.protocol != Protocol::EngineIo {
            return self.subscribe(channel).await;
        }
        let join = serde_json::json!(["tidings:join", { "room": channel }]);
        self.send_text(&format!("421{join}")).await?;
        loop {
            let Some(frame) = self.recv().await? else {
                return Err(Error::Closed);
            };
            let Ok(frame) = std::str::from_utf8(&frame) else {
                continue;
            };
            if let Some(ack) = frame.strip_prefix("431") {
                if ack.contains("\"ok\":true") {
                    return Ok(());
                }
                return Err(Error::Refused(ack.to_string()));
            }
        }
    }

    /// Sends a publication without waiting for anything: a `publish` command
    /// (its reply arrives later through [`Client::recv`]), a raw frame, or a
    /// Socket.IO event. `data` must be JSON (the Protobuf protocol sends its bytes).
    pub async fn publish(&mut self, channel: &str, data: &str) -> Result<()> {
        let frame = self.publish_frame(channel, data);
        self.ws.send(frame).await?;
        Ok(())
    }

    /// The frame [`Client::publish`] would send.
    pub fn publish_frame(&mut self, channel: &str, data: &str) -> Message {
        match self.protocol {
            Protocol::Centrifugo => {
                let id = self.take_id();
                let channel = serde_json::to_string(channel).unwrap_or_default();
                Message::text(format!(
                    "{{\"id\":{id},\"publish\":{{\"channel\":{channel},\"data\":{data}}}}}"
                ))
            }
            Protocol::CentrifugoProtobuf => {
                let cmd = tidings_protocol::Command {
                    id: self.take_id_u32(),
                    publish: Some(tidings_protocol::PublishRequest {
                        channel: channel.to_owned(),
                        data: Some(tidings_protocol::Payload::from_bytes(
                            data.as_bytes().to_vec(),
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let mut frame = Vec::new();
                proto::encode_command(&cmd, &mut frame);
                Message::binary(frame)
            }
            Protocol::Raw => Message::text(data),
            Protocol::EngineIo => Message::text(format!("42[\"{EIO_EVENT}\",{data}]")),
        }
    }

    /// How many error replies a frame this connection received holds (for a
    /// publisher counting refused publications).
    pub fn errors_in(&self, frame: &[u8]) -> u64 {
        match self.protocol {
            Protocol::CentrifugoProtobuf => {
                let limits = proto::FrameLimits {
                    max_messages: usize::MAX,
                    max_message_len: frame.len(),
                };
                proto::replies(frame, limits)
                    .filter(|r| r.as_ref().map_or(true, |r| r.error.is_some()))
                    .count() as u64
            }
            _ => frame.windows(8).filter(|w| w == b"\"error\":").count() as u64,
        }
    }

    /// Sends one text frame as is.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next frame that may carry data (text for the text protocols, binary for
    /// Protobuf). Pings of the protocol are answered (the pong goes out before the
    /// next read) and not returned. `Ok(None)` when the server closed the connection.
    ///
    /// Cancel-safe: dropping the future loses no frame (a pong may be sent twice).
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.pending_pong {
                let pong = match self.protocol {
                    Protocol::EngineIo => Message::text("3"),
                    Protocol::CentrifugoProtobuf => {
                        Message::binary(Bytes::from_static(proto::PING_FRAME))
                    }
                    Protocol::Centrifugo | Protocol::Raw => Message::text("{}"),
                };
                self.ws.send(pong).await?;
                self.pending_pong = false;
            }
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            let frame = match msg? {
                Message::Text(t) => Bytes::from(t),
                Message::Binary(b) => b,
                Message::Close(_) => return Ok(None),
                _ => continue,
            };
            match self.protocol {
                Protocol::Centrifugo => {
                    if has_empty_line(&frame) {
                        self.pending_pong = true;
                        if frame.len() == 2 {
                            continue;
                        }
                    }
                }
                Protocol::CentrifugoProtobuf => {
                    let (pings, others) = count_delimited(&frame);
                    if pings > 0 {
                        self.pending_pong = true;
                        if others == 0 {
                            continue;
                        }
                    }
                }
                Protocol::EngineIo => {
                    if frame.as_ref() == b"2" {
                        self.pending_pong = true;
                        continue;
                    }
                }
                Protocol::Raw => {}
            }
            return Ok(Some(frame));
        }
    }

    /// Closes the connection politely (close frame), ignoring errors.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The next command id as the Protobuf protocol carries it (`uint32`).
    fn take_id_u32(&mut self) -> u32 {
        // Ids wrap past u32::MAX; a load run never gets near.
        self.take_id() as u32
    }

    async fn next_frame(&mut self) -> Result<Utf8Bytes> {
        loop {
            match self.ws.next().await {
                None => return Err(Error::Closed),
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Close(_))) => return Err(Error::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Sends a Centrifugo command and waits for its reply, skipping pushes.
    async fn command(&mut self, mut body: serde_json::Value) -> Result<serde_json::Value> {
        let id = self.take_id();
        body["id"] = id.into();
        self.send_text(&body.to_string()).await?;
        loop {
            let frame = self.next_frame().await?;
            for line in frame.as_str().split('\n') {
                if line == "{}" {
                    self.pending_pong = true;
                    continue;
                }
                let Ok(reply) = serde_json::from_str::<serde_json::Value>(line) else {
                    return Err(Error::Protocol(format!("not JSON: {line:?}")));
                };
                if reply.get("id").and_then(|v| v.as_u64()) != Some(id) {
                    continue;
                }
                if let Some(err) = reply.get("error") {
                    return Err(Error::Refused(err.to_string()));
                }
                return Ok(reply);
            }
        }
    }

    /// Sends a Protobuf command and waits for its reply, skipping pushes.
    async fn command_protobuf(
        &mut self,
        mut cmd: tidings_protocol::Command,
    ) -> Result<tidings_protocol::Reply> {
        cmd.id = self.take_id_u32();
        let mut frame = Vec::new();
        proto::encode_command(&cmd, &mut frame);
        self.ws.send(Message::binary(frame)).await?;
        loop {
            let frame = match self.ws.next().await {
                None => return Err(Error::Closed),
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Close(_))) => return Err(Error::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            };
            let limits = proto::FrameLimits {
                max_messages: usize::MAX,
                max_message_len: frame.len(),
            };
            for reply in proto::replies(&frame, limits) {
                let reply = reply.map_err(|e| Error::Protocol(e.to_string()))?;
                if reply.id != cmd.id {
                    // A ping is an empty reply; anything else here is a push.
                    if reply.id == 0 && reply.push.is_none() {
                        self.pending_pong = true;
                    }
                    continue;
                }
                if let Some(err) = reply.error {
                    return Err(Error::Refused(format!("{} {}", err.code, err.message)));
                }
                return Ok(reply);
            }
        }
    }
}

/// Counts the messages of a Protobuf frame: (empty ones, i.e. pings; the others).
/// Only the length prefixes are read. A frame that does not parse counts as one
/// message that is not a ping, so its bytes still reach the caller.
fn count_delimited(frame: &[u8]) -> (usize, usize) {
    let (mut pings, mut others) = (0, 0);
    let mut rest = frame;
    while !rest.is_empty() {
        let mut len: u64 = 0;
        let mut used = 0;
        loop {
            let Some(&b) = rest.get(used) else {
                return (pings, others + 1);
            };
            len |= u64::from(b & 0x7f) << (7 * used);
            used += 1;
            if b & 0x80 == 0 {
                break;
            }
            if used == 10 {
                return (pings, others + 1);
            }
        }
        let Some(end) = usize::try_from(len).ok().and_then(|l| used.checked_add(l)) else {
            return (pings, others + 1);
        };
        if end > rest.len() {
            return (pings, others + 1);
        }
        if len == 0 {
            pings += 1;
        } else {
            others += 1;
        }
        rest = &rest[end..];
    }
    (pings, others)
}

/// Whether a newline-delimited frame holds an empty JSON object line (a ping).
fn has_empty_line(frame: &[u8]) -> bool {
    frame == b"{}"
        || frame.starts_with(b"{}\n")
        || frame.ends_with(b"\n{}")
        || frame.windows(4).any(|w| w == b"\n{}\n")
}

/// Calls `f` with the value of every `"<key>":<digits>` in `frame`: the send
/// timestamps a load generator puts in its payloads. A frame may hold many pushes
/// (newline-delimited, or one per SSE event); each carries one key.
///
/// Scanning for the key instead of parsing JSON keeps the receive side of a load
/// generator cheap; the key is chosen so it cannot occur elsewhere in a frame.
pub fn for_each_stamp(frame: &[u8], key: &[u8], mut f: impl FnMut(u64)) {
    let mut rest = frame;
    while let Some(pos) = find(rest, key) {
        rest = &rest[pos + key.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut v: u64 = 0;
        for &b in &rest[..digits] {
            v = v.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
        }
        f(v);
        rest = &rest[digits..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_batched_frames() {
        let frame = br#"{"push":{"channel":"b","pub":{"data":{"bt":12,"p":"x"}}}}
{}
{"push":{"channel":"b","pub":{"data":{"bt":345,"p":"y"}}}}"#;
        let mut seen = Vec::new();
        for_each_stamp(frame, b"\"bt\":", |v| seen.push(v));
        assert_eq!(seen, vec![12, 345]);
        assert!(has_empty_line(frame));
        assert!(!has_empty_line(br#"{"a":{}}"#));
    }

    #[test]
    fn protobuf_pings_are_found_among_delimited_replies() {
        let publication = tidings_protocol::Publication {
            data: Some(tidings_protocol::Payload::from_bytes(&b"{\"bt\":42}"[..])),
            offset: 1,
            ..Default::default()
        };
        let push = proto::publication_push("b", &publication);
        let mut frame = push.to_vec();
        frame.extend_from_slice(proto::PING_FRAME);
        frame.extend_from_slice(&push);
        assert_eq!(count_delimited(&frame), (1, 2));
        assert_eq!(count_delimited(proto::PING_FRAME), (1, 0));
        assert_eq!(count_delimited(&push), (0, 1));
        // A cut frame still reaches the caller.
        assert_eq!(count_delimited(&push[..push.len() - 1]), (0, 1));
        assert_eq!(count_delimited(&[0x80]), (0, 1));
        // The stamps are in the data bytes as they are.
        let mut seen = Vec::new();
        for_each_stamp(&frame, b"\"bt\":", |v| seen.push(v));
        assert_eq!(seen, vec![42, 42]);
    }

    #[test]
    fn stamps_at_the_edges() {
        let mut seen = Vec::new();
        for_each_stamp(b"\"bt\":7", b"\"bt\":", |v| seen.push(v));
        for_each_stamp(b"no stamp here", b"\"bt\":", |v| seen.push(v));
        for_each_stamp(b"\"bt\":", b"\"bt\":", |v| seen.push(v));
        assert_eq!(seen, vec![7, 0]);
    }
}
