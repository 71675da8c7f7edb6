//! Transports adapt a socket or stream to a [`Session`](crate::session::Session):
//! they read frames into it and write what the connection's outbox hands them.

pub mod websocket;
