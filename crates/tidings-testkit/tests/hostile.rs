//! The hostile input suite (issue 5, section 7).
//!
//! Every case sends something a browser, bot or scanner might send on purpose,
//! and proves three things:
//!
//! 1. it gets its documented answer: an error code, a close code or an HTTP
//!    status with a message (docs/codes.md, docs/protocol.md "Bad input",
//!    docs/security.md);
//! 2. nothing panicked: the server process is alive and its output has no
//!    "panicked" line;
//! 3. a control client on the same node still receives 100 of 100
//!    publications, with contiguous offsets, within 5 s of their publishing
//!    through one API batch.
//!
//! WebSocket frames that a WebSocket library would refuse to send are written
//! by hand with `tidings_testkit::raw_ws`.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use serde_json::{json, Value};
use tidings_testkit::raw_ws::{self, Ending, Frame, RawWs};
use tidings_testkit::{TidingsServer, TidingsServerBuilder, WsClient, DEFAULT_WAIT};
use tokio::time::Instant;

/// The channel the control client watches (history on, so offsets are
/// contiguous).
const CONTROL: &str = "control";

/// How many publications each health check sends, and how long the control
/// client has to receive them.
const CONTROL_COUNT: u64 = 100;
const CONTROL_DEADLINE: Duration = Duration::from_secs(5);

/// A node under attack, with a well-behaved client watching it.
struct Watched {
    server: TidingsServer,
    control: WsClient,
    /// The last offset the control client saw in [`CONTROL`].
    offset: u64,
    /// Health checks passed so far, for failure messages.
    checks: u32,
}

impl Watched {
    /// A development-profile node (every transport on) with its control client.
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(TidingsServer::builder()).await
    }

    /// A node started from `builder` (development profile unless it says
    /// otherwise), with its control client.
    async fn start_with(builder: TidingsServerBuilder) -> anyhow::Result<Self> {
        let server = builder.start().await?;
        let mut control = server.connected_client().await?;
        let subscribed = control.subscribe(CONTROL).await?;
        let offset = subscribed["offset"].as_u64().unwrap_or(0);
        Ok(Self {
            server,
            control,
            offset,
            checks: 0,
        })
    }

    /// Proves the node is unhurt: alive, no panic, and the control client
    /// gets 100 of 100 publications in order within 5 s.
    async fn unhurt(&mut self) -> anyhow::Result<()> {
        self.no_panic()?;
        let commands: Vec<Value> = (0..CONTROL_COUNT)
            .map(|n| json!({ "publish": { "channel": CONTROL, "data": { "n": n } } }))
            .collect();
        let (status, reply) = self
            .server
            .api("batch", json!({ "commands": commands }))
            .await?;
        ensure!(
            status == 200,
            "the control batch got HTTP {status}: {reply}"
        );
        let replies = reply["replies"]
            .as_array()
            .ok_or_else(|| anyhow!("no replies in {reply}"))?;
        ensure!(
            replies.len() == CONTROL_COUNT as usize
                && replies.iter().all(|r| r.get("publish").is_some()),
            "the control batch was not published: {reply}"
        );
        let deadline = Instant::now() + CONTROL_DEADLINE;
        for n in 0..CONTROL_COUNT {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "check {}: the control client got {n} of {CONTROL_COUNT} within {CONTROL_DEADLINE:?}",
                self.checks + 1
            );
            self.control.set_wait(left);
            let publication = self.control.next_pub(CONTROL).await.with_context(|| {
                format!(
                    "check {}: the control client got {n} of {CONTROL_COUNT}",
                    self.checks + 1
                )
            })?;
            let offset = publication["offset"].as_u64().unwrap_or(0);
            ensure!(
                offset == self.offset + 1 && publication["data"]["n"] == json!(n),
                "check {}: expected offset {} with n={n}, got {publication}",
                self.checks + 1,
                self.offset + 1
            );
            self.offset = offset;
        }
        self.control.set_wait(DEFAULT_WAIT);
        self.checks += 1;
        self.no_panic()
    }

    /// The process is running and has printed no panic.
    fn no_panic(&self) -> anyhow::Result<()> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.server.pid()))
            .context("the server process is gone")?;
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        ensure!(
            !matches!(state, Some('Z' | 'X') | None),
            "the server process has exited (state {state:?})"
        );
        let panics: Vec<String> = self
            .server
            .logs()
            .into_iter()
            .filter(|l| l.contains("panicked"))
            .collect();
        ensure!(panics.is_empty(), "the server panicked: {panics:?}");
        Ok(())
    }

    /// The peak resident memory of the server so far, in KiB.
    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.memory_kib("VmHWM")
    }

    /// The resident memory of the server now, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        self.memory_kib("VmRSS")
    }

    /// A `kB` line of /proc/PID/status.
    fn memory_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no {field} in /proc/PID/status"))
    }
}

// ---------------------------------------------------------------------------
// Helpers: protocol-level clients
// ---------------------------------------------------------------------------

/// Sends `frame` on a fresh connected client and expects the close `code`.
async fn closes_with(server: &TidingsServer, frame: &str, code: u16) -> anyhow::Result<()> {
    let mut client = server.connected_client().await?;
    let (got, reason) = client.send_raw_expect_close(frame).await?;
    ensure!(
        got == code,
        "{} closed with {got} {reason:?}, expected {code}",
        shorten(frame)
    );
    Ok(())
}

fn shorten(text: &str) -> String {
    if text.len() <= 120 {
        format!("{text:?}")
    } else {
        let cut = (0..=120)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{:?}… ({} bytes)", &text[..cut], text.len())
    }
}

