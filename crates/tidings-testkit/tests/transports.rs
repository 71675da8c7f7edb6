//! One behaviour, every transport: each scenario below is written once and
//! runs over WebSocket, SSE, HTTP streaming and long polling, through the
//! same [`ProtoClient`] API.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use tidings_testkit::{hs256_token_with_claims, ProtoClient, TidingsServer, Transport};

/// Generates one `#[tokio::test]` per transport for a scenario
/// `async fn(Transport) -> anyhow::Result<()>`.
macro_rules! every_transport {
    ($scenario:ident => $ws:ident, $sse:ident, $http_stream:ident, $long_poll:ident) => {
        #[tokio::test]
        async fn $ws() -> anyhow::Result<()> {
            $scenario(Transport::WebSocket).await
        }
        #[tokio::test]
        async fn $sse() -> anyhow::Result<()> {
            $scenario(Transport::Sse).await
        }
        #[tokio::test]
        async fn $http_stream() -> anyhow::Result<()> {
            $scenario(Transport::HttpStream).await
        }
        #[tokio::test]
        async fn $long_poll() -> anyhow::Result<()> {
            $scenario(Transport::LongPoll).await
        }
    };
}

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .map(|list| list.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// Protocol booleans are left out when false.
fn flag(v: &Value, key: &str) -> bool {
    v[key].as_bool().unwrap_or(false)
}

// ---- connect ---------------------------------------------------------------

every_transport!(connects_and_answers_pings =>
    connects_and_answers_pings_over_websocket,
    connects_and_answers_pings_over_sse,
    connects_and_answers_pings_over_http_stream,
    connects_and_answers_pings_over_long_poll);

/// The connect reply has what SDKs need (and, for emulation, the session to
/// post commands to); pings are answered over the transport and keep the
/// connection alive, while a client that never answers is closed 3012.
async fn connects_and_answers_pings(transport: Transport) -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_PING_INTERVAL", "1s")
        .env("TIDINGS_CLIENT_PONG_TIMEOUT", "500ms")
        .start()
        .await?;
    let mut client = server.connect_over(transport).await?;
    let mut silent = server.connect_over(transport).await?;
    silent.set_auto_pong(false);

    let result = client.connect_result().cloned().unwrap_or_default();
    assert!(
        client.client_id().is_some_and(|id| !id.is_empty()),
        "{result}"
    );
    assert!(result["version"].is_string(), "{result}");
    assert_eq!(result["ping"], json!(1), "{result}");
    assert_eq!(result["pong"], json!(true), "{result}");
    if transport.is_emulated() {
        assert!(
            result["session"].as_str().is_some_and(|s| !s.is_empty()),
            "{result}"
        );
        assert!(
            result["node"].as_str().is_some_and(|s| !s.is_empty()),
            "{result}"
        );
        assert_eq!(client.session(), result["session"].as_str());
    }

    client.wait_for_pings(2, Duration::from_secs(5)).await?;
    // The first ping's pong deadline has passed: only an answered ping
    // keeps it connected, which a command proves.
    client.subscribe("after-pings").await?;

    let (code, reason) = silent.expect_disconnect().await?;
    assert_eq!(
        (code, reason.as_str()),
        (3012, "no pong"),
        "over {transport}"
    );
    assert!(silent.pings_received() >= 1);
    Ok(())
}

// ---- subscribe and publish -------------------------------------------------

every_transport!(subscribe_and_publish =>
    subscribe_and_publish_over_websocket,
    subscribe_and_publish_over_sse,
    subscribe_and_publish_over_http_stream,
    subscribe_and_publish_over_long_poll);

