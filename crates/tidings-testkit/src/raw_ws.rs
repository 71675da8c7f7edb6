//! WebSocket by hand: an HTTP upgrade request written byte by byte and frames
//! built bit by bit over a plain `TcpStream`.
//!
//! A real WebSocket library refuses to send what a hostile client sends: RSV
//! bits, unmasked frames, oversized control frames, broken UTF-8, endless
//! fragments. These helpers send exactly the bytes a test asks for, and read
//! the server's frames back without judging them, so a test can see which
//! close code (if any) the server answered with.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// The sample key of RFC 6455 section 1.3; any valid key will do.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The largest HTTP response head this module reads before giving up.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The mask every masked frame of this module uses. The value does not matter
/// to the server; a fixed one keeps the bytes on the wire reproducible.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame to send, described field by field.
#[derive(Debug, Clone)]
pub struct Frame {
    /// FIN bit: the last frame of a message.
    pub fin: bool,
    /// The three RSV bits, in the low bits (RSV1 = 4, RSV2 = 2, RSV3 = 1).
    pub rsv: u8,
    /// The 4-bit opcode.
    pub opcode: u8,
    /// Clients must mask; `false` sends the payload in the clear.
    pub masked: bool,
    /// The payload, before masking.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A final, masked frame with no RSV bits: what a well-behaved client sends.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.into(),
        }
    }

    /// A text frame.
    pub fn text(payload: impl Into<Vec<u8>>) -> Self {
        Self::new(OP_TEXT, payload)
    }

    /// Sets the FIN bit.
    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    /// Sets the RSV bits (low three bits of `rsv`).
    pub fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv & 0b111;
        self
    }

    /// Sends the payload unmasked, which a server must refuse.
    pub fn unmasked(mut self) -> Self {
        self.masked = false;
        self
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        self.encode_into(&mut out);
        out
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = self.payload.len() as u64;
        out.push((u8::from(self.fin) << 7) | (self.rsv << 4) | (self.opcode & 0x0f));
        let mask_bit = if self.masked { 0x80 } else { 0 };
        encode_length(out, mask_bit, len);
        if self.masked {
            out.extend_from_slice(&MASK);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ MASK[i % 4]),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
    }
}

/// Writes the second header byte (mask bit plus 7-bit length) and the extended
/// length, if any.
fn encode_length(out: &mut Vec<u8>, mask_bit: u8, len: u64) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// A masked frame header that announces `len` payload bytes, without the
/// payload: to see what a server does with a length it cannot accept.
pub fn header_only(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | (opcode & 0x0f)];
    encode_length(&mut out, 0x80, len);
    out.extend_from_slice(&MASK);
    out
}

