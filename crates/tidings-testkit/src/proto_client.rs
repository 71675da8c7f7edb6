//! A Centrifugo protocol client that runs over any bidirectional transport,
//! so one scenario can be written once and proven over each.
//!
//! It keeps the shape of [`crate::WsClient`]: commands go out as the JSON the
//! test wrote, replies come back by id, pushes that arrive meanwhile are set
//! aside, and server pings are answered. The end of a connection is reported
//! the same way whatever the transport: a WebSocket close frame, a disconnect
//! push followed by the end of a stream, or a long-poll `close` all become
//! `(code, reason)`.
//!
//! Reading happens only while the test waits for something (long polling
//! keeps one poll in flight). A test that stops asking is therefore a client
//! that stops reading, which is what a slow-consumer test needs.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::client::{command_method, handshake, is_ping, reply_id};
use crate::transport::{Emulation, LongPollWire, Received, StreamWire, Transport, Wire};
use crate::DEFAULT_WAIT;

/// A connection over one [`Transport`], speaking the JSON protocol.
pub struct ProtoClient {
    transport: Transport,
    wire: Wire,
    /// Replies read but not yet handed to the test.
    inbox: VecDeque<Value>,
    /// Pushes (the inner `push` objects) set aside while waiting for a reply.
    pushes: VecDeque<Value>,
    /// Replies to other ids set aside while waiting for something else.
    replies: Vec<Value>,
    /// Pushes that `next_push_of` passed over.
    skipped_pushes: Vec<Value>,
    /// The next command id; Centrifugo ids start at 1.
    next_id: u64,
    /// Answer server pings (`{}`) with a pong (`{}`), as SDKs do.
    auto_pong: bool,
    /// Server pings seen.
    pings: usize,
    /// Code and reason once the server ended the connection.
    close: Option<(u16, String)>,
    /// The socket or stream ended (with or without a close).
    ended: bool,
    /// Deadline for each wait.
    wait: Duration,
    /// The connect result.
    connect_result: Option<Value>,
}

impl ProtoClient {
    /// Opens a connection over `transport` to the server at `base_url`
    /// (`http://ADDR`) and connects with `params`, failing when the connect
    /// reply is an error.
    ///
    /// # Errors
    ///
    /// As described, plus any transport failure or timeout.
    pub async fn connect(
        base_url: &str,
        transport: Transport,
        params: Value,
    ) -> anyhow::Result<Self> {
        let frame = json!({ "id": 1, "connect": params }).to_string();
        let mut client = Self::open(base_url, transport, &frame).await?;
        client.next_id = 2;
        let reply = client
            .wait_reply(1)
            .await
            .with_context(|| format!("connecting over {transport}"))?;
        if let Some(error) = reply.get("error") {
            bail!("connect over {transport} failed: {error}");
        }
        client.connect_result = Some(reply["connect"].clone());
        Ok(client)
    }

