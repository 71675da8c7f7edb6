//! The WebSocket reader (`transport::ws`), which every WebSocket door runs on what a
//! client sends: any bytes as the client's side of the stream, on a connection that
//! agreed to permessage-deflate, with small limits. Besides "no panic and no hang":
//! every message is within its limit (the inflated one for text and binary alike),
//! and once the reader reports an error or the end, it reports nothing more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::transport::ws::{deflate, DeflateSettings, Limits, Message, WebSocket};
use tokio::io::AsyncWriteExt;

const LIMITS: Limits = Limits {
    message: 4096,
    decompressed: 16 * 1024,
    read_chunk: 61,
};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let negotiated = deflate::negotiate(
            ["permessage-deflate"].into_iter(),
            &DeflateSettings { level: 1, min_size: 0 },
        );
        let (mut reader, _writer) = WebSocket::from_io(server, negotiated, LIMITS).split();
        let input = data.to_vec();
        let feed = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            // Keep the client's side open for the reader's replies until it is done.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut sink).await;
        });
        let mut ended = false;
        for _ in 0..10_000 {
            match reader.next().await {
                Some(Ok(Message::Text(t))) => {
                    assert!(!ended);
                    assert!(t.len() <= LIMITS.decompressed);
                }
                Some(Ok(Message::Binary(b))) => {
                    assert!(!ended);
                    assert!(b.len() <= LIMITS.decompressed);
                }
                Some(Err(_)) => {
                    assert!(!ended);
                    ended = true;
                }
                None => break,
            }
        }
        assert!(reader.next().await.is_none());
        drop(reader);
        drop(_writer);
        let _ = feed.await;
    });
});
