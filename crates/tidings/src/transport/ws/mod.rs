//! The WebSocket protocol under every WebSocket endpoint: the upgrade (RFC 6455
//! section 4), framing (section 5), the closing handshake (section 7) and
//! permessage-deflate (RFC 7692, in [`deflate`]).
//!
//! Why our own and not tungstenite (what axum's `WebSocketUpgrade` runs): it has no
//! permessage-deflate and refuses every frame with the RSV1 bit, so compression
//! cannot be added on top of it; and no Rust WebSocket library that has
//! permessage-deflate lets a server send a frame it compressed once for many
//! connections, which is how Tidings compresses a publication once per fan-out
//! rather than once per subscriber. Owning the framing also lets an idle
//! connection hold no read buffer at all. The HTTP side stays with hyper: the
//! upgraded connection comes from hyper's `OnUpgrade`, and the handshake's
//! accept key from the `sha1` crate. Conformance is checked by the Autobahn
//! testsuite (cases 1–13, scripts/autobahn.sh) in the test command.
//!
//! - [`WsUpgrade`]: the extractor that checks the upgrade request and answers 101.
//! - [`WsReader`]: reads messages, answers pings and the peer's close frame.
//! - [`WsWriter`]: writes messages (joined batches, shared compressed segments)
//!   and the close frame; cloned into the reader for its control replies.

pub mod deflate;

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

pub use deflate::{DeflateSettings, Negotiated};

/// The upgraded connection under a WebSocket.
pub type Io = TokioIo<hyper::upgrade::Upgraded>;

/// Close codes of RFC 6455 section 7.4.1, as the close frame carries them (the
/// session keeps the same codes as `u32` disconnect codes).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = crate::session::CLOSE_PROTOCOL_ERROR as u16;
pub const CLOSE_INVALID_PAYLOAD: u16 = crate::session::CLOSE_INVALID_PAYLOAD as u16;
pub const CLOSE_TOO_LARGE: u16 = crate::session::CLOSE_TOO_LARGE as u16;

/// Limits of one connection's reads.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message on the wire (the sum of its frames' payloads); 1009 beyond.
    pub message: usize,
    /// Largest message after inflating a compressed one; 1009 beyond.
    pub decompressed: usize,
    /// Most bytes one read system call takes.
    pub read_chunk: usize,
}

/// Why an upgrade request was refused (the status and a message saying why).
#[derive(Debug)]
pub struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut res = (self.0, self.1).into_response();
        if self.0 == StatusCode::UPGRADE_REQUIRED {
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        res
    }
}

/// A checked WebSocket upgrade request; [`WsUpgrade::on_upgrade`] answers it.
pub struct WsUpgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    key: HeaderValue,
    offered_protocols: Vec<String>,
    offered_extensions: Vec<String>,
    protocol: Option<&'static str>,
    deflate: Option<Negotiated>,
    limits: Limits,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Refused> {
        if parts.method != Method::GET {
            return Err(Refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET request",
            ));
        }
        let headers = &parts.headers;
        if !header_has_token(headers, &header::CONNECTION, "upgrade") {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "the Connection header must include `upgrade`",
            ));
        }
        if !header_has_token(headers, &header::UPGRADE, "websocket") {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "the Upgrade header must be `websocket`",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(Refused(
                StatusCode::UPGRADE_REQUIRED,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "the Sec-WebSocket-Key header is missing",
            ));
        };
        if !valid_key(key.as_bytes()) {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
            ));
        }
        let offered_protocols = list_values(headers, &header::SEC_WEBSOCKET_PROTOCOL);
        let offered_extensions = headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(Refused(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Self {
            on_upgrade,
            key,
            offered_protocols,
            offered_extensions,
            protocol: None,
            deflate: None,
            limits: Limits {
                message: 64 * 1024,
                decompressed: 640 * 1024,
                read_chunk: 4096,
            },
        })
    }
}

/// Whether a `Sec-WebSocket-Key` is what RFC 6455 (4.1, 4.2.1) requires: base64
/// of 16 bytes, so 22 base64 characters and `==`; the RFC asks for 400 otherwise.
/// Unused trailing bits are not checked.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Whether a comma-separated header has `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

