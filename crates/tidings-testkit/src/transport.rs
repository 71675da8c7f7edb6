//! The client transports and the adapters that carry protocol frames over
//! each of them.
//!
//! A [`Wire`] knows framing only: it sends one command frame and hands back
//! the reply lines it read, plus the end of the conversation when the
//! transport has its own way of saying so (a WebSocket close frame, the
//! long-poll `close` object, the end of a stream). What the lines mean is
//! the business of [`crate::ProtoClient`] and [`crate::UniClient`].
//!
//! - WebSocket: text frames of newline-joined replies.
//! - SSE: one `data:` event per reply, read with [`crate::sse::SseParser`];
//!   commands go to `POST /emulation`.
//! - HTTP streaming: newline-terminated replies; commands via `/emulation`.
//! - Long polling: `GET /connection/long_poll?session=S&cursor=N` returns
//!   numbered messages; the wire keeps one poll in flight on its own task
//!   (so the server sees acknowledgements promptly), drops messages it
//!   already has, and fails loudly on a gap.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures_util::{SinkExt as _, Stream, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::sse::SseParser;

/// How long one long-poll request may take before the client gives up on it
/// (well above any hold a test configures; the default hold is 25 s).
const POLL_REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// How often one poll is tried when the request fails on the way.
const POLL_ATTEMPTS: u32 = 3;

/// A bidirectional client transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `/connection/websocket`.
    WebSocket,
    /// `/connection/sse` plus `POST /emulation`.
    Sse,
    /// `/connection/http_stream` plus `POST /emulation`.
    HttpStream,
    /// `/connection/long_poll` plus `POST /emulation`.
    LongPoll,
}

impl Transport {
    /// Every transport, for scenarios that run over all of them.
    pub const ALL: [Transport; 4] = [
        Transport::WebSocket,
        Transport::Sse,
        Transport::HttpStream,
        Transport::LongPoll,
    ];

    /// The name used in endpoint paths and test names.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::HttpStream => "http_stream",
            Transport::LongPoll => "long_poll",
        }
    }

    /// The endpoint path on the server.
    pub fn path(self) -> &'static str {
        match self {
            Transport::WebSocket => "/connection/websocket",
            Transport::Sse => "/connection/sse",
            Transport::HttpStream => "/connection/http_stream",
            Transport::LongPoll => "/connection/long_poll",
        }
    }

    /// Whether commands travel by `POST /emulation` (all but WebSocket).
    pub fn is_emulated(self) -> bool {
        self != Transport::WebSocket
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one read from a wire produced.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// Reply lines, one JSON value each (blank lines may occur).
    pub lines: Vec<String>,
    /// A close the transport reported by its own means.
    pub close: Option<(u16, String)>,
    /// The socket or stream ended.
    pub ended: bool,
}

impl Received {
    fn lines(lines: Vec<String>) -> Self {
        Self {
            lines,
            ..Self::default()
        }
    }

    fn ended() -> Self {
        Self {
            ended: true,
            ..Self::default()
        }
    }
}

/// A byte stream of a streaming response body.
type BodyStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One connection's transport.
pub(crate) enum Wire {
    /// A WebSocket; every frame is sent and received on it.
    WebSocket(Box<WebSocketStream<TcpStream>>),
    /// An SSE or HTTP-streaming response body.
    Stream(StreamWire),
    /// A long-polling session.
    LongPoll(LongPollWire),
}

impl Wire {
    /// Sends one command frame (or `{}` pong) exactly as given.
    pub async fn send(&mut self, text: &str, deadline: Instant) -> anyhow::Result<()> {
        match self {
            Wire::WebSocket(ws) => timeout_at(deadline, ws.send(Message::text(text.to_owned())))
                .await
                .map_err(|_| anyhow!("timed out sending a frame"))?
                .context("sending a frame"),
            Wire::Stream(stream) => match &stream.emulation {
                Some(emulation) => emulation.send(text, deadline).await,
                None => bail!("a unidirectional stream cannot send"),
            },
            Wire::LongPoll(poll) => poll.emulation.send(text, deadline).await,
        }
    }