/// A hand-driven WebSocket that has sent `connect` and read its reply.
async fn raw_client(server: &TidingsServer) -> anyhow::Result<RawWs> {
    let mut ws = RawWs::connect(server.addr(), "/connection/websocket").await?;
    ws.send_text(r#"{"id":1,"connect":{}}"#).await?;
    let reply = ws.read_text(DEFAULT_WAIT).await?;
    ensure!(reply.contains("\"connect\""), "connect reply: {reply}");
    Ok(ws)
}

/// Sends `bytes` (the write may fail once the server has closed) and expects
/// the close `code`.
async fn raw_closes_with(ws: &mut RawWs, bytes: &[u8], code: u16) -> anyhow::Result<()> {
    let _ = ws.send_bytes(bytes).await;
    match ws.expect_end(DEFAULT_WAIT).await? {
        Ending::Close(got, _) if got == code => Ok(()),
        other => bail!("expected close {code}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Helpers: HTTP
// ---------------------------------------------------------------------------

/// One HTTP request with exactly these headers. A 2xx answer's body is not
/// read (it may be an endless stream).
async fn http(
    server: &TidingsServer,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut request = client
        .request(method.clone(), format!("{}{path}", server.http_url()))
        .timeout(DEFAULT_WAIT);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {}", shorten(path)))?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok((status, String::from("<not read>")));
    }
    let text = response.text().await.context("reading the refusal")?;
    Ok((status, text))
}

/// Expects `status` (a 4xx) with a non-empty message.
async fn refused(
    server: &TidingsServer,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
    status: u16,
) -> anyhow::Result<()> {
    let shown = body
        .as_ref()
        .map(|b| shorten(&String::from_utf8_lossy(b)))
        .unwrap_or_default();
    let (got, text) = http(server, method, path, body, headers).await?;
    ensure!(
        got == status,
        "{method} {} {shown}: expected {status}, got {got} {text:?}",
        shorten(path)
    );
    ensure!(
        (400..500).contains(&got),
        "{method} {}: {got} is not a 4xx",
        shorten(path)
    );
    ensure!(
        !text.trim().is_empty(),
        "{method} {} {shown}: {got} came without a message",
        shorten(path)
    );
    Ok(())
}

fn api_headers(server: &TidingsServer) -> anyhow::Result<[(&'static str, String); 2]> {
    let key = server.api_key().context("no API key")?.to_owned();
    Ok([
        ("X-API-Key", key),
        ("Content-Type", "application/json".to_owned()),
    ])
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Reads Server-Sent Events from a streaming response.
struct SseReader {
    response: reqwest::Response,
    buffered: String,
}

impl SseReader {
    async fn open(server: &TidingsServer, path: &str) -> anyhow::Result<Self> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", server.http_url()))
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "GET {path}: {}",
            response.status()
        );
        Ok(Self {
            response,
            buffered: String::new(),
        })
    }

    /// The next event's lines (events end at a blank line).
    async fn next_event(&mut self) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + DEFAULT_WAIT;
        loop {
            if let Some(end) = self.buffered.find("\n\n") {
                let event: String = self.buffered.drain(..end + 2).collect();
                return Ok(event
                    .trim_end_matches('\n')
                    .split('\n')
                    .map(str::to_owned)
                    .collect());
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .map_err(|_| anyhow!("timed out waiting for an event"))??
                .ok_or_else(|| anyhow!("the stream ended"))?;
            self.buffered.push_str(std::str::from_utf8(&chunk)?);
        }
    }

    /// The next event's JSON, checking that it is exactly one `data:` line.
    async fn next_json(&mut self) -> anyhow::Result<Value> {
        let lines = self.next_event().await?;
        ensure!(
            lines.len() == 1 && lines[0].starts_with("data: "),
            "an event that is not one data line: {lines:?}"
        );
        Ok(serde_json::from_str(&lines[0]["data: ".len()..])?)
    }

    /// The next publication push, skipping joins, leaves and pings (each
    /// still checked to be one data line).
    async fn next_pub(&mut self) -> anyhow::Result<Value> {
        loop {
            let event = self.next_json().await?;
            if event.get("pub").is_some() {
                return Ok(event);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// JSON content
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_closes_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for frame in [
        "not json at all",
        "{",
        "}",
        "{\"id\":2,\"subscribe\":",
        "{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}}",
        "{\"id\":2,,\"subscribe\":{}}",
        "{'id':2}",
        "{\"id\":2,\"subscribe\":{\"channel\":\"\\x41\"}}",
        "{\"id\":2,\"subscribe\":{\"channel\":\"\\ud800\"}}",
        "\u{feff}{\"id\":2,\"ping\":{}}",
        "null",
        "[]",
        "42",
        "\"a string\"",
    ] {
        closes_with(&node.server, frame, 3501).await?;
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn partial_json_split_across_messages_closes_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    // Each message is complete lines: the first half alone is already bad.
    let mut client = node.server.connected_client().await?;
    let _ = client.send_raw("{\"id\":2,\"subscribe\":{\"chan").await;
    let _ = client.send_raw("nel\":\"halves\"}}").await;
    let (code, reason) = client.expect_close().await?;
    ensure!(code == 3501, "closed with {code} {reason:?}");
    // A good line followed by a cut one: the first is answered, then 3501.
    let mut client = node.server.connected_client().await?;
    client
        .send_raw("{\"id\":2,\"subscribe\":{\"channel\":\"half\"}}\n{\"id\":3,\"subscribe\":{\"cha")
        .await?;
    let reply = client.wait_reply(2).await?;
    ensure!(reply.get("subscribe").is_some(), "first line: {reply}");
    let (code, _) = client.expect_close().await?;
    ensure!(code == 3501, "closed with {code}");
    node.unhurt().await
}

#[tokio::test]
async fn a_hundred_thousand_brackets_close_1009() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    // Larger than websocket.message_size_limit (64 KiB): refused unread.
    closes_with(&node.server, &"[".repeat(100_000), 1009).await?;
    node.unhurt().await
}

#[tokio::test]
async fn deep_nesting_within_the_size_limit_closes_3501_or_is_carried() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let depth = 30_000;
    // Unbalanced nesting never ends: 3501.
    let open = format!(
        "{{\"id\":2,\"publish\":{{\"channel\":\"deep\",\"data\":{}}}}}",
        "[".repeat(depth)
    );
    closes_with(&node.server, &open, 3501).await?;
    node.unhurt().await?;
    // Nesting where a string or number belongs: 3501.
    let typed = format!(
        "{{\"id\":2,\"subscribe\":{{\"channel\":{}{}}}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    closes_with(&node.server, &typed, 3501).await?;
    node.unhurt().await?;
    // Balanced nesting in an unknown field is skipped without recursion.
    let mut client = node.server.connected_client().await?;
    let unknown = format!(
        "{{\"id\":2,\"subscribe\":{{\"channel\":\"deep\",\"zz\":{}{}}}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    client.send_raw(&unknown).await?;
    let reply = client.wait_reply(2).await?;
    ensure!(reply.get("subscribe").is_some(), "unknown field: {reply}");
    // Balanced nesting in publication data is opaque payload: published and
    // delivered byte for byte (its readers must cope with its depth).
    let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut publisher = node.server.connected_client().await?;
    publisher
        .send_raw(&format!(
            "{{\"id\":2,\"publish\":{{\"channel\":\"deep\",\"data\":{data}}}}}"
        ))
        .await?;
    let reply = publisher.wait_reply(2).await?;
    ensure!(reply.get("publish").is_some(), "deep data: {reply}");
    // The subscriber's own join push may come in a frame of its own first.
    let mut frame = client.recv_frame().await?;
    for _ in 0..3 {
        if frame.contains("\"pub\"") {
            break;
        }
        frame = client.recv_frame().await?;
    }
    ensure!(
        frame.contains(&data),
        "the deep publication changed on the way"
    );
    node.unhurt().await
}

#[tokio::test]
async fn deep_nesting_in_http_bodies_gets_400() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let deep = "[".repeat(100_000).into_bytes();
    let [key, ctype] = api_headers(&node.server)?;
    let headers = [(key.0, key.1.as_str()), (ctype.0, ctype.1.as_str())];
    refused(
        &node.server,
        "POST",
        "/api/publish",
        Some(deep.clone()),
        &headers,
        400,
    )
    .await?;
    node.unhurt().await?;
    let balanced = format!(
        "{{\"channel\":\"x\",\"data\":{}{}}}",
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let (status, text) = http(
        &node.server,
        "POST",
        "/api/publish",
        Some(balanced.into_bytes()),
        &headers,
    )
    .await?;
    ensure!(
        status == 400 && text.contains("recursion limit"),
        "balanced 1000-deep API body: {status} {text:?}"
    );
    node.unhurt().await?;
    let body = format!(
        "{{\"session\":\"s\",\"data\":{}{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    refused(
        &node.server,
        "POST",
        "/emulation",
        Some(body.into_bytes()),
        &[],
        400,
    )
    .await?;
    node.unhurt().await
}

#[tokio::test]
async fn huge_numbers_in_typed_fields_close_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for frame in [
        r#"{"id":4294967296,"subscribe":{"channel":"n"}}"#,
        r#"{"id":1e400,"subscribe":{"channel":"n"}}"#,
        r#"{"id":2.5,"subscribe":{"channel":"n"}}"#,
        r#"{"id":2,"history":{"channel":"n","limit":100000000000000000000}}"#,
        r#"{"id":2,"history":{"channel":"n","limit":-9223372036854775809}}"#,
        r#"{"id":2,"subscribe":{"channel":"n","recover":true,"offset":18446744073709551616,"epoch":"e"}}"#,
        r#"{"id":2,"subscribe":{"channel":"n","recover":true,"offset":-1,"epoch":"e"}}"#,
    ] {
        closes_with(&node.server, frame, 3501).await?;
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn huge_numbers_in_data_are_carried_verbatim() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let mut subscriber = node.server.connected_client().await?;
    subscriber.subscribe("numbers").await?;
    let long = "9".repeat(20_000);
    for data in ["1e999999", "-1e-999999", long.as_str()] {
        let mut publisher = node.server.connected_client().await?;
        publisher
            .send_raw(&format!(
                "{{\"id\":2,\"publish\":{{\"channel\":\"numbers\",\"data\":{data}}}}}"
            ))
            .await?;
        let reply = publisher.wait_reply(2).await?;
        ensure!(
            reply.get("publish").is_some(),
            "data {}: {reply}",
            shorten(data)
        );
        // The subscriber's own join push may come in a frame of its own first.
        let frame = loop {
            let frame = subscriber.recv_frame().await?;
            if frame.contains("\"pub\"") || !frame.contains("\"join\"") {
                break frame;
            }
        };
        ensure!(
            frame.contains(&format!("\"data\":{data}")),
            "data {} arrived as {}",
            shorten(data),
            shorten(&frame)
        );
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn wrong_types_close_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for frame in [
        r#"{"id":"2","subscribe":{"channel":"t"}}"#,
        r#"{"id":true,"subscribe":{"channel":"t"}}"#,
        r#"{"id":null,"subscribe":{"channel":"t"}}"#,
        r#"{"id":2,"subscribe":"t"}"#,
        r#"{"id":2,"subscribe":42}"#,
        r#"{"id":2,"subscribe":{"channel":123}}"#,
        r#"{"id":2,"subscribe":{"channel":null}}"#,
        r#"{"id":2,"subscribe":{"channel":{"a":1}}}"#,
        r#"{"id":2,"subscribe":{"channel":"t","recover":"yes"}}"#,
        r#"{"id":2,"history":{"channel":"t","limit":"ten"}}"#,
        r#"{"id":2,"history":{"channel":"t","since":5}}"#,
        r#"{"id":2,"publish":{"channel":["t"],"data":{}}}"#,
        r#"{"id":2,"rpc":{"method":7}}"#,
        r#"{"id":2,"refresh":{"token":false}}"#,
    ] {
        closes_with(&node.server, frame, 3501).await?;
        node.unhurt().await?;
    }
    // Wrong types in the connect command itself.
    for frame in [
        r#"{"id":1,"connect":{"token":42}}"#,
        r#"{"id":1,"connect":"token"}"#,
        r#"{"id":1,"connect":{"subs":[1,2]}}"#,
    ] {
        let mut client = node.server.client().await?;
        let (code, reason) = client.send_raw_expect_close(frame).await?;
        ensure!(code == 3501, "{frame}: {code} {reason:?}");
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn subscribe_options_tidings_does_not_do_are_refused() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    // A delta type other than fossil closes, as in Centrifugo.
    closes_with(
        &node.server,
        r#"{"id":2,"subscribe":{"channel":"o","delta":"xdelta"}}"#,
        3501,
    )
    .await?;
    node.unhurt().await?;
    // The development profile allows no tags filter; map and shared-poll
    // subscriptions and map publications are not offered. Each is an error reply
    // and the connection stays.
    let mut client = node.server.connected_client().await?;
    for (cmd, code) in [
        (
            json!({"subscribe": {"channel": "o", "tf": {"key": "k", "cmp": "eq", "val": "v"}}}),
            107,
        ),
        (json!({"subscribe": {"channel": "o", "type": 1}}), 103),
        (json!({"subscribe": {"channel": "o", "type": 4}}), 108),
        (
            json!({"publish": {"channel": "o", "data": {}, "type": 1}}),
            108,
        ),
    ] {
        let got = client.error_code(cmd.clone()).await?;
        ensure!(got == code, "{cmd}: {got}, expected {code}");
    }
    client.subscribe("o").await?;
    node.unhurt().await
}

#[tokio::test]
async fn unknown_fields_are_accepted() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let mut client = node.server.client().await?;
    client
        .send_raw(r#"{"id":1,"connect":{"name":"js","zz":[1,{"a":null}],"version":"9"},"extra":1}"#)
        .await?;
    let reply = client.wait_reply(1).await?;
    ensure!(reply.get("connect").is_some(), "connect: {reply}");
    client
        // `tf` and `delta` are known fields now (subscribe_options.rs): unknown
        // ones next to them are still skipped.
        .send_raw(r#"{"id":2,"subscribe":{"channel":"u","flag":7,"zz":{"x":1},"delta":"fossil"},"note":"hi"}"#)
        .await?;
    let reply = client.wait_reply(2).await?;
    ensure!(reply.get("subscribe").is_some(), "subscribe: {reply}");
    client
        .send_raw(
            r#"{"id":3,"publish":{"channel":"u","data":{"k":1},"idempotency_key":"z","more":{}}}"#,
        )
        .await?;
    let reply = client.wait_reply(3).await?;
    ensure!(reply.get("publish").is_some(), "publish: {reply}");
    let publication = client.next_pub("u").await?;
    ensure!(publication["data"] == json!({"k": 1}), "{publication}");
    node.unhurt().await
}

// ---------------------------------------------------------------------------
// Command order
// ---------------------------------------------------------------------------

#[tokio::test]
async fn commands_before_connect_close_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for frame in [
        r#"{"id":1,"subscribe":{"channel":"early"}}"#,
        r#"{"id":1,"publish":{"channel":"early","data":{}}}"#,
        r#"{"id":1,"presence":{"channel":"early"}}"#,
        r#"{"id":1,"history":{"channel":"early"}}"#,
        r#"{"id":1,"rpc":{"method":"m"}}"#,
        r#"{"id":1,"refresh":{"token":"t"}}"#,
        r#"{"id":1,"ping":{}}"#,
        "{}",
    ] {
        let mut client = node.server.client().await?;
        let (code, reason) = client.send_raw_expect_close(frame).await?;
        ensure!(code == 3501, "{frame}: {code} {reason:?}");
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn double_connect_closes_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    closes_with(&node.server, r#"{"id":5,"connect":{}}"#, 3501).await?;
    node.unhurt().await?;
    // Two connects in one message: the first is answered, the second closes.
    let mut client = node.server.client().await?;
    client
        .send_raw("{\"id\":1,\"connect\":{}}\n{\"id\":2,\"connect\":{}}")
        .await?;
    let reply = client.wait_reply(1).await?;
    ensure!(reply.get("connect").is_some(), "{reply}");
    let (code, _) = client.expect_close().await?;
    ensure!(code == 3501, "second connect closed with {code}");
    node.unhurt().await
}

// ---------------------------------------------------------------------------
// WebSocket frames, written by hand
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for payload in [
        vec![0xff, 0xfe, 0xfd],
        b"{\"id\":2,\"ping\":{}}\xc0\xaf".to_vec(),
        vec![0xed, 0xa0, 0x80],       // an encoded surrogate
        vec![0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
    ] {
        let mut ws = raw_client(&node.server).await?;
        raw_closes_with(&mut ws, &Frame::text(payload).encode(), 1007).await?;
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn invalid_utf8_across_fragments_closes_1007() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let mut ws = raw_client(&node.server).await?;
    // "é" is c3 a9: each fragment alone is broken, and the second one
    // continues with a byte that is no continuation byte.
    let mut bytes = Frame::text(vec![b'{', 0xc3]).fin(false).encode();
    bytes.extend(Frame::new(raw_ws::OP_CONTINUATION, vec![0x41, b'}']).encode());
    raw_closes_with(&mut ws, &bytes, 1007).await?;
    node.unhurt().await
}

#[tokio::test]
async fn binary_frame_that_is_not_utf8_closes_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let mut ws = raw_client(&node.server).await?;
    let frame = Frame::new(raw_ws::OP_BINARY, vec![0xff, 0x00, 0x13, 0x37]);
    raw_closes_with(&mut ws, &frame.encode(), 3501).await?;
    node.unhurt().await
}

#[tokio::test]
async fn oversized_control_frames_close_1002() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for opcode in [raw_ws::OP_PING, raw_ws::OP_PONG, raw_ws::OP_CLOSE] {
        let mut ws = raw_client(&node.server).await?;
        let mut payload = vec![b'p'; 126];
        if opcode == raw_ws::OP_CLOSE {
            payload = raw_ws::close_payload(1000, &"r".repeat(124));
        }
        raw_closes_with(&mut ws, &Frame::new(opcode, payload).encode(), 1002).await?;
        node.unhurt().await?;
    }
    // 125 bytes is allowed, and a ping is answered with its payload.
    let mut ws = raw_client(&node.server).await?;
    ws.send(&Frame::new(raw_ws::OP_PING, vec![b'q'; 125]))
        .await?;
    let pong = ws
        .read_frame(DEFAULT_WAIT)
        .await?
        .ok_or_else(|| anyhow!("no pong"))?;
    ensure!(
        pong.opcode == raw_ws::OP_PONG && pong.payload == vec![b'q'; 125],
        "{pong:?}"
    );
    node.unhurt().await
}

#[tokio::test]
async fn fragmented_control_frame_closes_1002() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let mut ws = raw_client(&node.server).await?;
    let frame = Frame::new(raw_ws::OP_PING, b"half".to_vec()).fin(false);
    raw_closes_with(&mut ws, &frame.encode(), 1002).await?;
    node.unhurt().await
}

#[tokio::test]
async fn rsv_bits_close_1002() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for rsv in [0b100, 0b010, 0b001, 0b111] {
        let mut ws = raw_client(&node.server).await?;
        let frame = Frame::text(r#"{"id":2,"ping":{}}"#).rsv(rsv);
        raw_closes_with(&mut ws, &frame.encode(), 1002).await?;
        node.unhurt().await?;
    }
    // On a control frame too.
    let mut ws = raw_client(&node.server).await?;
    let frame = Frame::new(raw_ws::OP_PING, b"x".to_vec()).rsv(0b100);
    raw_closes_with(&mut ws, &frame.encode(), 1002).await?;
    node.unhurt().await
}

#[tokio::test]
async fn unmasked_client_frames_close_1002() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for frame in [
        Frame::text(r#"{"id":2,"ping":{}}"#).unmasked(),
        Frame::new(raw_ws::OP_PING, b"x".to_vec()).unmasked(),
    ] {
        let mut ws = raw_client(&node.server).await?;
        raw_closes_with(&mut ws, &frame.encode(), 1002).await?;
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn continuation_flood_is_closed_1009_in_bounded_time_and_memory() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let before = node.peak_rss_kib()?;
    let ws = raw_client(&node.server).await?;
    // 100,000 one-byte fragments of one text message (7 bytes each on the
    // wire): the message would be 100,000 bytes, past the 64 KiB limit.
    let mut flood = Frame::text(b"x".to_vec()).fin(false).encode();
    let continuation = Frame::new(raw_ws::OP_CONTINUATION, b"x".to_vec())
        .fin(false)
        .encode();
    for _ in 1..100_000 {
        flood.extend_from_slice(&continuation);
    }
    let (mut reader, mut writer) = ws.into_split();
    let started = Instant::now();
    // Keep writing while reading, so neither side waits on the other; stop at
    // the first failed write (the server has closed).
    let write = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut sent = 0;
        for chunk in flood.chunks(16 * 1024) {
            if writer.write_all(chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let ending = reader.expect_end(Duration::from_secs(15)).await?;
    let took = started.elapsed();
    let sent = tokio::time::timeout(DEFAULT_WAIT, write).await??;
    eprintln!("continuation flood: {ending:?} after {took:?}, {sent} bytes written");
    ensure!(
        matches!(ending, Ending::Close(1009, _)),
        "the flood ended with {ending:?} after {sent} bytes"
    );
    ensure!(
        took < Duration::from_secs(10),
        "the server took {took:?} to stop the flood"
    );
    let grown = node.peak_rss_kib()?.saturating_sub(before);
    ensure!(
        grown < 32 * 1024,
        "the server's peak memory grew by {grown} KiB during the flood"
    );
    node.unhurt().await
}

#[tokio::test]
async fn fragment_order_violations_close_1002() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a continuation with nothing to continue",
            Frame::new(raw_ws::OP_CONTINUATION, b"x".to_vec()).encode(),
        ),
        ("a new message inside a fragmented one", {
            let mut b = Frame::text(b"{".to_vec()).fin(false).encode();
            b.extend(Frame::text(br#"{"id":2,"ping":{}}"#.to_vec()).encode());
            b
        }),
    ];
    for (what, bytes) in cases {
        let mut ws = raw_client(&node.server).await?;
        raw_closes_with(&mut ws, &bytes, 1002)
            .await
            .with_context(|| what.to_owned())?;
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn reserved_opcodes_close_1002() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        let mut ws = raw_client(&node.server).await?;
        raw_closes_with(&mut ws, &Frame::new(opcode, b"x".to_vec()).encode(), 1002)
            .await
            .with_context(|| format!("opcode {opcode:#x}"))?;
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn frame_announcing_a_huge_length_closes_1009() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for len in [70_000, 1 << 40, u64::MAX >> 1] {
        let mut ws = raw_client(&node.server).await?;
        raw_closes_with(&mut ws, &raw_ws::header_only(raw_ws::OP_TEXT, len), 1009)
            .await
            .with_context(|| format!("length {len}"))?;
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn close_frame_with_a_bad_code_or_payload_closes_1002() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for payload in [
        raw_ws::close_payload(999, ""),
        raw_ws::close_payload(1005, ""),
        raw_ws::close_payload(1100, ""),
        vec![0x03],
    ] {
        let mut ws = raw_client(&node.server).await?;
        raw_closes_with(
            &mut ws,
            &Frame::new(raw_ws::OP_CLOSE, payload.clone()).encode(),
            1002,
        )
        .await
        .with_context(|| format!("close payload {payload:?}"))?;
        node.unhurt().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

#[tokio::test]
async fn huge_header_gets_431() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let addr = node.server.addr();
    let big = format!("X-Big: {}", "a".repeat(1 << 20));
    let request = raw_ws::upgrade_request(addr, "/connection/websocket", &[big.as_str()]);
    let (response, ws) = RawWs::handshake(addr, request.as_bytes()).await?;
    ensure!(ws.is_none() && response.status == 431, "{}", response.head);
    node.unhurt().await
}

#[tokio::test]
async fn numerous_headers_get_431() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let addr = node.server.addr();
    let lines: Vec<String> = (0..1000).map(|i| format!("X-H{i}: v")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let request = raw_ws::upgrade_request(addr, "/connection/websocket", &refs);
    let (response, ws) = RawWs::handshake(addr, request.as_bytes()).await?;
    ensure!(ws.is_none() && response.status == 431, "{}", response.head);
    node.unhurt().await
}

/// An upgrade request with the given key and version lines (either may be
/// left out).
fn upgrade_with(
    addr: std::net::SocketAddr,
    path: &str,
    key: Option<&str>,
    version: Option<&str>,
) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    );
    if let Some(key) = key {
        req.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
    }
    if let Some(version) = version {
        req.push_str(&format!("Sec-WebSocket-Version: {version}\r\n"));
    }
    req.push_str("\r\n");
    req
}

async fn handshake_refused(node: &Watched, request: &str, status: u16) -> anyhow::Result<()> {
    let (response, ws) = RawWs::handshake(node.server.addr(), request.as_bytes()).await?;
    ensure!(
        ws.is_none() && response.status == status,
        "{request:?} got {}",
        response.head
    );
    ensure!(
        !response.body.trim().is_empty(),
        "{request:?}: {status} without a message"
    );
    Ok(())
}

#[tokio::test]
async fn bad_websocket_keys_get_400() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let addr = node.server.addr();
    for path in [
        "/connection/websocket",
        "/connection/uni_websocket",
        "/socket.io/?EIO=4&transport=websocket",
    ] {
        for key in [
            Some("!!!"),
            Some(""),
            Some("c2hvcnQ="),
            Some("dGhlIHNhbXBsZSBub25jZQ"),
            Some("dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ=="),
            Some("dGhlIHNhbXBsZSBub25j*Q=="),
            None,
        ] {
            let request = upgrade_with(addr, path, key, Some("13"));
            handshake_refused(&node, &request, 400).await?;
            node.unhurt().await?;
        }
    }
    Ok(())
}

/// RFC 6455 4.2.2: a version the server does not speak gets 426 and the version
/// it does speak.
#[tokio::test]
async fn bad_websocket_versions_get_426_naming_version_13() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let addr = node.server.addr();
    for version in [Some("8"), Some("14"), Some(""), Some("13x"), None] {
        let request = upgrade_with(
            addr,
            "/connection/websocket",
            Some(raw_ws::SAMPLE_KEY),
            version,
        );
        handshake_refused(&node, &request, 426).await?;
        let (response, _) = RawWs::handshake(addr, request.as_bytes()).await?;
        ensure!(
            response
                .head
                .to_ascii_lowercase()
                .contains("sec-websocket-version: 13"),
            "{version:?}: 426 without the supported version: {}",
            response.head
        );
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn requests_that_are_not_http_get_400() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for request in [
        "GARBAGE\r\n\r\n".to_owned(),
        "GET / HTTP/9.9\r\n\r\n".to_owned(),
        "GET /connection/websocket HTTP/1.1\r\nHost x\r\n\r\n".to_owned(),
        format!("{}\r\n\r\n", "\u{1}\u{2}\u{3}".repeat(100)),
    ] {
        let (response, ws) = RawWs::handshake(node.server.addr(), request.as_bytes()).await?;
        ensure!(
            ws.is_none() && response.status == 400,
            "{request:?} got {}",
            response.head
        );
        node.unhurt().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Channel names
// ---------------------------------------------------------------------------

/// Subscribe, publish, presence and history on `channel` all get `code`, and
/// the connection stays open.
async fn every_channel_method_gets(
    client: &mut WsClient,
    channel: &str,
    code: u64,
) -> anyhow::Result<()> {
    for method in [
        "subscribe",
        "publish",
        "presence",
        "presence_stats",
        "history",
    ] {
        let mut params = json!({ "channel": channel });
        if method == "publish" {
            params["data"] = json!({});
        }
        let got = client.error_code(json!({ method: params })).await?;
        ensure!(
            got == code,
            "{method} on {}: {got}, expected {code}",
            shorten(channel)
        );
    }
    Ok(())
}

/// The API's publish on `channel` answers error `code` in the body.
async fn api_publish_gets(server: &TidingsServer, channel: &str, code: u64) -> anyhow::Result<()> {
    let (status, reply) = server
        .api("publish", json!({ "channel": channel, "data": {} }))
        .await?;
    ensure!(
        status == 200 && reply["error"]["code"] == json!(code),
        "API publish on {}: {status} {reply}",
        shorten(channel)
    );
    Ok(())
}

async fn channel_names_get_107(names: &[&str]) -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let mut client = node.server.connected_client().await?;
    for name in names {
        every_channel_method_gets(&mut client, name, 107).await?;
        api_publish_gets(&node.server, name, 107).await?;
        node.unhurt().await?;
    }
    // The connection is still usable.
    client.subscribe("still-here").await?;
    Ok(())
}

#[tokio::test]
async fn reserved_characters_in_channel_names_get_107() -> anyhow::Result<()> {
    channel_names_get_107(&["*", "news.*", ">", "news.>", "a&b", "chat:*"]).await
}

#[tokio::test]
async fn whitespace_in_channel_names_gets_107() -> anyhow::Result<()> {
    channel_names_get_107(&[
        " ", "a b", " lead", "trail ", "a\tb", "a\nb", "a\rb", "\u{0b}",
    ])
    .await
}

#[tokio::test]
async fn nul_and_control_characters_in_channel_names_get_107() -> anyhow::Result<()> {
    channel_names_get_107(&["a\u{0}b", "\u{0}", "a\u{1b}[31m", "\u{7f}"]).await
}

#[tokio::test]
async fn non_ascii_channel_names_get_107() -> anyhow::Result<()> {
    channel_names_get_107(&["naïve", "канал", "新闻", "📈", "a\u{200b}b", "\u{feff}x"]).await
}

#[tokio::test]
async fn too_long_and_empty_channel_names_get_107() -> anyhow::Result<()> {
    let long = "z".repeat(256);
    let huge = "z".repeat(60_000);
    channel_names_get_107(&["", &long, &huge]).await?;
    // 255 bytes is the limit itself.
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe(&"z".repeat(255)).await?;
    Ok(())
}

#[tokio::test]
async fn dots_in_channel_names_are_ordinary_characters() -> anyhow::Result<()> {
    // `.` is printable ASCII and not reserved: `..`, `a..b` and `../etc` are
    // plain names today (no broker maps names onto subjects or paths yet).
    let mut node = Watched::start().await?;
    let mut client = node.server.connected_client().await?;
    for name in ["..", "a..b", "../etc/passwd", ".", "a."] {
        client.subscribe(name).await?;
        client.publish(name, json!({ "in": name })).await?;
        let publication = client.next_pub(name).await?;
        ensure!(publication["data"]["in"] == json!(name), "{publication}");
        node.unhurt().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Payloads and streams
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversized_publish_data_closes_1009_and_reaches_nobody() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let mut subscriber = node.server.connected_client().await?;
    subscriber.subscribe("big").await?;
    let big = "x".repeat(70_000);
    let frame = json!({ "id": 2, "publish": { "channel": "big", "data": big } }).to_string();
    closes_with(&node.server, &frame, 1009).await?;
    node.unhurt().await?;
    // The next publication in the channel is the first the subscriber sees.
    node.server.publish("big", json!("small")).await?;
    let publication = subscriber.next_pub("big").await?;
    ensure!(publication["data"] == json!("small"), "{publication}");
    Ok(())
}

#[tokio::test]
async fn oversized_http_bodies_get_413() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let command = format!(
        "{{\"id\":1,\"connect\":{{\"data\":\"{}\"}}}}",
        "x".repeat(70_000)
    );
    let emulation = json!({ "session": "s", "data": command.clone() }).to_string();
    for (method, path, body) in [
        ("POST", "/emulation", emulation),
        ("POST", "/connection/long_poll", command.clone()),
        ("POST", "/connection/http_stream", command.clone()),
        ("POST", "/connection/sse", command.clone()),
        ("POST", "/connection/uni_http_stream", command.clone()),
        ("POST", "/connection/uni_sse", command.clone()),
    ] {
        refused(
            &node.server,
            method,
            path,
            Some(body.into_bytes()),
            &[],
            413,
        )
        .await?;
        node.unhurt().await?;
    }
    // A URL this long is past what the HTTP client crate builds: send it by
    // hand. hyper refuses a request target over 64 KiB with 414 (no body)
    // before the handler's 413 could apply.
    let query = format!("?cf_connect={}", encode(&command));
    let addr = node.server.addr();
    for path in ["/connection/sse", "/connection/uni_sse"] {
        let request = format!("GET {path}{query} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let (response, _) = RawWs::handshake(addr, request.as_bytes()).await?;
        ensure!(
            response.status == 414,
            "GET {path} with a 70 kB cf_connect: {} {:?}",
            response.head,
            response.body
        );
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn crlf_in_data_reaches_uni_sse_intact() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let connect = encode(r#"{"subs":{"crlf":{}}}"#);
    let mut sse = SseReader::open(
        &node.server,
        &format!("/connection/uni_sse?cf_connect={connect}"),
    )
    .await?;
    let first = sse.next_json().await?;
    ensure!(first.get("connect").is_some(), "first event: {first}");
    // Line breaks inside strings (escaped, as JSON requires) and raw CR/LF
    // between tokens, over the API and over a client's WebSocket.
    let text = "line1\r\nline2\n\ndata: {\"injected\":true}\r\n\rid: 7\n\u{2028}end";
    let api_body = format!(
        "{{\"channel\":\"crlf\",\r\n\"data\":{{\"text\":{},\r\n\"list\":[1,\r\n2]}}}}",
        serde_json::to_string(text)?
    );
    let [key, ctype] = api_headers(&node.server)?;
    let (status, reply) = node
        .server
        .api_raw(
            "publish",
            &api_body,
            &[(key.0, key.1.as_str()), (ctype.0, ctype.1.as_str())],
        )
        .await?;
    ensure!(
        status == 200 && !reply.contains("error"),
        "{status} {reply}"
    );
    let expected = json!({ "text": text, "list": [1, 2] });
    let event = sse.next_pub().await?;
    ensure!(event["pub"]["data"] == expected, "over the API: {event}");
    // Over a WebSocket a raw LF would end the line, so the payload carries a
    // raw CR between tokens.
    let mut client = node.server.connected_client().await?;
    let frame = format!(
        "{{\"id\":2,\"publish\":{{\"channel\":\"crlf\",\"data\":{{\"text\":{},\r\"list\":[1,\r2]}}}}}}",
        serde_json::to_string(text)?
    );
    client.send_raw(&frame).await?;
    let reply = client.wait_reply(2).await?;
    ensure!(reply.get("publish").is_some(), "{reply}");
    let event = sse.next_pub().await?;
    ensure!(
        event["pub"]["data"] == expected,
        "over a WebSocket: {event}"
    );
    node.unhurt().await
}

#[tokio::test]
async fn garbage_on_the_api_gets_4xx_with_a_message() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let [key, ctype] = api_headers(&node.server)?;
    let headers = [(key.0, key.1.as_str()), (ctype.0, ctype.1.as_str())];
    let bodies: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\"publish\"".to_vec(),
        br#"{"channel":5,"data":{}}"#.to_vec(),
        br#"{"channel":"x","data":1e999}"#.to_vec(),
        br#"{"channel":"x","data":"\ud800"}"#.to_vec(),
        br#"{"channel":"x","data":{}}trailing"#.to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
    ];
    for body in bodies {
        refused(
            &node.server,
            "POST",
            "/api/publish",
            Some(body),
            &headers,
            400,
        )
        .await?;
    }
    for (method, body) in [
        ("batch", br#"{"commands":"x"}"#.to_vec()),
        ("batch", br#"{"commands":[1,2]}"#.to_vec()),
        ("broadcast", br#"{"channels":"x","data":{}}"#.to_vec()),
        ("history", br#"{"channel":"x","limit":"all"}"#.to_vec()),
        (
            "disconnect",
            br#"{"user":"u","disconnect":{"code":"x"}}"#.to_vec(),
        ),
    ] {
        refused(
            &node.server,
            "POST",
            &format!("/api/{method}"),
            Some(body),
            &headers,
            400,
        )
        .await?;
    }
    node.unhurt().await?;
    let body = br#"{"channel":"x","data":{}}"#.to_vec();
    refused(
        &node.server,
        "POST",
        "/api/no_such_method",
        Some(body.clone()),
        &headers,
        404,
    )
    .await?;
    refused(
        &node.server,
        "POST",
        "/api/publish",
        Some(body.clone()),
        &[],
        401,
    )
    .await?;
    refused(
        &node.server,
        "POST",
        "/api/publish",
        Some(body.clone()),
        &[("X-API-Key", "wrong")],
        401,
    )
    .await?;
    refused(
        &node.server,
        "POST",
        "/api/publish",
        Some(body),
        &[("Authorization", "apikey")],
        401,
    )
    .await?;
    refused(&node.server, "GET", "/api/publish", None, &headers, 405).await?;
    node.unhurt().await
}

#[tokio::test]
async fn garbage_on_emulation_gets_4xx_with_a_message() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for (body, status) in [
        (b"garbage".to_vec(), 400),
        (Vec::new(), 400),
        (b"{}".to_vec(), 400),
        (br#"{"session":5,"data":"{}"}"#.to_vec(), 400),
        (br#"{"session":"s","data":42}"#.to_vec(), 400),
        (br#"{"session":"s","data":[1]}"#.to_vec(), 400),
        (br#"{"session":"s","data":null}"#.to_vec(), 400),
        (vec![0xff, 0xfe], 400),
        // Not UTF-8 inside a field the parser skips (found by fuzzing).
        (
            b"{\"session\":\"nope\",\"x\":\"\xff\xfe\",\"data\":\"{}\"}".to_vec(),
            400,
        ),
        (br#"{"session":"nope","data":"{}"}"#.to_vec(), 404),
        (br#"{"session":"","data":{"id":1,"ping":{}}}"#.to_vec(), 404),
    ] {
        refused(&node.server, "POST", "/emulation", Some(body), &[], status).await?;
        node.unhurt().await?;
    }
    refused(&node.server, "GET", "/emulation", None, &[], 405).await?;
    node.unhurt().await
}

#[tokio::test]
async fn garbage_on_stream_endpoints_gets_400_with_a_message() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let bad_frames = [
        "garbage",
        "[1,2]",
        "\"str\"",
        "42",
        "{\"id\":1,",
        "{}\nnot json",
    ];
    for path in [
        "/connection/sse",
        "/connection/http_stream",
        "/connection/uni_sse",
        "/connection/uni_http_stream",
    ] {
        for frame in bad_frames {
            refused(
                &node.server,
                "POST",
                path,
                Some(frame.as_bytes().to_vec()),
                &[],
                400,
            )
            .await?;
        }
        refused(
            &node.server,
            "POST",
            path,
            Some(vec![0xff, 0xfe, b'{']),
            &[],
            400,
        )
        .await?;
        node.unhurt().await?;
    }
    for path in ["/connection/sse", "/connection/uni_sse"] {
        for frame in bad_frames {
            refused(
                &node.server,
                "GET",
                &format!("{path}?cf_connect={}", encode(frame)),
                None,
                &[],
                400,
            )
            .await?;
        }
        // Broken percent-encoding and bytes that decode to no UTF-8.
        refused(
            &node.server,
            "GET",
            &format!("{path}?cf_connect=%ZZ%FF%FE"),
            None,
            &[],
            400,
        )
        .await?;
        node.unhurt().await?;
    }
    // A bidirectional stream needs a connect command at all.
    refused(&node.server, "GET", "/connection/sse", None, &[], 400).await?;
    refused(
        &node.server,
        "POST",
        "/connection/http_stream",
        Some(Vec::new()),
        &[],
        400,
    )
    .await?;
    refused(
        &node.server,
        "GET",
        "/connection/http_stream",
        None,
        &[],
        405,
    )
    .await?;
    refused(
        &node.server,
        "GET",
        "/connection/uni_http_stream",
        None,
        &[],
        405,
    )
    .await?;
    node.unhurt().await
}

#[tokio::test]
async fn json_that_is_not_a_connect_ends_an_sse_stream_with_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    for frame in [
        r#"{"id":1,"subscribe":{"channel":"x"}}"#,
        r#"{"id":1,"connect":{"token":5}}"#,
        "{}",
    ] {
        let mut sse = SseReader::open(
            &node.server,
            &format!("/connection/sse?cf_connect={}", encode(frame)),
        )
        .await?;
        let event = sse.next_json().await?;
        ensure!(
            event["push"]["disconnect"]["code"] == json!(3501),
            "{frame}: {event}"
        );
        node.unhurt().await?;
    }
    Ok(())
}

#[tokio::test]
async fn garbage_on_long_poll_gets_4xx_with_a_message() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let path = "/connection/long_poll";
    for body in [
        b"garbage".to_vec(),
        Vec::new(),
        b"   \n ".to_vec(),
        b"[1]".to_vec(),
        b"{\"id\":1,\"connect\":{}}\n{oops".to_vec(),
        vec![0xff, 0xfe],
    ] {
        refused(&node.server, "POST", path, Some(body), &[], 400).await?;
    }
    node.unhurt().await?;
    for (query, status) in [
        ("", 404),
        ("?session=nope", 404),
        ("?session=nope&cursor=0", 404),
        ("?session=x&cursor=abc", 400),
        ("?session=x&cursor=-1", 400),
        ("?session=x&cursor=1e3", 400),
        ("?session=x&cursor=99999999999999999999999", 400),
        ("?session=%ZZ", 404),
        ("?session=x&session=y", 400),
    ] {
        refused(
            &node.server,
            "GET",
            &format!("{path}{query}"),
            None,
            &[],
            status,
        )
        .await?;
        refused(
            &node.server,
            "DELETE",
            &format!("{path}{query}"),
            None,
            &[],
            status,
        )
        .await?;
    }
    refused(&node.server, "PUT", path, Some(b"{}".to_vec()), &[], 405).await?;
    node.unhurt().await
}

#[tokio::test]
async fn garbage_on_websocket_endpoints_gets_4xx_with_a_message() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    // Plain HTTP requests, without the upgrade headers.
    for path in ["/connection/websocket", "/connection/uni_websocket"] {
        refused(&node.server, "GET", path, None, &[], 400).await?;
        refused(&node.server, "POST", path, Some(b"{}".to_vec()), &[], 405).await?;
    }
    // A unidirectional connect request in the query that is not JSON.
    let addr = node.server.addr();
    for connect in ["garbage", "[1]", "42", "{\"subs\":"] {
        let path = format!("/connection/uni_websocket?cf_connect={}", encode(connect));
        let request = raw_ws::upgrade_request(addr, &path, &[]);
        handshake_refused(&node, &request, 400).await?;
        node.unhurt().await?;
    }
    // The same request as the first message closes with 3501.
    let mut ws = RawWs::connect(addr, "/connection/uni_websocket").await?;
    raw_closes_with(&mut ws, &Frame::text("garbage").encode(), 3501).await?;
    node.unhurt().await
}

#[tokio::test]
async fn garbage_through_emulation_closes_the_session_3501() -> anyhow::Result<()> {
    let mut node = Watched::start().await?;
    let connect = encode(r#"{"id":1,"connect":{}}"#);
    let mut sse = SseReader::open(
        &node.server,
        &format!("/connection/sse?cf_connect={connect}"),
    )
    .await?;
    let reply = sse.next_json().await?;
    let session = reply["connect"]["session"]
        .as_str()
        .ok_or_else(|| anyhow!("no session in {reply}"))?
        .to_owned();
    let body = json!({ "session": session, "data": "{\"id\":2,\"subscribe\":" }).to_string();
    let (status, _) = http(
        &node.server,
        "POST",
        "/emulation",
        Some(body.into_bytes()),
        &[],
    )
    .await?;
    ensure!(status == 204, "emulation answered {status}");
    let event = sse.next_json().await?;
    ensure!(
        event["push"]["disconnect"]["code"] == json!(3501),
        "{event}"
    );
    node.unhurt().await
}

#[tokio::test]
async fn request_objects_given_as_arrays_are_read_positionally() -> anyhow::Result<()> {
    // A command line must be an object (anything else closes 3501), but the
    // decoder (serde) reads a request given as an array field by field, in
    // declaration order. This is lenient, not unsafe: the same checks apply.
    let mut node = Watched::start().await?;
    let mut client = node.server.connected_client().await?;
    client.send_raw(r#"{"id":2,"subscribe":["arr"]}"#).await?;
    let reply = client.wait_reply(2).await?;
    ensure!(reply.get("subscribe").is_some(), "{reply}");
    client
        .send_raw(r#"{"id":3,"subscribe":["bad*name"]}"#)
        .await?;
    let reply = client.wait_reply(3).await?;
    ensure!(reply["error"]["code"] == json!(107), "{reply}");
    node.unhurt().await
}

// ---------------------------------------------------------------------------
// Token claims (a fuzzing find)
// ---------------------------------------------------------------------------

/// An HS256 token over exactly these claim bytes, which need not be UTF-8.
fn token_over_raw_claims(secret: &str, claims: &[u8]) -> anyhow::Result<String> {
    use base64_url as b64;
    let header = b64::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", b64::encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)?;
    Ok(format!("{message}.{signature}"))
}

/// Unpadded base64url, as JWTs use it.
mod base64_url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
}

#[tokio::test]
async fn token_claims_are_utf8_where_they_are_read() -> anyhow::Result<()> {
    // The jwt_preparse fuzz target found that a claim Tidings does not read may hold
    // bytes that are not UTF-8 (serde_json checks only what it keeps). Such a token
    // needs the secret, so its signer is trusted; it connects as its `sub`. The same
    // bytes in a claim Tidings reads make the token invalid (3500).
    const SECRET: &str = "hostile-suite-secret-of-32-bytes";
    let server = TidingsServer::builder()
        .config_json(tidings_testkit::profile::open_config("api-key", SECRET))
        .start()
        .await?;
    let mut control = server.connected_client().await?;
    let subscribed = control.subscribe(CONTROL).await?;
    let mut node = Watched {
        offset: subscribed["offset"].as_u64().unwrap_or(0),
        server,
        control,
        checks: 0,
    };
    let unread = token_over_raw_claims(SECRET, b"{\"sub\":\"42\",\"zz\":\"\xfe\xff\xef\"}")?;
    let mut client = node.server.client().await?;
    client.connect(json!({ "token": unread })).await?;
    client.subscribe("claims").await?;
    let presence = client
        .call_result(json!({ "presence": { "channel": "claims" } }))
        .await?;
    let users: Vec<&Value> = presence["presence"]
        .as_object()
        .map(|m| m.values().map(|c| &c["user"]).collect())
        .unwrap_or_default();
    ensure!(users == [&json!("42")], "presence: {presence}");
    node.unhurt().await?;
    for claims in [
        &b"{\"sub\":\"4\xff2\"}"[..],
        &b"{\"sub\":\"42\",\"info\":\"\xfe\"}"[..],
        &b"{\"sub\":\"42\",\"channels\":[\"\xc0\xaf\"]}"[..],
    ] {
        let token = token_over_raw_claims(SECRET, claims)?;
        let mut client = node.server.client().await?;
        let (code, reason) = client
            .send_raw_expect_close(&json!({ "id": 1, "connect": { "token": token } }).to_string())
            .await?;
        ensure!(
            code == 3500,
            "claims {}: {code} {reason:?}",
            String::from_utf8_lossy(claims)
        );
        node.unhurt().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Request bodies that never finish (issue 20)
// ---------------------------------------------------------------------------

/// The body deadline of these tests (`http_server.body_read_timeout`): short,
/// so that a case takes about a second.
const BODY_DEADLINE: Duration = Duration::from_secs(1);

/// How often a trickling client sends one more byte of its body.
const TRICKLE_EVERY: Duration = Duration::from_millis(300);

/// What a trickled body says it will send: far more than it ever does.
const ANNOUNCED: usize = 60_000;

/// An endpoint that reads a request body, as a trickling client calls it.
struct BodyEndpoint {
    name: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
}

/// Every endpoint of the development profile that reads a request body; the
/// Socket.IO one for a polling session opened here.
async fn body_endpoints(server: &TidingsServer) -> anyhow::Result<Vec<BodyEndpoint>> {
    let key = server.api_key().context("no API key")?.to_owned();
    let endpoint = |name, path: &str, headers: Vec<(&'static str, String)>| BodyEndpoint {
        name,
        path: path.to_owned(),
        headers,
    };
    let mut endpoints = vec![
        endpoint("api", "/api/publish", vec![("X-API-Key", key)]),
        endpoint("emulation", "/emulation", vec![]),
        endpoint("long_poll", "/connection/long_poll", vec![]),
        endpoint("http_stream", "/connection/http_stream", vec![]),
        endpoint("sse", "/connection/sse", vec![]),
        endpoint("uni_sse", "/connection/uni_sse", vec![]),
        endpoint("uni_http_stream", "/connection/uni_http_stream", vec![]),
    ];
    let sid = socketio_session(server).await?;
    endpoints.push(endpoint(
        "socket.io polling",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        vec![],
    ));
    Ok(endpoints)
}

/// Opens an Engine.IO polling session and returns its sid.
async fn socketio_session(server: &TidingsServer) -> anyhow::Result<String> {
    let (status, open) = server
        .http_get("/socket.io/?EIO=4&transport=polling")
        .await?;
    ensure!(status == 200, "Engine.IO handshake: {status} {open}");
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
        .with_context(|| format!("Engine.IO handshake {open:?}"))?;
    handshake["sid"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no sid in {open}"))
}

/// Sends a request whose headers announce [`ANNOUNCED`] body bytes, then its
/// first byte.
async fn start_trickle(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, String)],
) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {ANNOUNCED}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n{");
    let mut stream = tokio::time::timeout(DEFAULT_WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("timed out connecting"))??;
    stream.write_all(head.as_bytes()).await?;
    Ok(stream)
}

/// Goes on sending a byte of the body every [`TRICKLE_EVERY`] until the server
/// answers, and returns the status and body of its answer.
async fn trickle_until_answered(
    stream: tokio::net::TcpStream,
    limit: Duration,
) -> anyhow::Result<(u16, String)> {
    trickle_every(stream, TRICKLE_EVERY, limit).await
}

/// Sends a byte of the body every `every` until the server answers. Nothing
/// more is written once the answer has begun, so the server's close cannot
/// turn into a reset that loses it.
async fn trickle_every(
    mut stream: tokio::net::TcpStream,
    every: Duration,
    limit: Duration,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let deadline = Instant::now() + limit;
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(done) = complete_response(&answer) {
            return Ok(done);
        }
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = read.context("reading the answer")?;
                ensure!(n > 0, "closed without a complete answer: {:?}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&chunk[..n]);
            }
            _ = ticks.tick(), if answer.is_empty() => {
                // The server may already have given up on the body.
                let _ = stream.write_all(b" ").await;
            }
            _ = tokio::time::sleep_until(deadline) => bail!("no answer within {limit:?}"),
        }
    }
}

/// The status and body of a response with a `Content-Length`, once all of it
/// has arrived.
fn complete_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length).then(|| (status, body.to_owned()))
}

/// A development-profile node whose bodies get [`BODY_DEADLINE`].
fn deadline_node() -> TidingsServerBuilder {
    TidingsServer::builder().env(
        "TIDINGS_HTTP_SERVER_BODY_READ_TIMEOUT",
        &format!("{}ms", BODY_DEADLINE.as_millis()),
    )
}

#[tokio::test]
async fn trickled_bodies_are_cut_at_the_deadline_with_408_on_every_endpoint() -> anyhow::Result<()>
{
    let mut node = Watched::start_with(deadline_node()).await?;
    let addr = node.server.addr();
    let endpoints = body_endpoints(&node.server).await?;
    // All at once, as a prober would: each is cut on its own deadline.
    let mut trickles = Vec::new();
    for endpoint in &endpoints {
        let stream = start_trickle(addr, &endpoint.path, &endpoint.headers).await?;
        let started = Instant::now();
        trickles.push(tokio::spawn(async move {
            let answer = trickle_until_answered(stream, BODY_DEADLINE + DEFAULT_WAIT).await;
            (answer, started.elapsed())
        }));
    }
    for (endpoint, trickle) in endpoints.iter().zip(trickles) {
        let (answer, took) = trickle.await?;
        let (status, body) = answer.with_context(|| endpoint.name)?;
        ensure!(
            status == 408 && body.contains("http_server.body_read_timeout"),
            "{}: {status} {body:?}",
            endpoint.name
        );
        ensure!(
            took >= BODY_DEADLINE - Duration::from_millis(50)
                && took < BODY_DEADLINE + Duration::from_secs(3),
            "{}: cut after {took:?}, the deadline is {BODY_DEADLINE:?}",
            endpoint.name
        );
    }
    node.unhurt().await?;
    // The Socket.IO session whose POST was cut is closed, as after any failed
    // POST: its next poll finds no session.
    let sio = endpoints.last().context("no Socket.IO endpoint")?;
    let (status, _) = node.server.http_get(&sio.path).await?;
    ensure!(
        status == 400,
        "a poll of the cut Socket.IO session: {status}"
    );
    Ok(())
}

#[tokio::test]
async fn api_without_a_key_is_refused_before_its_body_is_read() -> anyhow::Result<()> {
    let mut node = Watched::start_with(deadline_node()).await?;
    let addr = node.server.addr();
    for headers in [vec![], vec![("X-API-Key", "wrong".to_owned())]] {
        let stream = start_trickle(addr, "/api/publish", &headers).await?;
        let started = Instant::now();
        let (status, body) = trickle_until_answered(stream, DEFAULT_WAIT).await?;
        ensure!(status == 401, "{headers:?}: {status} {body:?}");
        ensure!(
            started.elapsed() < BODY_DEADLINE / 2,
            "{headers:?}: the 401 waited {:?} for the body",
            started.elapsed()
        );
    }
    node.unhurt().await
}

#[tokio::test]
async fn trickled_bodies_count_against_the_connection_limit() -> anyhow::Result<()> {
    const LIMIT: usize = 6;
    const TRICKLES: usize = 2 * LIMIT;
    let deadline = Duration::from_secs(2);
    let mut node = Watched::start_with(
        TidingsServer::builder()
            .env("TIDINGS_HTTP_SERVER_BODY_READ_TIMEOUT", "2s")
            .env("TIDINGS_CLIENT_CONNECTION_LIMIT", &LIMIT.to_string()),
    )
    .await?;
    let addr = node.server.addr();
    // The control client holds one slot. Of twelve bodies that keep the server
    // waiting, five take the other slots until the deadline cuts them (408);
    // the other seven find the node full and get 503 at once.
    let (answers_tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..TRICKLES {
        let stream = start_trickle(addr, "/emulation", &[]).await?;
        let answers_tx = answers_tx.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let answer = trickle_until_answered(stream, deadline + DEFAULT_WAIT).await;
            let _ = answers_tx.send((answer, started.elapsed()));
        });
    }
    let mut refused = 0;
    while refused < TRICKLES - (LIMIT - 1) {
        let (answer, took) = tokio::time::timeout(DEFAULT_WAIT, answers.recv())
            .await
            .context("waiting for the 503s")?
            .context("no more answers")?;
        let (status, body) = answer?;
        ensure!(
            status == 503 && body.contains("connection limit") && took < deadline,
            "a body over the limit got {status} {body:?} after {took:?}"
        );
        refused += 1;
    }
    // The waiting bodies hold their slots: a new connection is refused too.
    let status = tidings_testkit::handshake_status(&node.server.ws_url(), &[]).await?;
    ensure!(
        status == 503,
        "a WebSocket upgrade got {status} while the node was full"
    );
    // Bodies that arrive whole take no slot: the control batch still goes through.
    node.unhurt().await?;
    for _ in 1..LIMIT {
        let (answer, took) = tokio::time::timeout(deadline + DEFAULT_WAIT, answers.recv())
            .await
            .context("waiting for the cut")?
            .context("no more answers")?;
        let (status, body) = answer?;
        ensure!(
            status == 408 && took >= deadline - Duration::from_millis(50),
            "a waiting body got {status} {body:?} after {took:?}"
        );
    }
    // Their slots are free again.
    let mut client = node.server.connected_client().await?;
    client.subscribe("after-the-cut").await?;
    node.unhurt().await
}

/// The soft limit on open files of this process (the server inherits it).
fn open_files_limit() -> anyhow::Result<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .ok_or_else(|| anyhow!("no open files limit in /proc/self/limits"))
}

/// What a trickled request may add to the server's resident memory, in KiB,
/// while it waits and when it is cut: its socket buffers, hyper's read buffer
/// and the tasks of one connection. Measured at about 25 KiB while waiting and
/// 33 KiB at the peak (docs/limits.md); the bound leaves room for allocator
/// and machine differences.
const RSS_PER_TRICKLE_KIB: u64 = 48;

#[tokio::test]
async fn thousands_of_trickled_bodies_stay_within_a_memory_bound() -> anyhow::Result<()> {
    // 2,000 sockets, or fewer when the open-files limit is lower: this process
    // and the server each hold one descriptor per socket, plus their own.
    let count = 2_000.min(open_files_limit()?.saturating_sub(300));
    ensure!(
        count >= 500,
        "the open-files limit leaves room for {count} sockets"
    );
    // Long enough for all of them to be open at once on a busy machine, where
    // a burst of connections waits on a full accept queue; the cut itself at
    // the deadline is timed by the tests above.
    let deadline = Duration::from_secs(10);
    let mut node = Watched::start_with(
        TidingsServer::builder().env("TIDINGS_HTTP_SERVER_BODY_READ_TIMEOUT", "10s"),
    )
    .await?;
    let addr = node.server.addr();
    let endpoints: Vec<BodyEndpoint> = body_endpoints(&node.server)
        .await?
        .into_iter()
        // One POST at a time per Socket.IO session: covered above.
        .filter(|e| !e.name.starts_with("socket.io"))
        .collect();
    let before = node.rss_kib()?;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut trickles = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(100) {
        let starts = batch.iter().map(|i| {
            let e = &endpoints[i % endpoints.len()];
            start_trickle(addr, &e.path, &e.headers)
        });
        for stream in futures_util::future::join_all(starts).await {
            let stream = stream?;
            let answered = answered.clone();
            trickles.push(tokio::spawn(async move {
                // A byte every two seconds: slow, and cheap for a busy machine.
                let answer =
                    trickle_every(stream, Duration::from_secs(2), deadline + DEFAULT_WAIT).await;
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                answer
            }));
        }
    }
    // Every request is waiting on its body now, or was cut already if opening
    // them took long; weigh the server with those still waiting. The control
    // client must not notice any of it.
    let waiting = count - answered.load(std::sync::atomic::Ordering::Relaxed);
    let now = node.rss_kib()?;
    ensure!(
        waiting >= count * 3 / 4,
        "only {waiting} of {count} bodies were waiting at once"
    );
    node.unhurt().await?;
    let mut statuses = std::collections::BTreeMap::new();
    for trickle in trickles {
        let status = match trickle.await? {
            Ok((status, _)) => status.to_string(),
            Err(e) => format!("{e:#}"),
        };
        *statuses.entry(status).or_insert(0) += 1;
    }
    // The peak covers the whole run: the waits, and the 408s at the cut.
    let peak = node.peak_rss_kib()?;
    let grown = now.saturating_sub(before);
    let peak_grown = peak.saturating_sub(before);
    let bound = RSS_PER_TRICKLE_KIB * count as u64;
    eprintln!(
        "{waiting} of {count} trickled bodies waiting: RSS {before} KiB before, {now} KiB while \
         they wait (+{grown} KiB, {} KiB each); peak {peak} KiB (+{peak_grown} KiB, {} KiB each); \
         bound +{bound} KiB",
        grown / waiting as u64,
        peak_grown / count as u64
    );
    ensure!(
        grown <= RSS_PER_TRICKLE_KIB * waiting as u64 && peak_grown <= bound,
        "{count} trickled bodies grew the server by {grown} KiB (peak {peak_grown} KiB), past \
         {RSS_PER_TRICKLE_KIB} KiB each"
    );
    ensure!(
        statuses.get("408") == Some(&count),
        "every trickled body is cut with 408: {statuses:?}"
    );
    node.unhurt().await
}

/// Raw deflate of `data` as a permessage-deflate client sends it: a sync flush,
/// without its final four bytes (RFC 7692 7.2.1).
fn client_deflate(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(9), false);
    let mut out = Vec::with_capacity(data.len() / 100 + 1024);
    let mut consumed = 0;
    loop {
        out.reserve(64 * 1024);
        let before = c.total_in();
        c.compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        consumed += (c.total_in() - before) as usize;
        if consumed == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate_server(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut d = flate2::Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)?;
    Ok(out)
}

/// Compression on every WebSocket door (the development profile serves them all).
fn compressing() -> TidingsServerBuilder {
    let mut config =
        tidings_testkit::profile::open_config("api-key", "a-secret-for-the-compression-tests-32b");
    config["websocket"] = json!({ "compression": true });
    config["uni_websocket"] = json!({ "enabled": true, "compression": true });
    config["socketio"] = json!({ "enabled": true });
    TidingsServer::builder().config_json(config)
}

/// A permessage-deflate upgrade of `path`; checks the server agreed.
async fn deflate_upgrade(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<RawWs> {
    let request = raw_ws::upgrade_request(
        addr,
        path,
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    );
    let (response, ws) = RawWs::handshake(addr, request.as_bytes()).await?;
    let agreed = response
        .header("sec-websocket-extensions")
        .unwrap_or_default();
    ensure!(
        agreed.starts_with("permessage-deflate") && agreed.contains("client_no_context_takeover"),
        "{path}: permessage-deflate not agreed: {}",
        response.head
    );
    ws.with_context(|| format!("{path}: no upgrade: {}", response.head))
}

/// A compressed connect works both ways: the reply comes back compressed and
/// inflates to a connect result.
#[tokio::test]
async fn compressed_commands_get_compressed_replies() -> anyhow::Result<()> {
    let mut node = Watched::start_with(compressing()).await?;
    let addr = node.server.addr();
    let mut ws = deflate_upgrade(addr, "/connection/websocket").await?;
    let connect = client_deflate(br#"{"id":1,"connect":{}}"#);
    ws.send(&Frame::text(connect).rsv(0b100)).await?;
    let frame = ws
        .read_frame(DEFAULT_WAIT)
        .await?
        .context("no reply to a compressed connect")?;
    ensure!(
        frame.rsv == 0b100,
        "the reply is not compressed (rsv {})",
        frame.rsv
    );
    let reply: Value = serde_json::from_slice(&inflate_server(&frame.payload)?)?;
    ensure!(
        reply["id"] == 1 && reply["connect"]["client"].is_string(),
        "{reply}"
    );
    node.unhurt().await
}

/// A decompression bomb: a frame well inside `message_size_limit` that inflates
/// far past the inflated-size limit. Each door closes it with 1009 without
/// inflating all of it, and nobody else notices.
#[tokio::test]
async fn decompression_bombs_close_1009() -> anyhow::Result<()> {
    let mut node = Watched::start_with(compressing()).await?;
    let addr = node.server.addr();
    // 8 MiB of one byte: about 8 KiB on the wire (deflate's best ratio is about
    // 1000:1), inflating to 13 times the 640 KiB limit of the Centrifugo doors and
    // 8 times Socket.IO's 1 MB `max_payload`.
    let bomb = client_deflate(&vec![b' '; 8 << 20]);
    ensure!(bomb.len() < 16 * 1024, "the bomb is {} bytes", bomb.len());
    for path in [
        "/connection/websocket",
        "/connection/uni_websocket",
        "/socket.io/?EIO=4&transport=websocket",
    ] {
        let mut ws = deflate_upgrade(addr, path).await?;
        ws.send(&Frame::text(bomb.clone()).rsv(0b100)).await?;
        let ending = ws.expect_end(DEFAULT_WAIT).await?;
        ensure!(
            matches!(ending, Ending::Close(1009, _)),
            "{path}: a decompression bomb ended with {ending:?}"
        );
        node.unhurt().await?;
    }
    Ok(())
}

/// RSV1 means "compressed" only on a connection that agreed to compression, and
/// only on the first frame of a data message.
#[tokio::test]
async fn compressed_frames_outside_the_agreement_close_1002() -> anyhow::Result<()> {
    let mut node = Watched::start_with(compressing()).await?;
    let addr = node.server.addr();
    let payload = client_deflate(br#"{"id":1,"connect":{}}"#);
    // No offer: no agreement.
    let mut ws = RawWs::connect(addr, "/connection/websocket").await?;
    ws.send(&Frame::text(payload.clone()).rsv(0b100)).await?;
    let ending = ws.expect_end(DEFAULT_WAIT).await?;
    ensure!(
        matches!(ending, Ending::Close(1002, _)),
        "no offer: {ending:?}"
    );
    node.unhurt().await?;
    // Agreed, but on a ping and on a continuation frame.
    for frames in [
        vec![Frame::new(raw_ws::OP_PING, b"x".to_vec()).rsv(0b100)],
        vec![
            Frame::text(b"{".to_vec()).fin(false),
            Frame::new(raw_ws::OP_CONTINUATION, b"}".to_vec()).rsv(0b100),
        ],
    ] {
        let mut ws = deflate_upgrade(addr, "/connection/websocket").await?;
        for f in &frames {
            ws.send(f).await?;
        }
        let ending = ws.expect_end(DEFAULT_WAIT).await?;
        ensure!(matches!(ending, Ending::Close(1002, _)), "{ending:?}");
        node.unhurt().await?;
    }
    Ok(())
}