/// Client and API publications reach every subscriber with their offsets,
/// and an unsubscribed client gets no more.
async fn subscribe_and_publish(transport: Transport) -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut alice = server.connect_over(transport).await?;
    let mut bob = server.connect_over(transport).await?;
    for client in [&mut alice, &mut bob] {
        let result = client.subscribe("chat").await?;
        assert!(flag(&result, "recoverable"), "{result}");
        client.subscribe("marker").await?;
    }

    alice.publish("chat", json!({ "text": "hello" })).await?;
    for client in [&mut alice, &mut bob] {
        let publication = client.next_pub("chat").await?;
        assert_eq!(publication["data"], json!({ "text": "hello" }));
        assert_eq!(publication["offset"], json!(1), "{publication}");
    }

    server
        .publish("chat", json!({ "text": "from the API" }))
        .await?;
    for client in [&mut alice, &mut bob] {
        let publication = client.next_pub("chat").await?;
        assert_eq!(publication["data"], json!({ "text": "from the API" }));
        assert_eq!(publication["offset"], json!(2), "{publication}");
    }

    bob.call_result(json!({ "unsubscribe": { "channel": "chat" } }))
        .await?;
    server
        .publish("chat", json!({ "text": "bob left" }))
        .await?;
    server.publish("marker", json!("after")).await?;
    assert_eq!(alice.next_pub("chat").await?["offset"], json!(3));
    // The first publication bob sees after unsubscribing is in `marker`.
    let push = bob.next_push().await?;
    assert_eq!(push["channel"], json!("marker"), "{push}");
    assert_eq!(push["pub"]["data"], json!("after"), "{push}");
    Ok(())
}

// ---- presence with join/leave ---------------------------------------------

every_transport!(presence_with_join_and_leave =>
    presence_with_join_and_leave_over_websocket,
    presence_with_join_and_leave_over_sse,
    presence_with_join_and_leave_over_http_stream,
    presence_with_join_and_leave_over_long_poll);

const SECRET: &str = "transports-secret";

async fn user(
    server: &TidingsServer,
    transport: Transport,
    name: &str,
) -> anyhow::Result<ProtoClient> {
    let token = hs256_token_with_claims(SECRET, &json!({ "sub": name, "info": { "name": name } }))?;
    server
        .connect_over_with(transport, json!({ "token": token }))
        .await
}

/// Waits for the `kind` push of `client_id` in `channel`, passing over the
/// subscriber's own join.
async fn presence_push_of(
    client: &mut ProtoClient,
    kind: &str,
    channel: &str,
    client_id: &str,
) -> anyhow::Result<Value> {
    loop {
        let push = client.next_push_of(kind, channel).await?;
        if push[kind]["info"]["client"] == json!(client_id) {
            return Ok(push);
        }
    }
}

/// Join and leave pushes carry who came and went, and `presence` follows.
async fn presence_with_join_and_leave(transport: Transport) -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .start()
        .await?;
    let mut alice = user(&server, transport, "alice").await?;
    let mut bob = user(&server, transport, "bob").await?;
    let alice_id = alice.client_id().unwrap_or_default().to_owned();
    let bob_id = bob.client_id().unwrap_or_default().to_owned();
    alice.subscribe("room").await?;
    bob.subscribe("room").await?;

    let join = presence_push_of(&mut alice, "join", "room", &bob_id).await?;
    assert_eq!(join["join"]["info"]["user"], json!("bob"), "{join}");
    assert_eq!(
        join["join"]["info"]["conn_info"],
        json!({ "name": "bob" }),
        "{join}"
    );

    let presence = alice.presence("room").await?;
    let entries = presence.as_object().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 2, "{presence}");
    assert_eq!(entries[&alice_id]["user"], json!("alice"), "{presence}");
    assert_eq!(entries[&bob_id]["user"], json!("bob"), "{presence}");

    bob.close().await?;
    let leave = presence_push_of(&mut alice, "leave", "room", &bob_id).await?;
    assert_eq!(leave["leave"]["info"]["user"], json!("bob"), "{leave}");
    let presence = alice.presence("room").await?;
    let ids: Vec<&String> = presence
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(ids, [&alice_id], "{presence}");
    Ok(())
}

// ---- history ----------------------------------------------------------------

every_transport!(history =>
    history_over_websocket,
    history_over_sse,
    history_over_http_stream,
    history_over_long_poll);

/// What a client published is in the history, in order, with paging.
async fn history(transport: Transport) -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connect_over(transport).await?;
    client.subscribe("log").await?;
    for n in 1..=5 {
        client.publish("log", json!({ "n": n })).await?;
    }

    let all = client.history("log", json!({ "limit": -1 })).await?;
    assert_eq!(offsets(&all["publications"]), [1, 2, 3, 4, 5], "{all}");
    let data: Vec<&Value> = all["publications"]
        .as_array()
        .map(|l| l.iter().map(|p| &p["data"]["n"]).collect())
        .unwrap_or_default();
    assert_eq!(
        data,
        [&json!(1), &json!(2), &json!(3), &json!(4), &json!(5)]
    );
    assert_eq!(all["offset"], json!(5), "{all}");
    let epoch = all["epoch"].as_str().unwrap_or_default().to_owned();
    assert!(!epoch.is_empty(), "{all}");

    let page = client
        .history(
            "log",
            json!({ "limit": 2, "since": { "offset": 2, "epoch": epoch } }),
        )
        .await?;
    assert_eq!(offsets(&page["publications"]), [3, 4], "{page}");
    let newest = client
        .history("log", json!({ "limit": 2, "reverse": true }))
        .await?;
    assert_eq!(offsets(&newest["publications"]), [5, 4], "{newest}");
    Ok(())
}