fn list_values(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

impl WsUpgrade {
    /// Selects the first of `supported` that the client offered, if any.
    pub fn protocols(mut self, supported: &[&'static str]) -> Self {
        self.protocol = supported
            .iter()
            .find(|s| self.offered_protocols.iter().any(|o| o == *s))
            .copied();
        self
    }

    /// Accepts the client's permessage-deflate offer when `settings` is given and an
    /// offer is acceptable.
    pub fn deflate(mut self, settings: Option<&DeflateSettings>) -> Self {
        self.deflate = settings.and_then(|s| {
            deflate::negotiate(self.offered_extensions.iter().map(String::as_str), s)
        });
        self
    }

    /// Sets the connection's read limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Answers 101 and runs `callback` with the socket once hyper hands over the
    /// connection. If the upgrade fails the callback is dropped unrun.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = accept_key(self.key.as_bytes());
        let mut res = Response::new(axum::body::Body::empty());
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = res.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = self.protocol {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        if let Some(n) = &self.deflate {
            if let Ok(v) = HeaderValue::from_str(&n.response_header()) {
                h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
            }
        }
        let (on_upgrade, protocol, deflate, limits) =
            (self.on_upgrade, self.protocol, self.deflate, self.limits);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let socket = WebSocket {
                io: TokioIo::new(upgraded),
                protocol,
                deflate,
                limits,
            };
            callback(socket).await;
        });
        res
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// An upgraded WebSocket connection, before it is split into its reader and writer.
pub struct WebSocket<T = Io> {
    io: T,
    protocol: Option<&'static str>,
    deflate: Option<Negotiated>,
    limits: Limits,
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> WebSocket<T> {
    /// A WebSocket over any stream (the upgrade's, or a test's).
    pub fn from_io(io: T, deflate: Option<Negotiated>, limits: Limits) -> Self {
        Self {
            io,
            protocol: None,
            deflate,
            limits,
        }
    }

    /// The subprotocol agreed at the upgrade.
    pub fn protocol(&self) -> Option<&'static str> {
        self.protocol
    }

    /// The reader and the writer. The reader holds a clone of the writer for its
    /// pongs and close reply.
    pub fn split(self) -> (WsReader<T>, WsWriter<T>) {
        let (r, w) = tokio::io::split(self.io);
        let writer = WsWriter {
            inner: Arc::new(tokio::sync::Mutex::new(WriteSide {
                io: w,
                close_sent: false,
            })),
            deflate: self.deflate,
        };
        let reader = WsReader {
            io: r,
            buf: BytesMut::new(),
            partial: None,
            limits: self.limits,
            compressed: self.deflate.is_some(),
            writer: writer.clone(),
            done: false,
        };
        (reader, writer)
    }
}

/// How far ahead of the bytes received the read buffer of a large frame grows.
const GROW_STEP: usize = 16 * 1024;

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Bytes),
}

/// Why reading ended with an error: each is the close code the connection should
/// be closed with ([`ReadError::close_code`]), except `Io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// A message (or inflated message) over the limit: 1009.
    TooLarge,
    /// Text that is not UTF-8, or a close reason that is not: 1007.
    InvalidText,
    /// A broken framing rule: 1002.
    Protocol,
    /// The connection failed or ended without a close frame.
    Io,
}

impl ReadError {
    /// The close code that answers this error (`None` for a failed connection).
    pub fn close_code(self) -> Option<u16> {
        match self {
            ReadError::TooLarge => Some(CLOSE_TOO_LARGE),
            ReadError::InvalidText => Some(CLOSE_INVALID_PAYLOAD),
            ReadError::Protocol => Some(CLOSE_PROTOCOL_ERROR),
            ReadError::Io => None,
        }
    }
}

/// A message whose frames are still arriving.
struct Partial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be UTF-8 (uncompressed text only).
    checked: usize,
}

/// The reading half: frames in, messages out.
pub struct WsReader<T = Io> {
    io: ReadHalf<T>,
    /// Bytes read but not yet parsed; empty (no allocation) between messages.
    buf: BytesMut,
    partial: Option<Partial>,
    limits: Limits,
    compressed: bool,
    writer: WsWriter<T>,
    done: bool,
}

