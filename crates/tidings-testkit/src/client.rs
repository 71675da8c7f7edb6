//! A raw Centrifugo protocol client (JSON over WebSocket) for tests.
//!
//! It is deliberately thin: commands go out as the JSON the test wrote, and
//! every reply the server sends comes back as JSON, one per line of a
//! newline-batched frame. Replies for other ids and pushes that arrive while
//! the client waits for something else are set aside, not dropped.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// How long any single wait lasts unless a test says otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// Raw frames kept from the tail of a connection that `expect_close` skipped.
const SKIPPED_FRAMES_KEPT: usize = 64;

/// What a command led to: a reply, or the server closing the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The reply carrying the command's id.
    Reply(Value),
    /// The WebSocket close code and reason.
    Closed(u16, String),
}

/// One WebSocket connection speaking the Centrifugo JSON protocol.
pub struct WsClient {
    /// The socket.
    ws: WebSocketStream<TcpStream>,
    /// Replies split out of frames but not yet handed to the test.
    inbox: VecDeque<Value>,
    /// Pushes (the inner `push` objects) set aside while waiting for a reply.
    pushes: VecDeque<Value>,
    /// Replies to other ids set aside while waiting for something else.
    replies: Vec<Value>,
    /// Pushes that `next_push_of` skipped because they were of another kind.
    skipped_pushes: Vec<Value>,
    /// The last frames `expect_close` read past, for failure messages.
    skipped_frames: VecDeque<String>,
    /// The next command id to hand out; Centrifugo ids start at 1.
    next_id: u64,
    /// Answer server pings (`{}`) with a pong (`{}`) as SDKs do.
    auto_pong: bool,
    /// Close code and reason, once the server closed.
    close: Option<(u16, String)>,
    /// Text or binary frames received, to observe server-side batching.
    frames: usize,
    /// Server pings seen.
    pings: usize,
    /// Deadline for each wait.
    wait: Duration,
    /// The `connect` result, once connected.
    connect_result: Option<Value>,
}

/// Performs the WebSocket handshake and returns the HTTP status the server
/// answered with: 101 when it upgraded, else the rejection status.
///
/// # Errors
///
/// Fails when the server cannot be reached at all.
pub async fn handshake_status(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<u16> {
    match handshake(url, headers, None).await? {
        Ok(_) => Ok(101),
        Err(tungstenite::Error::Http(response)) => Ok(response.status().as_u16()),
        Err(e) => Err(anyhow!("WebSocket handshake with {url} failed: {e}")),
    }
}

/// Dials `url` (optionally with a small receive buffer, so a test can stop
/// reading and have the server notice soon) and runs the handshake.
pub(crate) async fn handshake(
    url: &str,
    headers: &[(&str, &str)],
    recv_buffer: Option<u32>,
) -> anyhow::Result<Result<WebSocketStream<TcpStream>, tungstenite::Error>> {
    let mut request = url
        .into_client_request()
        .with_context(|| format!("bad WebSocket URL {url}"))?;
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).context("header name")?,
            HeaderValue::from_str(value).context("header value")?,
        );
    }
    let host = request.uri().host().context("URL has no host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating socket")?;
    if let Some(size) = recv_buffer {
        socket
            .set_recv_buffer_size(size)
            .context("setting SO_RCVBUF")?;
    }
    let stream = timeout(DEFAULT_WAIT, socket.connect(addr))
        .await
        .map_err(|_| anyhow!("timed out connecting to {addr}"))?
        .with_context(|| format!("connecting to {addr}"))?;
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let result = timeout(
        DEFAULT_WAIT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    .map_err(|_| anyhow!("timed out in the WebSocket handshake with {url}"))?;
    Ok(result.map(|(ws, _response)| ws))
}

/// The id of a reply, when it answers a command (pushes have none).
pub(crate) fn reply_id(reply: &Value) -> Option<u64> {
    reply.get("id").and_then(Value::as_u64).filter(|id| *id > 0)
}

/// A server ping is an empty reply.
pub(crate) fn is_ping(reply: &Value) -> bool {
    reply.as_object().is_some_and(|o| o.is_empty())
}

/// The method of a command: its first key other than `id`.
pub(crate) fn command_method(cmd: &Value) -> Option<String> {
    cmd.as_object()?.keys().find(|k| *k != "id").cloned()
}

