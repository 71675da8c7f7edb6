//! A lean client for Tidings and for the servers it is compared with.
//!
//! Built for load generation: one process holds thousands of connections, so a
//! connection is a WebSocket stream with small buffers and nothing else (no task, no
//! channel, no parsed pushes). The caller drives it: [`Client::recv`] returns the
//! next text frame that carries data, and answers the protocol's pings on the way.
//!
//! Three protocols over WebSocket ([`Protocol`]):
//! - `Centrifugo`: the Centrifugo JSON protocol that Tidings speaks (connect,
//!   subscribe, publish commands; newline-delimited replies and pushes; `{}` pings).
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

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
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
    /// Raw text frames; publishing sends the payload as a frame.
    Raw,
    /// Engine.IO v4 with Socket.IO v5 packets on the default namespace.
    EngineIo,
}

/// Socket.IO event name used for publications.
pub const EIO_EVENT: &str = "msg";

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
        let request = url.into_client_request()?;
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
        if self.protocol == Protocol::Centrifugo {
            self.command(serde_json::json!({ "subscribe": { "channel": channel } }))
                .await?;
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
    /// Socket.IO event. `data` must be JSON.
    pub async fn publish(&mut self, channel: &str, data: &str) -> Result<()> {
        let frame = self.publish_frame(channel, data);
        self.send_text(&frame).await
    }

    /// The frame [`Client::publish`] would send.
    pub fn publish_frame(&mut self, channel: &str, data: &str) -> String {
        match self.protocol {
            Protocol::Centrifugo => {
                let id = self.take_id();
                let channel = serde_json::to_string(channel).unwrap_or_default();
                format!("{{\"id\":{id},\"publish\":{{\"channel\":{channel},\"data\":{data}}}}}")
            }
            Protocol::Raw => data.to_string(),
            Protocol::EngineIo => format!("42[\"{EIO_EVENT}\",{data}]"),
        }
    }

    /// Sends one text frame as is.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next text frame that may carry data. Pings of the protocol are answered
    /// (the pong goes out before the next read) and not returned. `Ok(None)` when the
    /// server closed the connection.
    ///
    /// Cancel-safe: dropping the future loses no frame (a pong may be sent twice).
    pub async fn recv(&mut self) -> Result<Option<Utf8Bytes>> {
        loop {
            if self.pending_pong {
                let pong = match self.protocol {
                    Protocol::EngineIo => "3",
                    _ => "{}",
                };
                self.ws.send(Message::text(pong)).await?;
                self.pending_pong = false;
            }
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            let text = match msg? {
                Message::Text(t) => t,
                Message::Binary(b) => match Utf8Bytes::try_from(b) {
                    Ok(t) => t,
                    Err(_) => continue,
                },
                Message::Close(_) => return Ok(None),
                _ => continue,
            };
            match self.protocol {
                Protocol::Centrifugo => {
                    if has_empty_line(text.as_bytes()) {
                        self.pending_pong = true;
                        if text.len() == 2 {
                            continue;
                        }
                    }
                }
                Protocol::EngineIo => {
                    if text.as_str() == "2" {
                        self.pending_pong = true;
                        continue;
                    }
                }
                Protocol::Raw => {}
            }
            return Ok(Some(text));
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
    fn stamps_at_the_edges() {
        let mut seen = Vec::new();
        for_each_stamp(b"\"bt\":7", b"\"bt\":", |v| seen.push(v));
        for_each_stamp(b"no stamp here", b"\"bt\":", |v| seen.push(v));
        for_each_stamp(b"\"bt\":", b"\"bt\":", |v| seen.push(v));
        assert_eq!(seen, vec![7, 0]);
    }
}