/// One parsed frame header.
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    header_len: usize,
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> WsReader<T> {
    /// The next message. Pings are answered and pongs skipped on the way; the
    /// peer's close frame is answered and ends the stream (`None`). After an
    /// error the caller closes the connection with [`ReadError::close_code`];
    /// nothing more is read.
    pub async fn next(&mut self) -> Option<Result<Message, ReadError>> {
        if self.done {
            return None;
        }
        let out = self.read_message().await;
        if !matches!(out, Some(Ok(_))) {
            self.done = true;
            self.buf = BytesMut::new();
            self.partial = None;
        }
        out
    }

    async fn read_message(&mut self) -> Option<Result<Message, ReadError>> {
        loop {
            match self.parse_header() {
                Err(e) => return Some(Err(e)),
                Ok(Some(h)) if self.buf.len() >= h.header_len + h.len => {
                    let mut frame = self.buf.split_to(h.header_len + h.len);
                    frame.advance(h.header_len);
                    unmask(&mut frame, h.mask);
                    if self.buf.is_empty() {
                        // Nothing waits: hold no buffer while idle.
                        self.buf = BytesMut::new();
                    }
                    match self.on_frame(h, frame).await {
                        Step::Continue => continue,
                        Step::Message(m) => return Some(Ok(m)),
                        Step::Error(e) => return Some(Err(e)),
                        Step::Closed => return None,
                    }
                }
                Ok(Some(h)) => {
                    // A frame larger than what is buffered: room for the next part
                    // of it, so the rest is read straight into place. At most
                    // GROW_STEP ahead of what arrived: a client that announces a
                    // 64 KiB frame and sends it a byte at a time holds what it sent,
                    // not what it announced.
                    let need = h.header_len + h.len - self.buf.len();
                    self.buf.reserve(need.min(GROW_STEP));
                }
                Ok(None) => {}
            }
            match self.fill().await {
                Ok(0) => {
                    return Some(Err(ReadError::Io));
                }
                Ok(_) => {}
                Err(_) => return Some(Err(ReadError::Io)),
            }
        }
    }

    /// Reads more bytes. With an empty buffer the read goes to a stack buffer first
    /// and only what arrived is copied to the heap, so a connection waiting for
    /// its next message holds no buffer.
    async fn fill(&mut self) -> io::Result<usize> {
        let chunk = self.limits.read_chunk.clamp(16, 16 * 1024);
        std::future::poll_fn(|cx| self.poll_fill(cx, chunk)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, chunk: usize) -> Poll<io::Result<usize>> {
        let spare = self.buf.capacity() - self.buf.len();
        if spare >= chunk.min(1024) {
            // Straight into place: a large frame reserved room for itself.
            return tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut rb = ReadBuf::uninit(&mut stack[..chunk]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        self.buf.extend_from_slice(got);
        Poll::Ready(Ok(got.len()))
    }

    /// The header at the front of the buffer, once all of it is there; framing
    /// rules that the header alone breaks are errors here.
    fn parse_header(&self) -> Result<Option<Header>, ReadError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv1 = b[0] & 0x40 != 0;
        if b[0] & 0x30 != 0 {
            return Err(ReadError::Protocol);
        }
        let opcode = b[0] & 0x0f;
        if b[1] & 0x80 == 0 {
            // Client frames must be masked (RFC 6455 5.1).
            return Err(ReadError::Protocol);
        }
        let (len, at) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([b[2], b[3]]) as u64, 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(ReadError::Protocol);
                }
                (n, 10)
            }
            n => (n as u64, 2),
        };
        let control = opcode & 0x08 != 0;
        match opcode {
            0..=2 | 8..=10 => {}
            _ => return Err(ReadError::Protocol),
        }
        if control && (!fin || len > 125 || rsv1) {
            return Err(ReadError::Protocol);
        }
        if rsv1 && (!self.compressed || opcode == 0) {
            return Err(ReadError::Protocol);
        }
        // The wire limit counts the whole message: frames before this one too.
        let so_far = if control {
            0
        } else {
            self.partial.as_ref().map_or(0, |p| p.data.len()) as u64
        };
        if so_far + len > self.limits.message as u64 {
            return Err(ReadError::TooLarge);
        }
        if b.len() < at + 4 {
            return Ok(None);
        }
        let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        Ok(Some(Header {
            fin,
            rsv1,
            opcode,
            mask,
            len: len as usize,
            header_len: at + 4,
        }))
    }

    async fn on_frame(&mut self, h: Header, payload: BytesMut) -> Step {
        match h.opcode {
            9 => {
                // Answered at once, boxed so that the reader's future stays small.
                let _ = Box::pin(self.writer.send_control(10, &payload)).await;
                Step::Continue
            }
            10 => Step::Continue,
            8 => Box::pin(self.on_close(payload)).await,
            0 => {
                let Some(p) = self.partial.as_mut() else {
                    return Step::Error(ReadError::Protocol);
                };
                p.data.extend_from_slice(&payload);
                if p.text && !p.compressed {
                    match check_utf8_prefix(&p.data[p.checked..], h.fin) {
                        Some(ok) => p.checked += ok,
                        None => return Step::Error(ReadError::InvalidText),
                    }
                }
                if !h.fin {
                    return Step::Continue;
                }
                let p = self.partial.take().expect("checked above");
                self.finish(p.text, p.compressed, MessageData::Vec(p.data))
            }
            _ => {
                if self.partial.is_some() {
                    // A new message before the previous one's last frame.
                    return Step::Error(ReadError::Protocol);
                }
                let text = h.opcode == 1;
                if h.fin {
                    return self.finish(text, h.rsv1, MessageData::Bytes(payload));
                }
                let mut p = Partial {
                    text,
                    compressed: h.rsv1,
                    data: payload.to_vec(),
                    checked: 0,
                };
                if text && !h.rsv1 {
                    match check_utf8_prefix(&p.data, false) {
                        Some(ok) => p.checked = ok,
                        None => return Step::Error(ReadError::InvalidText),
                    }
                }
                self.partial = Some(p);
                Step::Continue
            }
        }
    }

    fn finish(&mut self, text: bool, compressed: bool, data: MessageData) -> Step {
        let data = if compressed {
            match deflate::inflate(data.as_slice(), self.limits.decompressed) {
                Ok(v) => MessageData::Vec(v),
                Err(deflate::InflateError::TooLarge) => return Step::Error(ReadError::TooLarge),
                Err(deflate::InflateError::Invalid) => return Step::Error(ReadError::InvalidText),
            }
        } else {
            data
        };
        if text {
            let v = data.into_vec();
            match String::from_utf8(v) {
                Ok(s) => Step::Message(Message::Text(s)),
                Err(_) => Step::Error(ReadError::InvalidText),
            }
        } else {
            Step::Message(Message::Binary(data.into_bytes()))
        }
    }

    /// The peer's close frame: checked, answered with the same code (or an empty
    /// close for an empty one), and the end of reading.
    async fn on_close(&mut self, payload: BytesMut) -> Step {
        let reply: Result<Vec<u8>, ReadError> = match payload.len() {
            0 => Ok(Vec::new()),
            1 => Err(ReadError::Protocol),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !valid_close_code(code) {
                    Err(ReadError::Protocol)
                } else if std::str::from_utf8(&payload[2..]).is_err() {
                    Err(ReadError::InvalidText)
                } else {
                    Ok(code.to_be_bytes().to_vec())
                }
            }
        };
        match reply {
            Ok(body) => {
                let _ = self.writer.send_control(8, &body).await;
                let _ = self.writer.shutdown().await;
                Step::Closed
            }
            Err(e) => Step::Error(e),
        }
    }
}