// ---- recovery after a cut connection ---------------------------------------

every_transport!(recovery_after_cut =>
    recovery_after_cut_over_websocket,
    recovery_after_cut_over_sse,
    recovery_after_cut_over_http_stream,
    recovery_after_cut_over_long_poll);

/// A client that vanished gets exactly what it missed on resubscribing with
/// its position, then live publications with no duplicate.
async fn recovery_after_cut(transport: Transport) -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut first = server.connect_over(transport).await?;
    let subscribed = first.subscribe("feed").await?;
    let epoch = subscribed["epoch"].as_str().unwrap_or_default().to_owned();
    assert!(!epoch.is_empty(), "{subscribed}");
    for n in 1..=3 {
        server.publish("feed", json!({ "n": n })).await?;
    }
    let mut last = 0;
    for n in 1..=3u64 {
        let publication = first.next_pub("feed").await?;
        assert_eq!(publication["offset"], json!(n), "{publication}");
        last = n;
    }
    first.vanish();

    for n in 4..=6 {
        server.publish("feed", json!({ "n": n })).await?;
    }
    let mut second = server.connect_over(transport).await?;
    let recovered = second
        .subscribe_with(json!({
            "channel": "feed", "recover": true, "offset": last, "epoch": epoch
        }))
        .await?;
    assert!(flag(&recovered, "recovered"), "{recovered}");
    assert_eq!(
        offsets(&recovered["publications"]),
        [4, 5, 6],
        "{recovered}"
    );
    for (publication, n) in recovered["publications"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(4..)
    {
        assert_eq!(publication["data"], json!({ "n": n }), "{recovered}");
    }

    server.publish("feed", json!({ "n": 7 })).await?;
    let live = second.next_pub("feed").await?;
    assert_eq!(live["offset"], json!(7), "{live}");
    Ok(())
}

// ---- slow consumer ----------------------------------------------------------

every_transport!(slow_consumer =>
    slow_consumer_over_websocket,
    slow_consumer_over_sse,
    slow_consumer_over_http_stream,
    slow_consumer_over_long_poll);

/// Queue bound for the slow consumer scenario.
const QUEUE: &str = "131072";
/// Bytes of padding per publication.
const PAD: usize = 8192;
/// Publications per API batch: about a quarter of the queue, so a reader
/// that keeps up (a long-poll client still holding the previous batch
/// unacknowledged included) never comes near the bound.
const BURST: u64 = 4;
/// Give up after this many (32 MiB, far beyond any socket buffers).
const MAX_PUBLICATIONS: u64 = 4096;

/// A client that stops reading (for long polling: stops polling) is
/// disconnected with 3008 once its queue overflows, while a client that
/// keeps reading receives every publication.
async fn slow_consumer(transport: Transport) -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_QUEUE_MAX_SIZE", QUEUE)
        // The WebSocket writer may wait this long for the slow reader.
        .env("TIDINGS_WEBSOCKET_WRITE_TIMEOUT", "20s")
        .start()
        .await?;
    let mut slow = server.connect_over(transport).await?;
    slow.subscribe("firehose").await?;
    let mut fast = server.connect_over(transport).await?;
    fast.subscribe("firehose").await?;

    let pad = "p".repeat(PAD);
    let mut published = 0u64;
    loop {
        let commands: Vec<Value> = (published + 1..=published + BURST)
            .map(
                |n| json!({ "publish": { "channel": "firehose", "data": { "n": n, "pad": pad } } }),
            )
            .collect();
        server
            .api_ok("batch", json!({ "commands": commands }))
            .await?;
        for _ in 0..BURST {
            published += 1;
            let publication = fast.next_pub("firehose").await?;
            assert_eq!(publication["offset"], json!(published), "over {transport}");
        }
        let stats = server
            .api_ok("presence_stats", json!({ "channel": "firehose" }))
            .await?;
        if stats["num_clients"] == json!(1) {
            break;
        }
        assert!(
            published < MAX_PUBLICATIONS,
            "{published} publications and the slow {transport} client is still subscribed"
        );
    }

    // Reading again, the slow client finds what was sent before the
    // overflow, then the disconnect.
    let (code, reason) = slow
        .expect_disconnect_within(Duration::from_secs(20))
        .await?;
    assert_eq!((code, reason.as_str()), (3008, "slow"), "over {transport}");

    server.publish("firehose", json!({ "n": "last" })).await?;
    let publication = fast.next_pub("firehose").await?;
    assert_eq!(publication["offset"], json!(published + 1));
    assert!(fast.disconnect_status().is_none());
    Ok(())
}

