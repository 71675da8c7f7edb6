//! The Protobuf encoding of the client protocol (WebSocket subprotocol
//! `centrifuge-protobuf`, HTTP streaming and emulation with
//! `application/octet-stream`).
//!
//! A server keeps one protocol state machine over the model types ([`Command`],
//! [`Reply`], …) and only the edges differ by encoding:
//!
//! - in: [`commands`] (or [`decode_frame`]) reads a frame into model [`Command`]s;
//! - out: [`encode_reply`] / [`reply_frame`] write a model [`Reply`], and
//!   [`publication_push`] builds a publication's push once for every subscriber.
//!
//! [`messages`] holds the `client.proto` messages, [`frame`] the length-delimited
//! framing and its limits, and the conversions between messages and model live in
//! `convert`. Payloads cross as [`Payload`](crate::Payload) bytes, untouched.
//!
//! [`Command`]: crate::Command
//! [`Reply`]: crate::Reply

mod convert;
pub mod frame;
pub mod messages;

pub use frame::{
    commands, decode_emulation_request, decode_frame, decode_replies, encode_command, encode_push,
    encode_reply, publication_push, push_delimited, replies, reply_frame, FrameError, FrameLimits,
    PING_FRAME,
};

#[cfg(test)]
mod tests;