    /// Opens a connection and sends `first` as the first frame: over
    /// WebSocket as a message, over SSE in `cf_connect`, over HTTP streaming
    /// and long polling as the body. Nothing is read yet.
    ///
    /// # Errors
    ///
    /// Fails when the server refuses the connection or does not answer.
    pub async fn open(base_url: &str, transport: Transport, first: &str) -> anyhow::Result<Self> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        let http = reqwest::Client::new();
        let url = format!("{base_url}{}", transport.path());
        let wire = match transport {
            Transport::WebSocket => {
                let ws_url = url.replacen("http://", "ws://", 1);
                let mut ws = handshake(&ws_url, &[], None)
                    .await?
                    .with_context(|| format!("WebSocket handshake with {ws_url}"))?;
                use futures_util::SinkExt as _;
                tokio::time::timeout_at(
                    deadline,
                    ws.send(tokio_tungstenite::tungstenite::Message::text(
                        first.to_owned(),
                    )),
                )
                .await
                .map_err(|_| anyhow!("timed out sending the first frame"))?
                .context("sending the first frame")?;
                Wire::WebSocket(Box::new(ws))
            }
            Transport::Sse | Transport::HttpStream => {
                let request = if transport == Transport::Sse {
                    http.get(&url).query(&[("cf_connect", first)])
                } else {
                    http.post(&url)
                        .header("Content-Type", "application/json")
                        .body(first.to_owned())
                };
                let response = tokio::time::timeout_at(deadline, request.send())
                    .await
                    .map_err(|_| anyhow!("timed out opening {url}"))?
                    .with_context(|| format!("opening {url}"))?;
                let emulation = Emulation::new(http.clone(), base_url);
                Wire::Stream(
                    StreamWire::open(response, transport == Transport::Sse, Some(emulation))
                        .await?,
                )
            }
            Transport::LongPoll => {
                Wire::LongPoll(LongPollWire::open(http, base_url, first, deadline).await?)
            }
        };
        Ok(Self {
            transport,
            wire,
            inbox: VecDeque::new(),
            pushes: VecDeque::new(),
            replies: Vec::new(),
            skipped_pushes: Vec::new(),
            next_id: 1,
            auto_pong: true,
            pings: 0,
            close: None,
            ended: false,
            wait: DEFAULT_WAIT,
            connect_result: None,
        })
    }

    /// Sends this client's emulation requests and long polls to the server at
    /// `base_url` (`http://ADDR`) from now on, while its stream stays where it
    /// is: what a load balancer without sticky sessions does.
    pub fn route_requests_to(&mut self, base_url: &str) {
        self.wire.route_requests_to(base_url);
    }

    /// Whether the connection is over (the server disconnected, or the socket or
    /// stream ended).
    pub fn is_gone(&self) -> bool {
        self.close.is_some() || self.ended
    }

    /// The transport this client runs over.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Changes how long each wait lasts.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// Whether to answer server pings (on by default).
    pub fn set_auto_pong(&mut self, on: bool) {
        self.auto_pong = on;
    }

    /// Long polling only: whether the next poll starts as soon as a
    /// response arrives (the default, as a browser client does) or only when
    /// the test reads again, which leaves the client between polls, as a
    /// client busy with what it just received is.
    pub fn set_eager_polling(&mut self, on: bool) {
        if let Wire::LongPoll(poll) = &mut self.wire {
            poll.set_eager(on);
        }
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

    /// The emulation session id (not for WebSocket).
    pub fn session(&self) -> Option<&str> {
        self.wire.session()
    }

    /// Server pings received so far.
    pub fn pings_received(&self) -> usize {
        self.pings
    }

    /// Long-poll requests completed so far (0 for other transports).
    pub fn polls_completed(&self) -> u64 {
        match &self.wire {
            Wire::LongPoll(poll) => poll.polls(),
            _ => 0,
        }
    }

    /// For SSE, how often each field name occurred in the stream so far;
    /// only `data` may appear. `None` for other transports.
    pub fn sse_field_counts(&self) -> Option<&std::collections::BTreeMap<String, usize>> {
        self.wire.sse_field_counts()
    }

    /// The code and reason, once the server ended the connection.
    pub fn disconnect_status(&self) -> Option<(u16, String)> {
        self.close.clone()
    }

    /// Pushes that `next_push_of` passed over.
    pub fn skipped_pushes(&self) -> &[Value] {
        &self.skipped_pushes
    }

    /// Sends `cmd` as one frame.
    ///
    /// # Errors
    ///
    /// Fails when the frame cannot be delivered.
    pub async fn send(&mut self, cmd: &Value) -> anyhow::Result<()> {
        self.send_raw(&cmd.to_string()).await
    }

    /// Sends `text` as one frame, exactly as given.
    ///
    /// # Errors
    ///
    /// Fails when the frame cannot be delivered (for emulation, any status
    /// other than 204).
    pub async fn send_raw(&mut self, text: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.wait;
        self.wire.send(text, deadline).await
    }

    /// Sends `cmd` (adding an `id` when it has none) and returns the whole
    /// reply for that id.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a disconnect.
    pub async fn call(&mut self, mut cmd: Value) -> anyhow::Result<Value> {
        let id = match cmd.get("id").and_then(Value::as_u64).filter(|id| *id > 0) {
            Some(id) => id,
            None => {
                let id = self.next_id();
                cmd["id"] = json!(id);
                id
            }
        };
        self.send(&cmd).await?;
        self.wait_reply(id).await
    }

    /// Sends `cmd` and returns its result object (`reply[method]`, or `{}`
    /// when the server left an empty result out).
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a disconnect.
    pub async fn call_result(&mut self, cmd: Value) -> anyhow::Result<Value> {
        let method = command_method(&cmd).context("command has no method")?;
        let shown = cmd.to_string();
        let reply = self.call(cmd).await?;
        if let Some(error) = reply.get("error") {
            bail!("{shown} over {} failed: {error}", self.transport);
        }
        Ok(reply.get(&method).cloned().unwrap_or_else(|| json!({})))
    }

    /// Subscribes to `channel`.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a disconnect.
    pub async fn subscribe(&mut self, channel: &str) -> anyhow::Result<Value> {
        self.subscribe_with(json!({ "channel": channel })).await
    }

    /// Subscribes with the given request fields (recovery and so on).
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a disconnect.
    pub async fn subscribe_with(&mut self, params: Value) -> anyhow::Result<Value> {
        self.call_result(json!({ "subscribe": params })).await
    }

    /// Publishes `data` into `channel` from this client.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a disconnect.
    pub async fn publish(&mut self, channel: &str, data: Value) -> anyhow::Result<Value> {
        self.call_result(json!({ "publish": { "channel": channel, "data": data } }))
            .await
    }

    /// The `presence` map of `channel`, by client id.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a disconnect.
    pub async fn presence(&mut self, channel: &str) -> anyhow::Result<Value> {
        let result = self
            .call_result(json!({ "presence": { "channel": channel } }))
            .await?;
        Ok(result.get("presence").cloned().unwrap_or_else(|| json!({})))
    }

    /// The history result of `channel` with extra request fields.
    ///
    /// # Errors
    ///
    /// Fails on an error reply, a timeout or a disconnect.
    pub async fn history(&mut self, channel: &str, params: Value) -> anyhow::Result<Value> {
        let mut request = json!({ "channel": channel });
        if let (Some(r), Some(p)) = (request.as_object_mut(), params.as_object()) {
            r.extend(p.clone());
        }
        self.call_result(json!({ "history": request })).await
    }

    /// The next reply of any kind except pings, in arrival order. Replies
    /// and pushes set aside earlier are not returned here.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a disconnect.
    pub async fn recv_reply(&mut self) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.wait;
        self.recv_reply_until(deadline).await
    }

    /// Waits for the reply with `id`, setting aside pushes and other replies.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a disconnect.
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

    /// The next push (the object inside `"push"`), setting aside replies.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a disconnect.
    pub async fn next_push(&mut self) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.wait;
        self.next_push_until(deadline).await
    }

    async fn next_push_until(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        if let Some(push) = self.pushes.pop_front() {
            return Ok(push);
        }
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

    /// The next push of `kind` (`pub`, `join`, `leave`, …) in `channel`,
    /// returning the whole push; others are kept in
    /// [`Self::skipped_pushes`].
    ///
    /// # Errors
    ///
    /// Fails on timeout or a disconnect.
    pub async fn next_push_of(&mut self, kind: &str, channel: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.wait;
        loop {
            let push = self.next_push_until(deadline).await.with_context(|| {
                format!(
                    "waiting for a {kind:?} push in {channel:?} over {}; skipped so far: {:?}",
                    self.transport, self.skipped_pushes
                )
            })?;
            let in_channel = push.get("channel").and_then(Value::as_str) == Some(channel);
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
    /// Fails on timeout or a disconnect.
    pub async fn next_pub(&mut self, channel: &str) -> anyhow::Result<Value> {
        let push = self.next_push_of("pub", channel).await?;
        Ok(push["pub"].clone())
    }

    /// Reads (setting everything aside) until `count` server pings arrived
    /// in total.
    ///
    /// # Errors
    ///
    /// Fails on timeout or a disconnect.
    pub async fn wait_for_pings(&mut self, count: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.pings < count {
            let received = self
                .read_wire(deadline)
                .await
                .with_context(|| format!("waiting for ping {} of {count}", self.pings + 1))?;
            self.accept(received).await?;
            while let Some(reply) = self.inbox.pop_front() {
                self.set_aside(reply);
            }
        }
        Ok(())
    }

    /// Waits for the server to end the connection, reading past anything
    /// else, and returns the code and reason. For streams it also checks
    /// that nothing follows the disconnect push and the stream ends.
    ///
    /// # Errors
    ///
    /// Fails on timeout, or when the connection ends without a code.
    pub async fn expect_disconnect(&mut self) -> anyhow::Result<(u16, String)> {
        self.expect_disconnect_within(self.wait).await
    }

    /// The same as [`Self::expect_disconnect`], named as on
    /// [`crate::WsClient`].
    ///
    /// # Errors
    ///
    /// As [`Self::expect_disconnect`].
    pub async fn expect_close(&mut self) -> anyhow::Result<(u16, String)> {
        self.expect_disconnect().await
    }

    /// Like [`Self::expect_disconnect`] with an explicit limit.
    ///
    /// # Errors
    ///
    /// As [`Self::expect_disconnect`].
    pub async fn expect_disconnect_within(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<(u16, String)> {
        let deadline = Instant::now() + limit;
        let mut skipped = 0usize;
        let mut last = None;
        while self.close.is_none() {
            if self.ended {
                bail!(
                    "the {} connection ended without a disconnect code",
                    self.transport
                );
            }
            let received = self.read_wire(deadline).await.with_context(|| {
                format!(
                    "expected the server to disconnect the {} client; {skipped} replies read \
                     past, the last: {last:?}",
                    self.transport
                )
            })?;
            self.accept(received).await?;
            skipped += self.inbox.len();
            if let Some(reply) = self.inbox.back() {
                let text = reply.to_string();
                last = Some(text[..text.len().min(300)].to_owned());
            }
            self.inbox.clear();
        }
        self.wire.expect_end(deadline).await?;
        self.close.clone().context("no close")
    }

    /// Says goodbye the transport's way (close frame, `DELETE`, or dropping
    /// the stream) and lets the connection go.
    ///
    /// # Errors
    ///
    /// Fails when the goodbye cannot be sent.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.wait;
        self.wire.goodbye(deadline).await
    }

    /// Vanishes without a goodbye: the socket or stream is dropped, and a
    /// long-poll client simply stops polling.
    pub fn vanish(self) {}

    fn set_aside(&mut self, reply: Value) {
        if let Some(push) = reply.get("push") {
            self.pushes.push_back(push.clone());
        } else {
            self.replies.push(reply);
        }
    }

    async fn read_wire(&mut self, deadline: Instant) -> anyhow::Result<Received> {
        self.wire
            .recv(deadline)
            .await
            .with_context(|| format!("reading over {}", self.transport))
    }

    async fn recv_reply_until(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        loop {
            if let Some(reply) = self.inbox.pop_front() {
                return Ok(reply);
            }
            if let Some((code, reason)) = &self.close {
                bail!(
                    "the server disconnected the {} client: code {code}, reason {reason:?}",
                    self.transport
                );
            }
            if self.ended {
                bail!(
                    "the {} connection ended without a disconnect",
                    self.transport
                );
            }
            let received = self.read_wire(deadline).await?;
            self.accept(received).await?;
        }
    }

    /// Files what a read produced: replies into the inbox, pings answered,
    /// a disconnect push or transport close recorded.
    async fn accept(&mut self, received: Received) -> anyhow::Result<()> {
        for line in &received.lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let reply: Value = serde_json::from_str(line).with_context(|| {
                format!(
                    "the server sent a line that is not JSON over {}: {line:?}",
                    self.transport
                )
            })?;
            if is_ping(&reply) {
                self.pings += 1;
                if self.auto_pong && self.close.is_none() {
                    // A pong that races the end of the session is harmless;
                    // the next read reports the end.
                    let _ = self.send_raw("{}").await;
                }
                continue;
            }
            if let Some(d) = reply.pointer("/push/disconnect") {
                if self.close.is_none() {
                    let code = d["code"].as_u64().unwrap_or(0);
                    let code = u16::try_from(code).unwrap_or(u16::MAX);
                    let reason = d["reason"].as_str().unwrap_or("").to_owned();
                    self.close = Some((code, reason));
                }
                continue;
            }
            if let Some(session) = reply.pointer("/connect/session").and_then(Value::as_str) {
                let node = reply.pointer("/connect/node").and_then(Value::as_str);
                self.wire.set_target(session, node);
            }
            self.inbox.push_back(reply);
        }
        if let Some(close) = received.close {
            self.close.get_or_insert(close);
        }
        if received.ended {
            self.ended = true;
        }
        Ok(())
    }
}