enum Step {
    Continue,
    Message(Message),
    Error(ReadError),
    Closed,
}

enum MessageData {
    Bytes(BytesMut),
    Vec(Vec<u8>),
}

impl MessageData {
    fn as_slice(&self) -> &[u8] {
        match self {
            MessageData::Bytes(b) => b,
            MessageData::Vec(v) => v,
        }
    }
    fn into_vec(self) -> Vec<u8> {
        match self {
            MessageData::Bytes(b) => b.to_vec(),
            MessageData::Vec(v) => v,
        }
    }
    fn into_bytes(self) -> Bytes {
        match self {
            MessageData::Bytes(b) => b.freeze(),
            MessageData::Vec(v) => Bytes::from(v),
        }
    }
}

/// How many leading bytes of `data` are valid UTF-8, when the rest is at most an
/// unfinished character (allowed unless `last`); `None` when `data` cannot be the
/// start of UTF-8 text. Lets a fragmented text message fail at the first bad frame.
fn check_utf8_prefix(data: &[u8], last: bool) -> Option<usize> {
    match std::str::from_utf8(data) {
        Ok(_) => Some(data.len()),
        Err(e) if e.error_len().is_none() && !last => Some(e.valid_up_to()),
        Err(_) => None,
    }
}

/// Close codes a peer may send (RFC 6455 7.4.1 and 7.4.2, and the IANA registry's
/// 1012–1014).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Unmasks a client frame's payload in place.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

struct WriteSide<T> {
    io: WriteHalf<T>,
    close_sent: bool,
}

/// The writing half; cheap to clone (the reader holds one for its replies).
pub struct WsWriter<T = Io> {
    inner: Arc<tokio::sync::Mutex<WriteSide<T>>>,
    deflate: Option<Negotiated>,
}

impl<T> Clone for WsWriter<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            deflate: self.deflate,
        }
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the close frame was sent")
}

