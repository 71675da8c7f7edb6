//! Every limit of docs/limits.md, one test each: the client over the limit gets the
//! documented answer, and another client on the same node carries on as before.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::{handshake_status, hs256_token, Outcome, TidingsServer, WsClient};
use tokio::time::Instant;

const SECRET: &str = "limits-test-secret-that-is-long-enough";

/// A connected, subscribed client that must not notice what happens to the others.
struct Bystander {
    client: WsClient,
    next: u64,
}

impl Bystander {
    async fn join(server: &TidingsServer) -> anyhow::Result<Self> {
        let mut client = server.connected_client().await?;
        client.subscribe("bystander").await?;
        Ok(Self { client, next: 0 })
    }

    /// Still receives publications and still gets answers to its own commands.
    async fn still_fine(&mut self, server: &TidingsServer) -> anyhow::Result<()> {
        self.next += 1;
        server
            .publish("bystander", json!({ "n": self.next }))
            .await?;
        let publication = self.client.next_pub("bystander").await?;
        assert_eq!(publication["data"]["n"], json!(self.next));
        let stats = self
            .client
            .call_result(json!({ "presence_stats": { "channel": "bystander" } }))
            .await?;
        assert_eq!(stats["num_clients"], json!(1), "{stats}");
        Ok(())
    }
}

/// POSTs `body` to `path` and returns the status and the response text.
async fn post(server: &TidingsServer, path: &str, body: String) -> anyhow::Result<(u16, String)> {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.http_url()))
        .header("Content-Type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// GETs `path` and returns the status (the body of a stream is not read).
async fn get_status(server: &TidingsServer, path: &str) -> anyhow::Result<u16> {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.http_url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// Opens WebSockets until one is accepted, for at most five seconds.
async fn open_when_admitted(server: &TidingsServer) -> anyhow::Result<WsClient> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match WsClient::open(&server.ws_url()).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() < deadline => {
                anyhow::ensure!(format!("{e:#}").contains("503"), "unexpected: {e:#}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.context("no connection admitted within 5 s")),
        }
    }
}

#[tokio::test]
async fn websocket_message_over_the_configured_size_closes_1009() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_WEBSOCKET_MESSAGE_SIZE_LIMIT", "4096")
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    client.subscribe("sized").await?;
    client.publish("sized", json!("s".repeat(3000))).await?;
    let frame = json!({ "id": 9, "publish": { "channel": "sized", "data": "b".repeat(5000) } });
    let (code, reason) = client.send_raw_expect_close(&frame.to_string()).await?;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    bystander.still_fine(&server).await
}

/// A server whose HTTP endpoints all take at most 4 KiB bodies.
async fn small_bodies_server() -> anyhow::Result<TidingsServer> {
    let mut builder = TidingsServer::builder();
    for key in [
        "HTTP_API",
        "EMULATION",
        "SSE",
        "HTTP_STREAM",
        "UNI_SSE",
        "UNI_HTTP_STREAM",
    ] {
        builder = builder.env(&format!("TIDINGS_{key}_MAX_REQUEST_BODY_SIZE"), "4096");
    }
    builder.start().await
}

fn assert_413(path: &str, (status, text): (u16, String)) {
    assert_eq!(status, 413, "{path}: {text}");
    assert!(text.contains("length limit exceeded"), "{path}: {text:?}");
}

#[tokio::test]
async fn api_body_over_http_api_max_request_body_size_gets_413() -> anyhow::Result<()> {
    let server = small_bodies_server().await?;
    let mut bystander = Bystander::join(&server).await?;
    let fits = json!({ "channel": "bystander", "data": "f".repeat(3000) });
    let (status, reply) = server.api("publish", fits).await?;
    assert_eq!(status, 200, "{reply}");
    bystander.client.next_pub("bystander").await?;
    let key = server.api_key().unwrap_or_default().to_string();
    let big = json!({ "channel": "bystander", "data": "x".repeat(8000) }).to_string();
    let refused = server
        .api_raw("publish", &big, &[("X-API-Key", key.as_str())])
        .await?;
    assert_413("/api/publish", refused);
    bystander.still_fine(&server).await?;
    // Nothing of the refused publication was delivered.
    let delivered = bystander
        .client
        .skipped_pushes()
        .iter()
        .any(|p| p.get("pub").is_some());
    assert!(!delivered, "{:?}", bystander.client.skipped_pushes());
    Ok(())
}