    /// Reads what arrives next, up to `deadline`.
    pub async fn recv(&mut self, deadline: Instant) -> anyhow::Result<Received> {
        match self {
            Wire::WebSocket(ws) => recv_ws(ws, deadline).await,
            Wire::Stream(stream) => stream.recv(deadline).await,
            Wire::LongPoll(poll) => poll.recv(deadline).await,
        }
    }

    /// Records the emulation session named in the connect reply.
    pub fn set_target(&mut self, session: &str, node: Option<&str>) {
        let emulation = match self {
            Wire::WebSocket(_) => return,
            Wire::Stream(stream) => match &mut stream.emulation {
                Some(emulation) => emulation,
                None => return,
            },
            Wire::LongPoll(poll) => &mut poll.emulation,
        };
        emulation.session = Some(session.to_owned());
        if let Some(node) = node {
            emulation.node = Some(node.to_owned());
        }
    }

    /// Sends the emulation requests (and long polls) to the server at `base_url`
    /// from now on, as a load balancer without sticky sessions may.
    pub fn route_requests_to(&mut self, base_url: &str) {
        match self {
            Wire::WebSocket(_) => {}
            Wire::Stream(stream) => {
                if let Some(emulation) = &mut stream.emulation {
                    emulation.url = format!("{base_url}/emulation");
                }
            }
            Wire::LongPoll(poll) => {
                poll.url = format!("{base_url}{}", Transport::LongPoll.path());
                poll.emulation.url = format!("{base_url}/emulation");
            }
        }
    }

    /// The emulation session id, once known.
    pub fn session(&self) -> Option<&str> {
        match self {
            Wire::WebSocket(_) => None,
            Wire::Stream(stream) => stream.emulation.as_ref()?.session.as_deref(),
            Wire::LongPoll(poll) => poll.emulation.session.as_deref(),
        }
    }

    /// How often each SSE field name occurred so far (SSE only).
    pub fn sse_field_counts(&self) -> Option<&std::collections::BTreeMap<String, usize>> {
        match self {
            Wire::Stream(StreamWire {
                framing: Framing::Sse(parser),
                ..
            }) => Some(parser.field_counts()),
            _ => None,
        }
    }

    /// Ends the connection from the client side the way the transport says
    /// goodbye: a close frame, `DELETE` for long polling, and for streams
    /// simply no longer reading (the caller drops the wire).
    pub async fn goodbye(&mut self, deadline: Instant) -> anyhow::Result<()> {
        match self {
            Wire::WebSocket(ws) => timeout_at(deadline, (**ws).close(None))
                .await
                .map_err(|_| anyhow!("timed out closing"))?
                .context("closing the WebSocket"),
            Wire::Stream(_) => Ok(()),
            Wire::LongPoll(poll) => poll.delete(deadline).await,
        }
    }

    /// After a disconnect push, checks that a stream ends with nothing more
    /// in it. Other transports have already ended their own way.
    pub async fn expect_end(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let Wire::Stream(stream) = self else {
            return Ok(());
        };
        loop {
            let received = stream
                .recv(deadline)
                .await
                .context("waiting for the stream to end after its disconnect push")?;
            let extra: Vec<&String> = received
                .lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .collect();
            if !extra.is_empty() {
                bail!("the stream went on after its disconnect push: {extra:?}");
            }
            if received.ended {
                return Ok(());
            }
        }
    }
}

