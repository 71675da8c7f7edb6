//! A client of the unidirectional endpoints, the way `EventSource`, `curl -N`
//! or a bare WebSocket use them: it sends one connect request and then only
//! reads pushes, which arrive unwrapped (`{"connect":…}`,
//! `{"channel":…,"pub":…}`, `{}` pings, `{"disconnect":…}`).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tokio::time::Instant;

use crate::client::handshake;
use crate::transport::{Received, StreamWire, Wire};
use crate::DEFAULT_WAIT;

/// A unidirectional transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UniTransport {
    /// `/connection/uni_websocket`: the connect request is the first message.
    WebSocket,
    /// `/connection/uni_sse`: the connect request is in `cf_connect`.
    Sse,
    /// `/connection/uni_http_stream`: the connect request is the POST body.
    HttpStream,
}

impl UniTransport {
    /// Every unidirectional transport.
    pub const ALL: [UniTransport; 3] = [
        UniTransport::WebSocket,
        UniTransport::Sse,
        UniTransport::HttpStream,
    ];

    /// The endpoint path.
    pub fn path(self) -> &'static str {
        match self {
            UniTransport::WebSocket => "/connection/uni_websocket",
            UniTransport::Sse => "/connection/uni_sse",
            UniTransport::HttpStream => "/connection/uni_http_stream",
        }
    }
}

impl fmt::Display for UniTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UniTransport::WebSocket => "uni_websocket",
            UniTransport::Sse => "uni_sse",
            UniTransport::HttpStream => "uni_http_stream",
        })
    }
}

/// One unidirectional connection.
pub struct UniClient {
    transport: UniTransport,
    wire: Wire,
    /// Messages read but not yet handed to the test.
    inbox: VecDeque<Value>,
    /// Messages `next_pub` passed over.
    skipped: Vec<Value>,
    /// `{}` pings seen.
    pings: usize,
    /// Code and reason once the server ended the connection.
    close: Option<(u16, String)>,
    /// The socket or stream ended.
    ended: bool,
    /// Deadline for each wait.
    wait: Duration,
}

impl UniClient {
    /// Connects to the unidirectional endpoint with `request` (a
    /// ConnectRequest such as `{"token": …, "subs": {"news": {}}}`).
    ///
    /// # Errors
    ///
    /// Fails when the server refuses the connection or does not answer.
    pub async fn open(
        base_url: &str,
        transport: UniTransport,
        request: &Value,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        let url = format!("{base_url}{}", transport.path());
        let text = request.to_string();
        let http = reqwest::Client::new();
        let wire = match transport {
            UniTransport::WebSocket => {
                let ws_url = url.replacen("http://", "ws://", 1);
                let mut ws = handshake(&ws_url, &[], None)
                    .await?
                    .with_context(|| format!("WebSocket handshake with {ws_url}"))?;
                use futures_util::SinkExt as _;
                tokio::time::timeout_at(
                    deadline,
                    ws.send(tokio_tungstenite::tungstenite::Message::text(text)),
                )
                .await
                .map_err(|_| anyhow!("timed out sending the connect request"))?
                .context("sending the connect request")?;
                Wire::WebSocket(Box::new(ws))
            }
            UniTransport::Sse | UniTransport::HttpStream => {
                let request = if transport == UniTransport::Sse {
                    http.get(&url).query(&[("cf_connect", text)])
                } else {
                    http.post(&url)
                        .header("Content-Type", "application/json")
                        .body(text)
                };
                let response = tokio::time::timeout_at(deadline, request.send())
                    .await
                    .map_err(|_| anyhow!("timed out opening {url}"))?
                    .with_context(|| format!("opening {url}"))?;
                Wire::Stream(
                    StreamWire::open(response, transport == UniTransport::Sse, None).await?,
                )
            }
        };
        Ok(Self {
            transport,
            wire,
            inbox: VecDeque::new(),
            skipped: Vec::new(),
            pings: 0,
            close: None,
            ended: false,
            wait: DEFAULT_WAIT,
        })
    }

    /// Changes how long each wait lasts.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    /// `{}` pings received so far.
    pub fn pings_received(&self) -> usize {
        self.pings
    }

    /// For SSE, how often each field name occurred in the stream so far;
    /// only `data` may appear. `None` for other transports.
    pub fn sse_field_counts(&self) -> Option<&std::collections::BTreeMap<String, usize>> {
        self.wire.sse_field_counts()
    }

    /// Messages `next_pub` passed over.
    pub fn skipped(&self) -> &[Value] {
        &self.skipped
    }

    /// The next message of any kind, pings and the disconnect included.
    ///
    /// # Errors
    ///
    /// Fails on timeout, or when the connection ended.
    pub async fn next_message(&mut self) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.wait;
        self.next_message_until(deadline).await
    }

    async fn next_message_until(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        loop {
            if let Some(message) = self.inbox.pop_front() {
                return Ok(message);
            }
            if let Some((code, reason)) = &self.close {
                bail!(
                    "the {} connection was closed: code {code}, reason {reason:?}",
                    self.transport
                );
            }
            if self.ended {
                bail!("the {} connection ended", self.transport);
            }
            let received = self
                .wire
                .recv(deadline)
                .await
                .with_context(|| format!("reading over {}", self.transport))?;
            self.accept(received)?;
        }
    }

    /// The next publication in `channel` (the `pub` object).
    ///
    /// # Errors
    ///
    /// Fails on timeout, or when the connection ended.
    pub async fn next_pub(&mut self, channel: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.wait;
        loop {
            let message = self.next_message_until(deadline).await.with_context(|| {
                format!(
                    "waiting for a publication in {channel:?} over {}; skipped: {:?}",
                    self.transport, self.skipped
                )
            })?;
            if message.get("channel").and_then(Value::as_str) == Some(channel) {
                if let Some(publication) = message.get("pub") {
                    return Ok(publication.clone());
                }
            }
            self.skipped.push(message);
        }
    }

    /// Reads until the server ends the connection and returns the code and
    /// reason (from the disconnect message or the close frame).
    ///
    /// # Errors
    ///
    /// Fails on timeout, or when the connection ends without a code.
    pub async fn expect_disconnect(&mut self) -> anyhow::Result<(u16, String)> {
        let deadline = Instant::now() + self.wait;
        while self.close.is_none() {
            if self.ended {
                bail!("the {} connection ended without a code", self.transport);
            }
            let received = self.wire.recv(deadline).await?;
            self.accept(received)?;
            self.inbox.clear();
        }
        self.wire.expect_end(deadline).await?;
        self.close.clone().context("no close")
    }

    fn accept(&mut self, received: Received) -> anyhow::Result<()> {
        for line in &received.lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(line).with_context(|| {
                format!(
                    "a message that is not JSON over {}: {line:?}",
                    self.transport
                )
            })?;
            if message.as_object().is_some_and(|o| o.is_empty()) {
                self.pings += 1;
            }
            if let Some(d) = message.get("disconnect") {
                let code = d["code"].as_u64().unwrap_or(0);
                self.close.get_or_insert((
                    u16::try_from(code).unwrap_or(u16::MAX),
                    d["reason"].as_str().unwrap_or("").to_owned(),
                ));
            }
            self.inbox.push_back(message);
        }
        if let Some(close) = received.close {
            // The disconnect message, when there was one, came first and wins.
            self.close.get_or_insert(close);
        }
        if received.ended {
            self.ended = true;
        }
        Ok(())
    }
}