/// A close frame payload: the code, big-endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    /// FIN bit.
    pub fin: bool,
    /// The RSV bits.
    pub rsv: u8,
    /// The opcode.
    pub opcode: u8,
    /// Whether the server masked it (it must not).
    pub masked: bool,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// The close code and reason of a close frame (1005 when it has no code).
    pub fn close_code(&self) -> Option<(u16, String)> {
        if self.opcode != OP_CLOSE {
            return None;
        }
        if self.payload.len() < 2 {
            return Some((1005, String::new()));
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

/// How a connection ended, seen from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server sent a close frame with this code and reason.
    Close(u16, String),
    /// The server closed or reset the TCP connection without a close frame.
    Dropped(String),
}

/// The server's answer to an upgrade request.
#[derive(Debug, Clone)]
pub struct HandshakeResponse {
    /// The HTTP status.
    pub status: u16,
    /// The response head (status line and headers), as text.
    pub head: String,
    /// Whatever body bytes followed the head and arrived within a short wait
    /// (only for non-101 answers).
    pub body: String,
}

impl HandshakeResponse {
    /// The value of a response header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// The text of an upgrade request for `path` on `addr`: the standard headers
/// (with [`SAMPLE_KEY`]) followed by `extra` lines (each `Name: value`), and
/// the blank line. Tests that want a broken request build their own text.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &[&str]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n"
    );
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// A WebSocket connection driven byte by byte.
pub struct RawWs {
    /// The socket, after a 101 answer.
    stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    pending: Vec<u8>,
}

impl RawWs {
    /// Upgrades `path` on `addr` with a standard request and expects 101.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached or does not upgrade.
    pub async fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<Self> {
        let (response, ws) = Self::handshake(addr, upgrade_request(addr, path, &[]).as_bytes())
            .await
            .with_context(|| format!("upgrading {path}"))?;
        ws.ok_or_else(|| anyhow!("{path} answered {} instead of 101", response.head))
    }

    /// Sends `request` (the whole HTTP request, byte for byte) and reads the
    /// answer's head. Returns the answer and, when it is 101, the connection.
    ///
    /// # Errors
    ///
    /// Fails when the server cannot be reached, or does not answer within
    /// the default wait.
    pub async fn handshake(
        addr: SocketAddr,
        request: &[u8],
    ) -> anyhow::Result<(HandshakeResponse, Option<Self>)> {
        let deadline = Instant::now() + crate::DEFAULT_WAIT;
        let mut stream = timeout_at(deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("timed out connecting to {addr}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        // The server may answer (431, say) and close before it read all of a
        // huge request; a failed write is not the end of the story, the answer is.
        let write_error = timeout_at(deadline, stream.write_all(request))
            .await
            .map_err(|_| anyhow!("timed out writing the upgrade request"))?
            .err();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_RESPONSE_HEAD {
                bail!("the response head is longer than {MAX_RESPONSE_HEAD} bytes");
            }
            let mut chunk = [0u8; 4096];
            let n = match timeout_at(deadline, stream.read(&mut chunk)).await {
                Err(_) => bail!("timed out waiting for the handshake answer"),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => bail!(
                    "reading the handshake answer failed: {e} (writing it: {write_error:?}; read so far: {:?})",
                    String::from_utf8_lossy(&buf)
                ),
            };
            if n == 0 {
                bail!(
                    "the server closed before answering the handshake (writing it: {write_error:?}; \
                     read so far: {:?})",
                    String::from_utf8_lossy(&buf)
                );
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let rest = buf[head_end..].to_vec();
        if status == 101 {
            let response = HandshakeResponse {
                status,
                head,
                body: String::new(),
            };
            return Ok((
                response,
                Some(Self {
                    stream,
                    pending: rest,
                }),
            ));
        }
        let mut response = HandshakeResponse {
            status,
            head,
            body: String::new(),
        };
        let length = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = rest;
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            match timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        response.body = String::from_utf8_lossy(&body).into_owned();
        Ok((response, None))
    }

    /// Writes raw bytes.
    ///
    /// # Errors
    ///
    /// Fails when the socket cannot be written (the server may have closed)
    /// or the write does not finish within the default wait.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        timeout(crate::DEFAULT_WAIT, self.stream.write_all(bytes))
            .await
            .map_err(|_| anyhow!("timed out writing {} bytes", bytes.len()))?
            .context("writing to the socket")
    }

    /// Writes one frame.
    ///
    /// # Errors
    ///
    /// As [`Self::send_bytes`].
    pub async fn send(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.send_bytes(&frame.encode()).await
    }

    /// Writes a masked text frame holding `text`.
    ///
    /// # Errors
    ///
    /// As [`Self::send_bytes`].
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.send(&Frame::text(text.as_bytes())).await
    }

    /// Reads the next frame; `None` when the server closed the connection
    /// (or reset it) before a whole frame arrived.
    ///
    /// # Errors
    ///
    /// Fails on timeout.
    pub async fn read_frame(&mut self, limit: Duration) -> anyhow::Result<Option<ServerFrame>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((frame, used)) = parse_frame(&self.pending)? {
                self.pending.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => bail!("timed out waiting for a frame"),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(n)) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads past data frames until the server closes, and says how.
    ///
    /// # Errors
    ///
    /// Fails when the server neither closes nor drops the connection within
    /// `limit`.
    pub async fn expect_end(&mut self, limit: Duration) -> anyhow::Result<Ending> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left).await? {
                None => return Ok(Ending::Dropped("the TCP connection ended".into())),
                Some(frame) => {
                    if let Some((code, reason)) = frame.close_code() {
                        return Ok(Ending::Close(code, reason));
                    }
                }
            }
        }
    }

    /// Reads the next text message (joining no fragments: the server sends
    /// whole messages), skipping pings and pongs.
    ///
    /// # Errors
    ///
    /// Fails on timeout, on a close, or when the connection ends.
    pub async fn read_text(&mut self, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self
                .read_frame(left)
                .await?
                .ok_or_else(|| anyhow!("the connection ended while waiting for text"))?;
            match frame.opcode {
                OP_TEXT | OP_BINARY => {
                    return String::from_utf8(frame.payload).context("server text is not UTF-8")
                }
                OP_CLOSE => bail!("the server closed: {:?}", frame.close_code()),
                _ => {}
            }
        }
    }

    /// Splits the socket so one task can keep writing while another reads.
    pub fn into_split(self) -> (RawReader, tokio::net::tcp::OwnedWriteHalf) {
        let (read, write) = self.stream.into_split();
        (
            RawReader {
                read,
                pending: self.pending,
            },
            write,
        )
    }
}