/// Reads the next data frame or the close from a WebSocket.
async fn recv_ws(
    ws: &mut WebSocketStream<TcpStream>,
    deadline: Instant,
) -> anyhow::Result<Received> {
    loop {
        let message = match timeout_at(deadline, ws.next()).await {
            Err(_) => bail!("timed out waiting for a frame"),
            Ok(None) => return Ok(Received::ended()),
            Ok(Some(Err(e))) => bail!("WebSocket error: {e}"),
            Ok(Some(Ok(message))) => message,
        };
        let text = match message {
            Message::Text(text) => text.as_str().to_owned(),
            Message::Binary(bytes) => {
                String::from_utf8(bytes.to_vec()).context("a binary frame that is not UTF-8")?
            }
            Message::Close(frame) => {
                let close = match frame {
                    Some(frame) => (u16::from(frame.code), frame.reason.as_str().to_owned()),
                    None => (1005, String::new()),
                };
                return Ok(Received {
                    close: Some(close),
                    ..Received::default()
                });
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        return Ok(Received::lines(
            text.split('\n').map(str::to_owned).collect(),
        ));
    }
}

/// Where emulated commands go, and for which session.
#[derive(Clone)]
pub(crate) struct Emulation {
    /// Shared with the stream or poll requests of the same client.
    http: reqwest::Client,
    /// `http://ADDR/emulation`.
    url: String,
    /// The session id from the connect reply (or the long-poll open answer).
    session: Option<String>,
    /// The node id, which a cluster uses to route the command.
    node: Option<String>,
}

impl Emulation {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            url: format!("{base_url}/emulation"),
            session: None,
            node: None,
        }
    }

    /// POSTs one frame for the session, as centrifuge-js does: the frame is a
    /// JSON string in `data`.
    async fn send(&self, frame: &str, deadline: Instant) -> anyhow::Result<()> {
        let session = self
            .session
            .as_deref()
            .context("no emulation session yet: the connect reply has not arrived")?;
        let mut body = json!({ "session": session, "data": frame });
        if let Some(node) = &self.node {
            body["node"] = json!(node);
        }
        let request = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send();
        let response = timeout_at(deadline, request)
            .await
            .map_err(|_| anyhow!("timed out posting to /emulation"))?
            .context("POST /emulation")?;
        let status = response.status().as_u16();
        if status != 204 && status != 200 {
            let text = response.text().await.unwrap_or_default();
            bail!("POST /emulation -> HTTP {status}: {text}");
        }
        Ok(())
    }
}

/// How a streaming body separates replies.
enum Framing {
    /// `text/event-stream`, one reply per event.
    Sse(Box<SseParser>),
    /// One reply per line; holds the unfinished line.
    Lines(Vec<u8>),
}

/// An SSE or HTTP-streaming response, read as the test asks for more.
pub(crate) struct StreamWire {
    /// The response body; nothing reads it between calls, so a test that
    /// stops asking makes the client stop reading.
    body: BodyStream,
    framing: Framing,
    /// `None` for unidirectional streams.
    emulation: Option<Emulation>,
    /// The body has ended.
    ended: bool,
}

impl StreamWire {
    /// Checks the response and wraps its body. `sse` picks the framing.
    pub async fn open(
        response: reqwest::Response,
        sse: bool,
        emulation: Option<Emulation>,
    ) -> anyhow::Result<Self> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if status != 200 {
            let text = response.text().await.unwrap_or_default();
            bail!("the stream was refused: HTTP {status}: {text}");
        }
        if sse && !content_type.starts_with("text/event-stream") {
            bail!("an SSE response with Content-Type {content_type:?}");
        }
        Ok(Self {
            body: Box::pin(response.bytes_stream()),
            framing: if sse {
                Framing::Sse(Box::default())
            } else {
                Framing::Lines(Vec::new())
            },
            emulation,
            ended: false,
        })
    }

    async fn recv(&mut self, deadline: Instant) -> anyhow::Result<Received> {
        loop {
            let lines = self.take_lines()?;
            if !lines.is_empty() {
                return Ok(Received::lines(lines));
            }
            if self.ended {
                let partial = match &self.framing {
                    Framing::Sse(parser) => parser.has_partial_event(),
                    Framing::Lines(rest) => !rest.is_empty(),
                };
                if partial {
                    bail!("the stream ended in the middle of a reply");
                }
                return Ok(Received::ended());
            }
            match timeout_at(deadline, self.body.next()).await {
                Err(_) => bail!("timed out waiting for data on the stream"),
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    bail!("the stream broke: {e}");
                }
                Ok(Some(Ok(chunk))) => match &mut self.framing {
                    Framing::Sse(parser) => parser.feed(&chunk),
                    Framing::Lines(rest) => rest.extend_from_slice(&chunk),
                },
            }
        }
    }

    /// Complete replies parsed so far. For SSE every event must be exactly
    /// one `data:` line of the default type, and no other field may appear.
    fn take_lines(&mut self) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        match &mut self.framing {
            Framing::Sse(parser) => {
                if let Some(field) = parser.field_counts().keys().find(|f| *f != "data") {
                    bail!(
                        "the SSE stream has a {field:?} field; fields seen: {:?}",
                        parser.field_counts()
                    );
                }
                while let Some(event) = parser.pop() {
                    if event.data_lines != 1 || event.event_type != "message" {
                        bail!("an SSE event that is not one data line: {event:?}");
                    }
                    lines.push(event.data);
                }
            }
            Framing::Lines(rest) => {
                if let Some(end) = rest.iter().rposition(|b| *b == b'\n') {
                    let complete: Vec<u8> = rest.drain(..=end).collect();
                    let text = String::from_utf8(complete).context("a stream that is not UTF-8")?;
                    lines.extend(
                        text.split('\n')
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    );
                }
            }
        }
        Ok(lines)
    }
}