// ---- shutdown ---------------------------------------------------------------

every_transport!(shutdown =>
    shutdown_over_websocket,
    shutdown_over_sse,
    shutdown_over_http_stream,
    shutdown_over_long_poll);

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// SIGTERM disconnects every client with 3001 "shutdown" and the process
/// exits within `shutdown.timeout`.
async fn shutdown(transport: Transport) -> anyhow::Result<()> {
    let mut server = TidingsServer::builder()
        .env("TIDINGS_SHUTDOWN_TIMEOUT", "3s")
        .start()
        .await?;
    let mut subscribed = server.connect_over(transport).await?;
    subscribed.subscribe("news").await?;
    let mut idle = server.connect_over(transport).await?;
    // Over long polling, this client is between two polls when the signal
    // arrives (the reply below comes with a poll, and none follows until it
    // reads again); its next poll must still collect the disconnect.
    idle.set_eager_polling(false);
    idle.subscribe("quiet").await?;

    let started = Instant::now();
    server.sigterm()?;
    for (name, client) in [("subscribed", &mut subscribed), ("idle", &mut idle)] {
        let (code, reason) = client
            .expect_disconnect_within(SHUTDOWN_TIMEOUT)
            .await
            .with_context(|| format!("the {name} client over {transport}"))?;
        assert_eq!(
            (code, reason.as_str()),
            (3001, "shutdown"),
            "over {transport}"
        );
    }
    let status = server
        .wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(1))
        .await?;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() <= SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "over {transport} the server took {:?} to exit",
        started.elapsed()
    );
    Ok(())
}

// ---- the same stream on every transport ------------------------------------

const STREAM_LENGTH: u64 = 10_000;
const BATCH: u64 = 250;

/// The same 10,000 publications reach a subscriber on each transport at the
/// same time, with identical, contiguous offsets and the data that was sent.
#[tokio::test]
async fn ten_thousand_publications_reach_every_transport_in_order() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CHANNEL_WITHOUT_NAMESPACE_HISTORY_SIZE", "10000")
        .env("TIDINGS_CLIENT_QUEUE_MAX_SIZE", "67108864")
        .start()
        .await?;
    let mut readers = Vec::new();
    for transport in Transport::ALL {
        let mut client = server.connect_over(transport).await?;
        client.subscribe("stream").await?;
        readers.push(tokio::spawn(async move {
            let mut offsets = Vec::with_capacity(STREAM_LENGTH as usize);
            for _ in 0..STREAM_LENGTH {
                let publication = client.next_pub("stream").await?;
                let offset = publication["offset"].as_u64().unwrap_or(0);
                anyhow::ensure!(
                    publication["data"] == json!({ "n": offset }),
                    "over {transport}: offset {offset} carries {publication}"
                );
                offsets.push(offset);
            }
            anyhow::Ok((transport, offsets))
        }));
    }

    for start in (1..=STREAM_LENGTH).step_by(BATCH as usize) {
        let commands: Vec<Value> = (start..start + BATCH)
            .map(|n| json!({ "publish": { "channel": "stream", "data": { "n": n } } }))
            .collect();
        // A batch answers `{"replies": [...]}` at the top level.
        let (status, result) = server.api("batch", json!({ "commands": commands })).await?;
        let replies = result["replies"].as_array().map_or(0, Vec::len);
        assert_eq!((status, replies as u64), (200, BATCH), "{result}");
    }

    let expected: Vec<u64> = (1..=STREAM_LENGTH).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    for reader in readers {
        let (transport, offsets) = tokio::time::timeout_at(deadline, reader).await???;
        assert!(
            offsets == expected,
            "over {transport}: {} publications, first differing at index {:?}",
            offsets.len(),
            offsets.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
    Ok(())
}
