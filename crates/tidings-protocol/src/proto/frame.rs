//! Length-delimited framing of the Protobuf encoding.
//!
//! A transport frame (a binary WebSocket message, an HTTP-streaming chunk, an
//! emulation request's `data`) carries one or more messages, each preceded by its
//! length as a varint: what centrifuge-js writes with `encodeDelimited` and reads with
//! `decodeDelimited`. Commands go one way, replies the other.
//!
//! Every length is checked against the frame and the limits before anything is
//! allocated for it, and every failure is a [`FrameError`]; nothing here panics on
//! what a client sends.

use bytes::Bytes;
use prost::Message as _;

use super::messages as pb;
use crate::{Command, Disconnect, Publication, Push, Reply};

/// The bytes of the server's ping in a Protobuf frame: an empty reply, delimited.
pub const PING_FRAME: &[u8] = &[0];

/// Bounds on what one incoming frame may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Most messages in one frame. Default 1000.
    ///
    /// A message can be a single byte (a pong is a zero length) while a decoded
    /// [`Command`] takes about 700, so without this bound a frame of pongs would make
    /// [`decode_frame`] allocate hundreds of times what it read; with it, at most
    /// about 700 KB. [`commands`] holds only the command it hands out, but counts the
    /// same way.
    pub max_messages: usize,
    /// Longest message in bytes, length prefix not counted. Default 65 536, the
    /// default `websocket.message_size_limit`; a server passes its own limit.
    pub max_message_len: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_messages: 1000,
            max_message_len: 65_536,
        }
    }
}

/// Why a frame could not be read. Each one closes the connection with 3501
/// "bad request" ([`FrameError::disconnect`]), as Centrifugo does for any decode error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ends in the middle of a length prefix.
    #[error("frame ends inside the length prefix at byte {offset}")]
    TruncatedLength {
        /// Where the prefix starts in the frame.
        offset: usize,
    },
    /// A length prefix is longer than ten bytes or does not fit 64 bits.
    #[error("malformed length prefix at byte {offset}")]
    OverlongLength {
        /// Where the prefix starts in the frame.
        offset: usize,
    },
    /// A message is longer than [`FrameLimits::max_message_len`].
    #[error("message of {len} bytes at byte {offset} is over the limit of {max}")]
    TooLong {
        /// Where the message's prefix starts in the frame.
        offset: usize,
        /// Its declared length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message's declared length runs past the end of the frame.
    #[error("message at byte {offset} declares {len} bytes, {remaining} remain")]
    PastEnd {
        /// Where the message's prefix starts in the frame.
        offset: usize,
        /// Its declared length.
        len: u64,
        /// Bytes left in the frame after the prefix.
        remaining: usize,
    },
    /// The frame holds more messages than [`FrameLimits::max_messages`].
    #[error("more than {max} messages in one frame")]
    TooManyMessages {
        /// The limit.
        max: usize,
    },
    /// A message's bytes are not the message expected: a known field with the wrong
    /// wire type, a nested length past its end, a string that is not UTF-8, nesting
    /// too deep. Unknown fields are not errors: they are skipped.
    #[error("message {index} does not decode")]
    Malformed {
        /// Its position in the frame, from 0.
        index: usize,
        /// What prost found wrong.
        #[source]
        source: prost::DecodeError,
    },
}

impl FrameError {
    /// The disconnect a session answers every frame error with: 3501 "bad request".
    pub fn disconnect(&self) -> Disconnect {
        Disconnect::bad_request()
    }
}

/// Reads a frame's messages one at a time.
///
/// After the first error it yields nothing more: the rest of the frame cannot be
/// trusted to start where the broken message says it does.
#[derive(Debug, Clone)]
struct Messages<'a, M> {
    frame: &'a [u8],
    offset: usize,
    index: usize,
    limits: FrameLimits,
    failed: bool,
    decoded: std::marker::PhantomData<fn() -> M>,
}

/// The commands in a client's frame, each decoded when it is reached, so a session
/// handles one before reading the next (as it does a JSON frame's lines) and holds
/// none it has not reached. An empty frame holds no commands; what that means is
/// the session's to decide.
///
/// After an error the iterator ends.
pub fn commands(
    frame: &[u8],
    limits: FrameLimits,
) -> impl Iterator<Item = Result<Command, FrameError>> + '_ {
    Messages::<pb::Command>::new(frame, limits).map(|c| c.map(Command::from))
}

/// The replies in a server's frame, each decoded when it is reached (for clients
/// and tests).
pub fn replies(
    frame: &[u8],
    limits: FrameLimits,
) -> impl Iterator<Item = Result<Reply, FrameError>> + '_ {
    Messages::<pb::Reply>::new(frame, limits).map(|r| r.map(Reply::from))
}

/// Decodes every command in a client's frame.
///
/// # Errors
/// The first [`FrameError`] met; no command of a broken frame is returned.
pub fn decode_frame(frame: &[u8], limits: FrameLimits) -> Result<Vec<Command>, FrameError> {
    commands(frame, limits).collect()
}

/// Decodes every reply in a server's frame (for clients and tests).
///
/// # Errors
/// The first [`FrameError`] met.
pub fn decode_replies(frame: &[u8], limits: FrameLimits) -> Result<Vec<Reply>, FrameError> {
    replies(frame, limits).collect()
}