/// The `close` object of a poll response.
#[derive(Deserialize)]
struct PollClose {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// A poll response.
#[derive(Deserialize)]
struct PollBody {
    /// The number of the last message in this response, of the close when the
    /// response carries one, or the client's cursor when there is neither.
    cursor: u64,
    /// The number of the first message.
    #[serde(default)]
    first: u64,
    messages: Vec<Box<RawValue>>,
    close: Option<PollClose>,
}

/// The status and body text of a finished poll.
type PollResult = anyhow::Result<(u16, String)>;

/// A long-polling session.
pub(crate) struct LongPollWire {
    http: reqwest::Client,
    /// `http://ADDR/connection/long_poll`.
    url: String,
    emulation: Emulation,
    /// The highest message number received; sent as the acknowledgement.
    cursor: u64,
    /// The poll in progress, on its own task so that dropping a test's wait
    /// never abandons it.
    in_flight: Option<JoinHandle<PollResult>>,
    /// The server reported the session's end.
    closed: bool,
    /// Polls that completed.
    polls: u64,
    /// Poll again as soon as a response arrives (the default), rather than
    /// on the next read.
    eager: bool,
}

impl LongPollWire {
    /// Opens a session with `first` (the connect command frame) as the body.
    pub async fn open(
        http: reqwest::Client,
        base_url: &str,
        first: &str,
        deadline: Instant,
    ) -> anyhow::Result<Self> {
        let url = format!("{base_url}{}", Transport::LongPoll.path());
        let request = http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(first.to_owned())
            .send();
        let response = timeout_at(deadline, request)
            .await
            .map_err(|_| anyhow!("timed out opening a long-poll session"))?
            .context("POST /connection/long_poll")?;
        let status = response.status().as_u16();
        let text = response.text().await.context("reading the open answer")?;
        if status != 200 {
            bail!("opening a long-poll session: HTTP {status}: {text}");
        }
        let answer: Value = serde_json::from_str(&text)
            .with_context(|| format!("the open answer is not JSON: {text:?}"))?;
        let session = answer["session"]
            .as_str()
            .with_context(|| format!("no session in {answer}"))?;
        let mut emulation = Emulation::new(http.clone(), base_url);
        emulation.session = Some(session.to_owned());
        emulation.node = answer["node"].as_str().map(str::to_owned);
        Ok(Self {
            http,
            url,
            emulation,
            cursor: 0,
            in_flight: None,
            closed: false,
            polls: 0,
            eager: true,
        })
    }

    /// `session`, `node` (when the open answer named one) and more.
    fn query(&self, more: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut query = vec![(
            "session",
            self.emulation.session.clone().unwrap_or_default(),
        )];
        if let Some(node) = &self.emulation.node {
            query.push(("node", node.clone()));
        }
        query.extend_from_slice(more);
        query
    }