/// The read half of a split [`RawWs`].
pub struct RawReader {
    /// The socket's read half.
    read: tokio::net::tcp::OwnedReadHalf,
    /// Bytes read but not yet parsed.
    pending: Vec<u8>,
}

impl RawReader {
    /// Reads until a close frame or the end of the connection, discarding
    /// everything else.
    ///
    /// # Errors
    ///
    /// Fails when neither happens within `limit`.
    pub async fn expect_end(&mut self, limit: Duration) -> anyhow::Result<Ending> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((frame, used)) = parse_frame(&self.pending)? {
                self.pending.drain(..used);
                if let Some((code, reason)) = frame.close_code() {
                    return Ok(Ending::Close(code, reason));
                }
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            match timeout_at(deadline, self.read.read(&mut chunk)).await {
                Err(_) => bail!("timed out waiting for the server to close"),
                Ok(Ok(0)) => return Ok(Ending::Dropped("the TCP connection ended".into())),
                Ok(Err(e)) => return Ok(Ending::Dropped(e.to_string())),
                Ok(Ok(n)) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Parses one server frame from the front of `buf`: the frame and the bytes it
/// took, or `None` when more bytes are needed.
fn parse_frame(buf: &[u8]) -> anyhow::Result<Option<(ServerFrame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 0b111;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).context("frame length does not fit in memory")?;
    if len > 256 << 20 {
        bail!("the server announced a {len}-byte frame");
    }
    let mut mask = [0u8; 4];
    if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        mask.copy_from_slice(&buf[at..at + 4]);
        at += 4;
    }
    if buf.len() < at + len {
        return Ok(None);
    }
    let mut payload = buf[at..at + len].to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok(Some((
        ServerFrame {
            fin,
            rsv,
            opcode,
            masked,
            payload,
        },
        at + len,
    )))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_text_frame_matches_rfc_example() {
        // RFC 6455 5.7: a masked "Hello" with mask 37 fa 21 3d.
        let bytes = Frame::text("Hello").encode();
        assert_eq!(
            bytes,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn unmasked_frames_and_lengths_parse_back() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let frame = Frame::new(OP_BINARY, vec![7u8; len]).unmasked().rsv(0b101);
            let bytes = frame.encode();
            let (parsed, used) = parse_frame(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(parsed.payload.len(), len);
            assert_eq!(parsed.rsv, 0b101);
            assert!(parsed.fin && !parsed.masked);
        }
        assert!(parse_frame(&[0x81]).unwrap().is_none());
    }
}