#[tokio::test]
async fn emulation_body_over_emulation_max_request_body_size_gets_413() -> anyhow::Result<()> {
    let server = small_bodies_server().await?;
    let mut bystander = Bystander::join(&server).await?;
    // Under the limit the request is read and routed (to no session here).
    let small = json!({ "session": "none", "data": "{}" }).to_string();
    assert_eq!(post(&server, "/emulation", small).await?.0, 404);
    let big = json!({ "session": "none", "data": "x".repeat(8000) }).to_string();
    assert_413("/emulation", post(&server, "/emulation", big).await?);
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn long_poll_open_over_emulation_max_request_body_size_gets_413() -> anyhow::Result<()> {
    let server = small_bodies_server().await?;
    let mut bystander = Bystander::join(&server).await?;
    let big = json!({ "id": 1, "connect": { "data": "x".repeat(8000) } }).to_string();
    assert_413(
        "/connection/long_poll",
        post(&server, "/connection/long_poll", big).await?,
    );
    let fits = json!({ "id": 1, "connect": {} }).to_string();
    assert_eq!(post(&server, "/connection/long_poll", fits).await?.0, 200);
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn stream_connect_over_its_max_request_body_size_gets_413() -> anyhow::Result<()> {
    let server = small_bodies_server().await?;
    let mut bystander = Bystander::join(&server).await?;
    let big = json!({ "id": 1, "connect": { "data": "x".repeat(8000) } }).to_string();
    for path in [
        "/connection/sse",
        "/connection/http_stream",
        "/connection/uni_sse",
        "/connection/uni_http_stream",
    ] {
        assert_413(path, post(&server, path, big.clone()).await?);
    }
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn subscriptions_past_client_channel_limit_get_106() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_CHANNEL_LIMIT", "3")
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut client = server.connected_client().await?;
    for channel in ["one", "two", "three"] {
        client.subscribe(channel).await?;
    }
    let error = client
        .call_error(json!({ "subscribe": { "channel": "four" } }))
        .await?;
    assert_eq!(error["code"], json!(106), "{error}");
    assert_eq!(error["message"], json!("limit exceeded"));
    // The connection stays, and a freed slot can be used again.
    client.unsubscribe("one").await?;
    client.subscribe("four").await?;
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn connect_past_client_user_connection_limit_is_closed_3504() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .env("TIDINGS_CLIENT_USER_CONNECTION_LIMIT", "2")
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let alice = hs256_token(SECRET, "alice", None)?;
    let first = server.connected_client_with_token(&alice).await?;
    let _second = server.connected_client_with_token(&alice).await?;

    let mut third = server.client().await?;
    let outcome = third
        .call_or_close(json!({ "connect": { "token": alice } }))
        .await?;
    assert_eq!(outcome, Outcome::Closed(3504, "connection limit".into()));

    // Other users, and anonymous users (not tracked), are not limited by alice.
    let bob = hs256_token(SECRET, "bob", None)?;
    server.connected_client_with_token(&bob).await?;
    let _anonymous: Vec<WsClient> = vec![
        server.connected_client().await?,
        server.connected_client().await?,
    ];

    // Once one of alice's connections ends, she may connect again.
    first.close().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = server.client().await?;
        match again
            .call_or_close(json!({ "connect": { "token": alice } }))
            .await?
        {
            Outcome::Reply(reply) if reply.get("connect").is_some() => break,
            other => {
                assert!(Instant::now() < deadline, "alice still refused: {other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn connections_past_client_connection_limit_get_503() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_CONNECTION_LIMIT", "3")
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let second = server.connected_client().await?;
    let _third = server.client().await?; // counts before it sends connect
    assert_eq!(handshake_status(&server.ws_url(), &[]).await?, 503);
    let connect = json!({ "id": 1, "connect": {} }).to_string();
    let (status, text) = post(&server, "/connection/long_poll", connect.clone()).await?;
    assert_eq!((status, text.as_str()), (503, "connection limit reached"));
    assert_eq!(
        post(&server, "/connection/http_stream", connect).await?.0,
        503
    );
    assert_eq!(
        get_status(&server, "/connection/uni_sse?cf_connect=%7B%7D").await?,
        503
    );
    bystander.still_fine(&server).await?;

    // A connection that ends frees its slot.
    second.close().await?;
    let mut fresh = open_when_admitted(&server).await?;
    fresh.connect(json!({})).await?;
    assert_eq!(handshake_status(&server.ws_url(), &[]).await?, 503);
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn simultaneous_upgrades_never_pass_client_connection_limit() -> anyhow::Result<()> {
    const LIMIT: usize = 5;
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_CONNECTION_LIMIT", &LIMIT.to_string())
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let url = server.ws_url();
    let attempts = (0..16).map(|_| WsClient::open(&url));
    let results = futures_util::future::join_all(attempts).await;
    let mut admitted = Vec::new();
    for result in results {
        match result {
            Ok(client) => admitted.push(client),
            Err(e) => assert!(format!("{e:#}").contains("503"), "{e:#}"),
        }
    }
    assert_eq!(admitted.len(), LIMIT - 1, "the bystander holds one slot");
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn connections_faster_than_client_connection_rate_limit_get_503() -> anyhow::Result<()> {
    const RATE: u32 = 2;
    // The bucket fills when the node starts, which is after this instant.
    let started = Instant::now();
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_CONNECTION_RATE_LIMIT", &RATE.to_string())
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut admitted = 1; // the bystander
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = handshake_status(&server.ws_url(), &[]).await?;
        if status == 503 {
            break;
        }
        assert_eq!(status, 101);
        admitted += 1;
        assert!(Instant::now() < deadline, "never rate limited");
    }
    // No more than the burst plus what the rate earned meanwhile got through.
    let earned = started.elapsed().as_secs_f64() * f64::from(RATE);
    assert!(
        f64::from(admitted) <= f64::from(RATE) + earned.ceil(),
        "{admitted} connections admitted in {:?}",
        started.elapsed()
    );
    // Open connections are not affected, and the rate comes back.
    bystander.still_fine(&server).await?;
    let mut later = open_when_admitted(&server).await?;
    later.connect(json!({})).await?;
    bystander.still_fine(&server).await
}

/// `n` ping commands with ids from `first`.
fn pings(first: u64, n: u64) -> Vec<Value> {
    (first..first + n)
        .map(|id| json!({ "id": id, "ping": {} }))
        .collect()
}

#[tokio::test]
async fn commands_over_the_command_rate_limit_get_111_then_close_3013() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_RATE", "1")
        .env("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_BURST", "5")
        .env("TIDINGS_CLIENT_COMMAND_RATE_LIMIT_DISCONNECT_AFTER", "5")
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let mut flooder = server.connected_client().await?;
    // Connect took one token of five: of eight pings, four or so pass.
    flooder.send_batch(&pings(100, 8)).await?;
    let mut passed = 0;
    let mut refused = 0;
    for id in 100..108 {
        let reply = flooder.wait_reply(id).await?;
        match reply.get("error") {
            None => passed += 1,
            Some(error) => {
                assert_eq!(
                    error,
                    &json!({ "code": 111, "message": "too many requests", "temporary": true })
                );
                refused += 1;
            }
        }
    }
    assert!(
        (4..=6).contains(&passed),
        "{passed} passed, {refused} refused"
    );
    assert!(refused >= 2, "{passed} passed, {refused} refused");
    bystander.still_fine(&server).await?;

    // Going on regardless: the fifth refusal closes the connection.
    flooder.send_batch(&pings(200, 10)).await?;
    let (code, reason) = flooder.expect_close().await?;
    assert_eq!((code, reason.as_str()), (3013, "too many requests"));
    bystander.still_fine(&server).await
}

#[tokio::test]
async fn connection_without_connect_within_stale_close_delay_is_closed_3502() -> anyhow::Result<()>
{
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_STALE_CLOSE_DELAY", "500ms")
        .start()
        .await?;
    let mut bystander = Bystander::join(&server).await?;
    let opened = Instant::now();
    let mut idle = server.client().await?;
    let (code, reason) = idle.expect_close_within(Duration::from_secs(5)).await?;
    assert_eq!((code, reason.as_str()), (3502, "stale"));
    assert!(opened.elapsed() >= Duration::from_millis(500));
    // The bystander connected in time and stays, well past the delay.
    bystander.still_fine(&server).await
}