/// Decodes the body of a Protobuf `/emulation` request: one `EmulationRequest`,
/// not delimited. Its `data` is a command frame for [`decode_frame`].
///
/// # Errors
/// [`FrameError::TooLong`] over `limits.max_message_len`, or
/// [`FrameError::Malformed`].
pub fn decode_emulation_request(
    body: &[u8],
    limits: FrameLimits,
) -> Result<pb::EmulationRequest, FrameError> {
    if body.len() > limits.max_message_len {
        return Err(FrameError::TooLong {
            offset: 0,
            len: body.len() as u64,
            max: limits.max_message_len,
        });
    }
    pb::EmulationRequest::decode(body).map_err(|source| FrameError::Malformed { index: 0, source })
}

impl<'a, M> Messages<'a, M> {
    fn new(frame: &'a [u8], limits: FrameLimits) -> Self {
        Messages {
            frame,
            offset: 0,
            index: 0,
            limits,
            failed: false,
            decoded: std::marker::PhantomData,
        }
    }

    /// The next message's bytes, after checking its prefix against the frame and the
    /// limits.
    fn next_body(&mut self) -> Result<&'a [u8], FrameError> {
        let start = self.offset;
        if self.index == self.limits.max_messages {
            return Err(FrameError::TooManyMessages {
                max: self.limits.max_messages,
            });
        }
        let rest = &self.frame[start..];
        let (len, prefix) = read_varint(rest).map_err(|e| match e {
            Varint::Truncated => FrameError::TruncatedLength { offset: start },
            Varint::Overlong => FrameError::OverlongLength { offset: start },
        })?;
        if len > self.limits.max_message_len as u64 {
            return Err(FrameError::TooLong {
                offset: start,
                len,
                max: self.limits.max_message_len,
            });
        }
        let remaining = rest.len() - prefix;
        if len > remaining as u64 {
            return Err(FrameError::PastEnd {
                offset: start,
                len,
                remaining,
            });
        }
        // Not truncating: len <= remaining, a usize.
        let end = prefix + len as usize;
        self.offset = start + end;
        Ok(&rest[prefix..end])
    }
}

impl<M: prost::Message + Default> Iterator for Messages<'_, M> {
    type Item = Result<M, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.frame.len() {
            return None;
        }
        let index = self.index;
        let result = self.next_body().and_then(|body| {
            M::decode(body).map_err(|source| FrameError::Malformed { index, source })
        });
        self.index += 1;
        self.failed = result.is_err();
        Some(result)
    }
}

enum Varint {
    Truncated,
    Overlong,
}

/// Reads a base-128 varint: the value and how many bytes it took.
fn read_varint(bytes: &[u8]) -> Result<(u64, usize), Varint> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        let low = u64::from(byte & 0x7f);
        // The tenth byte holds bit 63 only; anything more does not fit.
        if i == 9 && byte > 1 {
            return Err(Varint::Overlong);
        }
        value |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    // Ten bytes always end the loop above, so the bytes ran out first.
    Err(Varint::Truncated)
}

/// Appends `message` (an encoded message body) to `out`, preceded by its length.
pub fn push_delimited(out: &mut Vec<u8>, message: &[u8]) {
    out.reserve(prost::length_delimiter_len(message.len()) + message.len());
    // A Vec grows as needed, so writing the prefix cannot run out of room.
    let _ = prost::encode_length_delimiter(message.len(), out);
    out.extend_from_slice(message);
}

fn encode_delimited<M: prost::Message>(message: &M, out: &mut Vec<u8>) {
    let len = message.encoded_len();
    out.reserve(prost::length_delimiter_len(len) + len);
    // A Vec grows as needed, so encoding cannot run out of room.
    let _ = message.encode_length_delimited(out);
}

/// Appends a reply, length-delimited, to a frame being built. Protobuf carries every
/// payload, so this cannot fail (unlike [`Reply::try_to_json`]).
pub fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
    encode_delimited(&pb::Reply::from(reply), out);
}

/// One reply as a length-delimited item for a connection's queue. Items concatenate
/// into a frame with no separator, and a lone item is a frame as it is.
pub fn reply_frame(reply: &Reply) -> Bytes {
    let mut out = Vec::new();
    encode_reply(reply, &mut out);
    Bytes::from(out)
}

/// A publication push (`Reply{push{channel, pub}}`), length-delimited: built once per
/// publication and shared by every Protobuf subscriber of the channel.
pub fn publication_push(channel: &str, publication: &Publication) -> Bytes {
    let reply = pb::Reply {
        push: Some(pb::Push {
            channel: channel.to_string(),
            r#pub: Some(publication.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = Vec::new();
    encode_delimited(&reply, &mut out);
    Bytes::from(out)
}

/// Appends a bare push, length-delimited, as unidirectional connections receive
/// pushes (no reply around them).
pub fn encode_push(push: &Push, out: &mut Vec<u8>) {
    encode_delimited(&pb::Push::from(push), out);
}

/// Appends a command, length-delimited, as a client sends it.
pub fn encode_command(command: &Command, out: &mut Vec<u8>) {
    encode_delimited(&pb::Command::from(command), out);
}