    fn start_poll(&mut self) {
        let mut request = self
            .http
            .get(&self.url)
            .query(&self.query(&[("cursor", self.cursor.to_string())]))
            .timeout(POLL_REQUEST_LIMIT);
        self.in_flight = Some(tokio::spawn(async move {
            // The cursor makes a poll safe to repeat, so a poll that failed on
            // the way (a keep-alive connection the server closed as it was
            // reused) is retried the way a browser client would retry it.
            let mut attempt = 1;
            loop {
                let retry = request.try_clone().context("cloning the poll request")?;
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let text = response.text().await.context("reading a poll response")?;
                        return Ok((status, text));
                    }
                    Err(e) if attempt < POLL_ATTEMPTS && !e.is_timeout() => {
                        attempt += 1;
                        request = retry;
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("GET /connection/long_poll (attempt {attempt})")))
                    }
                }
            }
        }));
    }

    async fn recv(&mut self, deadline: Instant) -> anyhow::Result<Received> {
        if self.closed {
            return Ok(Received::ended());
        }
        let handle = match &mut self.in_flight {
            Some(handle) => handle,
            None => {
                self.start_poll();
                self.in_flight.as_mut().context("no poll in flight")?
            }
        };
        let joined = timeout_at(deadline, handle)
            .await
            .map_err(|_| anyhow!("timed out waiting for a poll response"))?;
        self.in_flight = None;
        let (status, text) = joined.context("the poll task failed")??;
        self.polls += 1;
        if status != 200 {
            bail!("poll with cursor {} -> HTTP {status}: {text}", self.cursor);
        }
        let body: PollBody = serde_json::from_str(&text)
            .with_context(|| format!("a poll response that is not the expected JSON: {text}"))?;
        let mut lines = Vec::new();
        if !body.messages.is_empty() {
            if body.first == 0 {
                bail!("a poll response with messages but no `first`: {text}");
            }
            if body.first > self.cursor + 1 {
                bail!(
                    "messages {}..{} were never delivered (cursor {}, response {text})",
                    self.cursor + 1,
                    body.first - 1,
                    self.cursor
                );
            }
            let last = body.first + body.messages.len() as u64 - 1;
            // With `close`, the cursor names the close itself, one past the last message.
            let expected = if body.close.is_some() { last + 1 } else { last };
            if body.cursor != expected {
                bail!(
                    "cursor {} but the last message is {last}: {text}",
                    body.cursor
                );
            }
            for (seq, message) in (body.first..).zip(&body.messages) {
                if seq > self.cursor {
                    lines.push(message.get().to_owned());
                }
            }
        }
        self.cursor = self.cursor.max(body.cursor);
        let close = body.close.map(|c| (c.code, c.reason));
        if close.is_some() {
            self.closed = true;
        } else if self.eager {
            // Poll again at once, acknowledging what just arrived.
            self.start_poll();
        }
        Ok(Received {
            lines,
            close,
            ended: false,
        })
    }

    /// `DELETE /connection/long_poll?session=S`.
    async fn delete(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let request = self.http.delete(&self.url).query(&self.query(&[])).send();
        let response = timeout_at(deadline, request)
            .await
            .map_err(|_| anyhow!("timed out ending the long-poll session"))?
            .context("DELETE /connection/long_poll")?;
        let status = response.status().as_u16();
        if status != 204 {
            let text = response.text().await.unwrap_or_default();
            bail!("DELETE /connection/long_poll -> HTTP {status}: {text}");
        }
        Ok(())
    }

    /// See [`crate::ProtoClient::set_eager_polling`].
    pub fn set_eager(&mut self, on: bool) {
        self.eager = on;
    }

    /// Completed polls so far.
    pub fn polls(&self) -> u64 {
        self.polls
    }
}

impl Drop for LongPollWire {
    fn drop(&mut self) {
        // A vanished client stops polling: abandon the request in flight.
        if let Some(handle) = self.in_flight.take() {
            handle.abort();
        }
    }
}