impl WsClient {
    /// Opens a WebSocket to `url` (without sending `connect`).
    ///
    /// # Errors
    ///
    /// Fails when the handshake fails.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        Self::open_with(url, &[], None).await
    }

    /// Opens a WebSocket sending extra handshake headers (e.g. `Origin`).
    ///
    /// # Errors
    ///
    /// Fails when the handshake fails.
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::open_with(url, headers, None).await
    }

    /// Opens a WebSocket whose socket has a small receive buffer, for slow
    /// consumer tests.
    ///
    /// # Errors
    ///
    /// Fails when the handshake fails.
    pub async fn open_with_recv_buffer(url: &str, bytes: u32) -> anyhow::Result<Self> {
        Self::open_with(url, &[], Some(bytes)).await
    }

    async fn open_with(
        url: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> anyhow::Result<Self> {
        let ws = handshake(url, headers, recv_buffer)
            .await?
            .with_context(|| format!("WebSocket handshake with {url}"))?;
        Ok(Self {
            ws,
            inbox: VecDeque::new(),
            pushes: VecDeque::new(),
            replies: Vec::new(),
            skipped_pushes: Vec::new(),
            skipped_frames: VecDeque::new(),
            next_id: 1,
            auto_pong: true,
            close: None,
            frames: 0,
            pings: 0,
            wait: DEFAULT_WAIT,
            connect_result: None,
        })
    }

    /// Changes how long each wait lasts.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// Whether to answer server pings (on by default).
    pub fn set_auto_pong(&mut self, on: bool) {
        self.auto_pong = on;
    }

    /// Hands out the next command id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The `client` id from the connect reply.
    pub fn client_id(&self) -> Option<&str> {
        self.connect_result.as_ref()?.get("client")?.as_str()
    }

    /// The whole connect result.
    pub fn connect_result(&self) -> Option<&Value> {
        self.connect_result.as_ref()
    }

    /// Frames received so far.
    pub fn frames_received(&self) -> usize {
        self.frames
    }

    /// Server pings received so far.
    pub fn pings_received(&self) -> usize {
        self.pings
    }

    /// The close code and reason, if the server has closed.
    pub fn close_status(&self) -> Option<(u16, String)> {
        self.close.clone()
    }

    /// Pushes that `next_push_of` passed over.
    pub fn skipped_pushes(&self) -> &[Value] {
        &self.skipped_pushes
    }

    /// Sends one command as one frame.
    ///
    /// # Errors
    ///
    /// Fails when the socket cannot be written.
    pub async fn send(&mut self, cmd: &Value) -> anyhow::Result<()> {
        self.send_raw(&cmd.to_string()).await
    }

    /// Sends several commands newline-joined in one frame.
    ///
    /// # Errors
    ///
    /// Fails when the socket cannot be written.
    pub async fn send_batch(&mut self, cmds: &[Value]) -> anyhow::Result<()> {
        let text = cmds
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        self.send_raw(&text).await
    }

    /// Sends `text` as one text frame, exactly as given.
    ///
    /// # Errors
    ///
    /// Fails when the socket cannot be written.
    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        timeout(self.wait, self.ws.send(Message::text(text.to_owned())))
            .await
            .map_err(|_| anyhow!("timed out sending a frame"))?
            .context("sending a frame")
    }

    /// Sends `bytes` as one binary frame.
    ///
    /// # Errors
    ///
    /// Fails when the socket cannot be written.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        timeout(self.wait, self.ws.send(Message::binary(bytes)))
            .await
            .map_err(|_| anyhow!("timed out sending a frame"))?
            .context("sending a frame")
    }

    /// Reads the next text frame from the socket (skipping control frames),
    /// recording a close.
    async fn read_frame_until(&mut self, deadline: Instant) -> anyhow::Result<String> {
        loop {
            if let Some((code, reason)) = &self.close {
                bail!("the server closed the connection: code {code}, reason {reason:?}");
            }
            let message = match timeout_at(deadline, self.ws.next()).await {
                Err(_) => bail!("timed out waiting for a frame"),
                Ok(None) => bail!("the connection ended without a close frame"),
                Ok(Some(Err(e))) => bail!("WebSocket error before any close frame: {e}"),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    self.frames += 1;
                    return Ok(text.as_str().to_owned());
                }
                Message::Binary(bytes) => {
                    self.frames += 1;
                    return String::from_utf8(bytes.to_vec())
                        .context("a binary frame that is not UTF-8");
                }
                Message::Close(frame) => {
                    self.close = Some(match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
                        None => (1005, String::new()),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Splits a frame into replies, answering pings when asked to.
    async fn accept_frame(&mut self, text: &str) -> anyhow::Result<()> {
        for line in text.split('\n') {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let reply: Value = serde_json::from_str(line)
                .with_context(|| format!("the server sent a line that is not JSON: {line:?}"))?;
            if is_ping(&reply) {
                self.pings += 1;
                if self.auto_pong {
                    self.send_raw("{}").await?;
                }
            }
            self.inbox.push_back(reply);
        }
        Ok(())
    }

    async fn recv_reply_until(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        loop {
            if let Some(reply) = self.inbox.pop_front() {
                return Ok(reply);
            }
            let text = self.read_frame_until(deadline).await?;
            self.accept_frame(&text).await?;
        }
    }

    /// The next reply of any kind (command reply, push or ping), in arrival
    /// order. Replies and pushes set aside earlier are not returned here.
    ///
    /// # Errors
    ///
    /// Fails on timeout, a close, or a line that is not JSON.
    pub async fn recv_reply(&mut self) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.wait;
        self.recv_reply_until(deadline).await
    }

    /// Reads the next whole frame as raw text, before any splitting.
    /// Replies already split out of earlier frames stay queued.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a close.
    pub async fn recv_frame(&mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + self.wait;
        self.read_frame_until(deadline).await
    }

    /// Waits for the reply with `id`, setting aside pushes and other replies.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a close.
    pub async fn wait_reply(&mut self, id: u64) -> anyhow::Result<Value> {
        if let Some(pos) = self.replies.iter().position(|r| reply_id(r) == Some(id)) {
            return Ok(self.replies.remove(pos));
        }
        let deadline = Instant::now() + self.wait;
        loop {
            let reply = self
                .recv_reply_until(deadline)
                .await
                .with_context(|| format!("waiting for the reply to command {id}"))?;
            if reply_id(&reply) == Some(id) {
                return Ok(reply);
            }
            self.set_aside(reply);
        }
    }

    fn set_aside(&mut self, reply: Value) {
        if let Some(push) = reply.get("push") {
            self.pushes.push_back(push.clone());
        } else if !is_ping(&reply) {
            self.replies.push(reply);
        }
    }

    /// Sends `cmd` (adding an `id` when it has none) and returns the whole
    /// reply for that id.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a close.
    pub async fn call(&mut self, cmd: Value) -> anyhow::Result<Value> {
        let (id, cmd) = self.with_id(cmd);
        self.send(&cmd).await?;
        self.wait_reply(id).await
    }

    /// Sends `cmd` and reports whether it got a reply or the server closed.
    ///
    /// # Errors
    ///
    /// Fails on timeout or when the connection drops without a close frame.
    pub async fn call_or_close(&mut self, cmd: Value) -> anyhow::Result<Outcome> {
        let (id, cmd) = self.with_id(cmd);
        if let Err(e) = self.send(&cmd).await {
            if let Some((code, reason)) = self.close.clone() {
                return Ok(Outcome::Closed(code, reason));
            }
            // A write can fail because the server already closed; read why.
            return match self.expect_close().await {
                Ok((code, reason)) => Ok(Outcome::Closed(code, reason)),
                Err(_) => Err(e),
            };
        }
        match self.wait_reply(id).await {
            Ok(reply) => Ok(Outcome::Reply(reply)),
            Err(e) => match self.close.clone() {
                Some((code, reason)) => Ok(Outcome::Closed(code, reason)),
                None => Err(e),
            },
        }
    }

    /// Sends raw text and waits for the server to close, returning the close
    /// code and reason (what it sent before closing is skipped).
    ///
    /// # Errors
    ///
    /// Fails on timeout or when the connection drops without a close frame.
    pub async fn send_raw_expect_close(&mut self, text: &str) -> anyhow::Result<(u16, String)> {
        // The write may race with the server closing; the close is what counts.
        let _ = self.send_raw(text).await;
        self.expect_close().await
    }

    fn with_id(&mut self, mut cmd: Value) -> (u64, Value) {
        let existing = cmd.get("id").and_then(Value::as_u64).filter(|id| *id > 0);
        let id = match existing {
            Some(id) => id,
            None => {
                let id = self.next_id();
                cmd["id"] = json!(id);
                id
            }
        };
        (id, cmd)
    }

    /// Sends `cmd` and returns its result object (`reply[method]`, or `{}`
    /// when the server left an empty result out).
    ///
    /// # Errors
    ///
    /// Fails when the reply carries an `error`, on timeout or on a close.
    pub async fn call_result(&mut self, cmd: Value) -> anyhow::Result<Value> {
        let method = command_method(&cmd).context("command has no method")?;
        let shown = cmd.to_string();
        let reply = self.call(cmd).await?;
        if let Some(error) = reply.get("error") {
            bail!("{shown} failed: {error}");
        }
        Ok(reply.get(&method).cloned().unwrap_or_else(|| json!({})))
    }

    /// Sends `cmd`, expecting an error reply, and returns the error object.
    ///
    /// # Errors
    ///
    /// Fails when the command succeeds, on timeout or on a close.
    pub async fn call_error(&mut self, cmd: Value) -> anyhow::Result<Value> {
        let shown = cmd.to_string();
        let reply = self.call(cmd).await?;
        reply
            .get("error")
            .cloned()
            .ok_or_else(|| anyhow!("{shown} was expected to fail but got {reply}"))
    }

    /// Sends `cmd` and returns the error code of its reply.
    ///
    /// # Errors
    ///
    /// As [`Self::call_error`].
    pub async fn error_code(&mut self, cmd: Value) -> anyhow::Result<u64> {
        let error = self.call_error(cmd).await?;
        error
            .get("code")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("error without a numeric code: {error}"))
    }

    /// Sends `connect` with `params` and returns its result.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a close.
    pub async fn connect(&mut self, params: Value) -> anyhow::Result<Value> {
        let result = self.call_result(json!({ "connect": params })).await?;
        self.connect_result = Some(result.clone());
        Ok(result)
    }

    /// Subscribes to `channel` and returns the subscribe result.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a close.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<Value> {
        self.subscribe_with(json!({ "channel": channel })).await
    }

    /// Subscribes with the given request fields (recovery and so on).
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a close.
    pub async fn subscribe_with(&mut self, params: Value) -> anyhow::Result<Value> {
        self.call_result(json!({ "subscribe": params })).await
    }

    /// Unsubscribes from `channel`.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a close.
    pub async fn unsubscribe(&mut self, channel: &str) -> anyhow::Result<Value> {
        self.call_result(json!({ "unsubscribe": { "channel": channel } }))
            .await
    }

    /// Publishes `data` into `channel` from this client.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a close.
    pub async fn publish(&mut self, channel: &str, data: Value) -> anyhow::Result<Value> {
        self.call_result(json!({ "publish": { "channel": channel, "data": data } }))
            .await
    }

    /// The next push (the object inside `"push"`), skipping pings and
    /// setting aside command replies.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a close.
    pub async fn next_push(&mut self) -> anyhow::Result<Value> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(push);
        }
        let deadline = Instant::now() + self.wait;
        loop {
            let reply = self
                .recv_reply_until(deadline)
                .await
                .context("waiting for a push")?;
            if let Some(push) = reply.get("push") {
                return Ok(push.clone());
            }
            self.set_aside(reply);
        }
    }

    /// The next push of `kind` (`pub`, `join`, `leave`, `unsubscribe`,
    /// `subscribe`, `disconnect`, …) in `channel`, returning the whole push.
    /// Pushes of other kinds or channels are kept in
    /// [`Self::skipped_pushes`].
    ///
    /// # Errors
    ///
    /// Fails on timeout or a close.
    pub async fn next_push_of(&mut self, kind: &str, channel: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.wait;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let saved = self.wait;
            self.wait = remaining;
            let push = self.next_push().await;
            self.wait = saved;
            let push = push.with_context(|| {
                format!(
                    "waiting for a {kind:?} push in {channel:?}; skipped so far: {:?}",
                    self.skipped_pushes
                )
            })?;
            let in_channel = push.get("channel").and_then(Value::as_str).unwrap_or("") == channel;
            if in_channel && push.get(kind).is_some() {
                return Ok(push);
            }
            self.skipped_pushes.push(push);
        }
    }

    /// The next publication in `channel` (the `pub` object).
    ///
    /// # Errors
    ///
    /// Fails on timeout or a close.
    pub async fn next_pub(&mut self, channel: &str) -> anyhow::Result<Value> {
        let push = self.next_push_of("pub", channel).await?;
        Ok(push["pub"].clone())
    }

    /// Waits up to the default wait for the server to close, reading past
    /// anything else, and returns the close code and reason.
    ///
    /// # Errors
    ///
    /// Fails on timeout, or when the connection ends without a close frame.
    pub async fn expect_close(&mut self) -> anyhow::Result<(u16, String)> {
        self.expect_close_within(self.wait).await
    }

    /// Like [`Self::expect_close`] with an explicit limit.
    ///
    /// # Errors
    ///
    /// As [`Self::expect_close`].
    pub async fn expect_close_within(&mut self, limit: Duration) -> anyhow::Result<(u16, String)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(close) = &self.close {
                return Ok(close.clone());
            }
            match self.read_frame_until(deadline).await {
                Ok(text) => {
                    if self.skipped_frames.len() == SKIPPED_FRAMES_KEPT {
                        self.skipped_frames.pop_front();
                    }
                    self.skipped_frames.push_back(text);
                }
                Err(e) => {
                    if let Some(close) = &self.close {
                        return Ok(close.clone());
                    }
                    let tail: Vec<&str> = self
                        .skipped_frames
                        .iter()
                        .rev()
                        .take(3)
                        .map(|s| &s[..s.len().min(300)])
                        .collect();
                    return Err(e.context(format!(
                        "expected the server to close the connection; last frames: {tail:?}"
                    )));
                }
            }
        }
    }

    /// Closes the connection from the client side with a normal close.
    ///
    /// # Errors
    ///
    /// Fails when the close frame cannot be written.
    pub async fn close(mut self) -> anyhow::Result<()> {
        timeout(self.wait, self.ws.close(None))
            .await
            .map_err(|_| anyhow!("timed out closing"))?
            .context("closing")
    }
}