/// Appends a server frame header (unmasked) for a payload of `len` bytes.
fn put_header(out: &mut BytesMut, opcode: u8, rsv1: bool, len: usize) {
    out.extend_from_slice(&[0x80 | if rsv1 { 0x40 } else { 0 } | opcode]);
    if len < 126 {
        out.extend_from_slice(&[len as u8]);
    } else if len <= 0xffff {
        out.extend_from_slice(&[126]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> WsWriter<T> {
    /// Writes `items` joined by `separator` as one message (text or binary),
    /// compressed when permessage-deflate was agreed and the message is at least
    /// its minimum size.
    pub async fn send_joined(
        &self,
        text: bool,
        items: &[Bytes],
        separator: Option<u8>,
    ) -> io::Result<()> {
        let mut out = BytesMut::new();
        self.frame_joined(&mut out, text, items, separator);
        self.write(out).await
    }

    /// Writes each item as its own message, with one write for all of them.
    pub async fn send_each(&self, text: bool, items: &[Bytes]) -> io::Result<()> {
        let mut out = BytesMut::new();
        for item in items {
            self.frame_joined(&mut out, text, std::slice::from_ref(item), None);
        }
        self.write(out).await
    }

    fn frame_joined(&self, out: &mut BytesMut, text: bool, items: &[Bytes], sep: Option<u8>) {
        let opcode = if text { 1 } else { 2 };
        let plain_len: usize = items.iter().map(Bytes::len).sum::<usize>()
            + sep.map_or(0, |_| items.len().saturating_sub(1));
        match &self.deflate {
            Some(n) if plain_len >= n.min_size && plain_len > 0 => {
                let payload = deflate::Compressed::new(items, sep, n);
                put_header(out, opcode, true, payload.len());
                payload.write_into(out);
            }
            _ => {
                put_header(out, opcode, false, plain_len);
                out.reserve(plain_len);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        if let Some(s) = sep {
                            out.extend_from_slice(&[s]);
                        }
                    }
                    out.extend_from_slice(item);
                }
            }
        }
    }

    async fn write(&self, out: BytesMut) -> io::Result<()> {
        let mut side = self.inner.lock().await;
        if side.close_sent {
            return Err(closed_error());
        }
        side.io.write_all(&out).await?;
        side.io.flush().await
    }

    /// A control frame (ping 9, pong 10, close 8) with at most 125 bytes.
    async fn send_control(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut side = self.inner.lock().await;
        if side.close_sent {
            return Err(closed_error());
        }
        if opcode == 8 {
            side.close_sent = true;
        }
        let mut out = BytesMut::with_capacity(2 + payload.len());
        put_header(&mut out, opcode, false, payload.len().min(125));
        out.extend_from_slice(&payload[..payload.len().min(125)]);
        side.io.write_all(&out).await?;
        side.io.flush().await
    }

    /// Sends the close frame (once; later calls only shut down) and shuts the
    /// connection's writing side. The reason is cut to fit a control frame at a
    /// character boundary.
    pub async fn close(&self, code: u16, reason: &str) -> io::Result<()> {
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(&reason.as_bytes()[..cut]);
        let sent = self.send_control(8, &body).await;
        let _ = self.shutdown().await;
        match sent {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }

    /// Shuts the writing side (TCP FIN) without a close frame.
    pub async fn shutdown(&self) -> io::Result<()> {
        let mut side = self.inner.lock().await;
        side.close_sent = true;
        side.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn websocket_keys_must_be_16_bytes_of_base64() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        for bad in [
            "",
            "!!!",
            "c2hvcnQ=",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=!",
            "dGhlIHNhbXBsZSBub25jZ*==",
            "dGhlIHNhbXBsZSBub25jZQ==dGhl",
        ] {
            assert!(!valid_key(bad.as_bytes()), "{bad:?} was accepted");
        }
    }

    #[test]
    fn unmasking_handles_every_length() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut masked: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            unmask(&mut masked, mask);
            assert_eq!(masked, plain);
        }
    }

    #[test]
    fn utf8_prefixes_allow_a_split_character_until_the_last_frame() {
        let euro = "€".as_bytes();
        assert_eq!(check_utf8_prefix(&euro[..2], false), Some(0));
        assert_eq!(check_utf8_prefix(&euro[..2], true), None);
        assert_eq!(check_utf8_prefix(b"ab\xff", false), None);
        assert_eq!(check_utf8_prefix(b"abc", true), Some(3));
    }

    fn client_frame(opcode: u8, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | (if rsv1 { 0x40 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn limits() -> Limits {
        Limits {
            message: 1024,
            decompressed: 4096,
            read_chunk: 7,
        }
    }

    async fn read_all(
        input: Vec<u8>,
        deflate: Option<Negotiated>,
    ) -> (Vec<Result<Message, ReadError>>, Vec<u8>) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let socket = WebSocket::from_io(server, deflate, limits());
        let (mut reader, _writer) = socket.split();
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(&input).await.expect("write");
        cw.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        while let Some(m) = reader.next().await {
            got.push(m);
        }
        drop(reader);
        drop(_writer);
        let mut echoed = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut cr, &mut echoed).await;
        (got, echoed)
    }

    #[tokio::test]
    async fn fragments_pings_and_close_in_a_small_read_chunk() {
        let mut input = client_frame(1, false, false, "hé".as_bytes());
        input.extend(client_frame(9, true, false, b"p"));
        input.extend(client_frame(0, true, false, "llo €".as_bytes()));
        input.extend(client_frame(2, true, false, &[0, 1, 2]));
        input.extend(client_frame(8, true, false, &1000u16.to_be_bytes()));
        let (got, echoed) = read_all(input, None).await;
        assert_eq!(
            got,
            vec![
                Ok(Message::Text("héllo €".into())),
                Ok(Message::Binary(Bytes::from_static(&[0, 1, 2]))),
            ]
        );
        // The pong, then the close reply with the same code.
        assert_eq!(
            echoed,
            [&[0x8a, 1, b'p'][..], &[0x88, 2, 0x03, 0xe8]].concat()
        );
    }

    #[tokio::test]
    async fn a_large_frame_arrives_whole_through_a_buffer_grown_in_steps() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (client, server) = tokio::io::duplex(8 * 1024);
        let limits = Limits {
            message: 1 << 20,
            decompressed: 1 << 20,
            read_chunk: 1024,
        };
        let (mut reader, _writer) = WebSocket::from_io(server, None, limits).split();
        let input = client_frame(2, true, false, &big);
        let (_cr, mut cw) = tokio::io::split(client);
        let feed = tokio::spawn(async move { cw.write_all(&input).await });
        let got = reader.next().await;
        assert_eq!(got, Some(Ok(Message::Binary(Bytes::from(big)))));
        feed.await.expect("join").expect("write");
    }

    #[tokio::test]
    async fn framing_errors_have_their_codes() {
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            (
                client_frame(1, true, false, b"\xff"),
                ReadError::InvalidText,
            ),
            (client_frame(3, true, false, b""), ReadError::Protocol),
            (client_frame(9, false, false, b""), ReadError::Protocol),
            (client_frame(0, true, false, b"x"), ReadError::Protocol),
            (client_frame(1, true, true, b"x"), ReadError::Protocol),
            (
                client_frame(2, true, false, &[0; 2000]),
                ReadError::TooLarge,
            ),
            (client_frame(8, true, false, &[3]), ReadError::Protocol),
            (
                client_frame(8, true, false, &1005u16.to_be_bytes()),
                ReadError::Protocol,
            ),
            ([&[0x81, 0x01][..], b"a"].concat(), ReadError::Protocol),
        ];
        for (input, want) in cases {
            let (got, _) = read_all(input, None).await;
            assert_eq!(got, vec![Err(want)]);
        }
    }

    #[tokio::test]
    async fn compressed_messages_inflate_within_the_limit() {
        let n = deflate::negotiate(
            ["permessage-deflate"].into_iter(),
            &DeflateSettings {
                level: 1,
                min_size: 0,
            },
        );
        let text = Bytes::from("abc".repeat(300));
        let payload =
            deflate::compress_joined(std::slice::from_ref(&text), None, n.as_ref().expect("n"));
        let mut input = client_frame(1, true, true, &payload);
        input.extend(client_frame(8, true, false, &1000u16.to_be_bytes()));
        let (got, _) = read_all(input, n).await;
        assert_eq!(got, vec![Ok(Message::Text("abc".repeat(300)))]);
        let bomb = deflate::compress_joined(
            &[Bytes::from(vec![b'a'; 20_000])],
            None,
            n.as_ref().expect("n"),
        );
        assert!(bomb.len() < 1024);
        let (got, _) = read_all(client_frame(1, true, true, &bomb), n).await;
        assert_eq!(got, vec![Err(ReadError::TooLarge)]);
    }
}
