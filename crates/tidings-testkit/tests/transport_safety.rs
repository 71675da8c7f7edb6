//! What the HTTP transports must never do: let published data forge SSE
//! fields or events, answer a disallowed origin, or send `*` / credentials in
//! CORS. Also the unidirectional endpoints, used the way plain
//! `EventSource`, `curl -N` and bare WebSockets use them.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{json, Value};
use tidings_testkit::profile::open_config;
use tidings_testkit::{
    handshake_status, hs256_token_with_claims, ProtoClient, TidingsServer, Transport, UniClient,
    UniTransport,
};

const API_KEY: &str = "safety-key";
const SECRET: &str = "safety-secret";
const APP: &str = "https://app.example";

/// The open config with every HTTP transport on, `allowed_origins` as given
/// and fast pings.
fn config(origins: &[&str]) -> Value {
    let mut config = open_config(API_KEY, SECRET);
    config["client"]["allowed_origins"] = json!(origins);
    config["client"]["ping_interval"] = json!("1s");
    config["client"]["pong_timeout"] = json!("500ms");
    for transport in [
        "sse",
        "http_stream",
        "long_poll",
        "uni_websocket",
        "uni_sse",
        "uni_http_stream",
    ] {
        config[transport] = json!({ "enabled": true });
    }
    config
}

// ---- SSE injection ----------------------------------------------------------

/// A small xorshift generator: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Pieces that would end a line, an event or forge a field if a server
/// wrote them into the stream unescaped.
const HOSTILE: &[&str] = &[
    "\r",
    "\n",
    "\r\n",
    "\n\n",
    "\r\r",
    "\0",
    "data:",
    "data: {\"forged\":true}",
    "\n\ndata: {\"forged\":true}\n\n",
    "event:",
    "event: message",
    "\nevent: evil\n",
    "id:",
    "id: 42",
    "\r\nid: 42\r\n",
    "retry: 1",
    ": comment",
    ":",
    "\u{feff}",
    "\u{85}",
    "\u{2028}",
    "\u{2029}",
    "\u{1b}[31m",
    "é",
    "漢字",
    "😀",
    "\"",
    "\\",
    "\\n",
    "}{",
    "]",
    " ",
    "\t",
    "plain",
];

fn hostile_string(rng: &mut Rng) -> String {
    let pieces = 1 + rng.below(6);
    (0..pieces).map(|_| rng.pick(HOSTILE)).collect()
}

fn hostile_value(rng: &mut Rng, n: usize) -> Value {
    match rng.below(4) {
        0 => json!(hostile_string(rng)),
        1 => json!([hostile_string(rng), n, null, true, hostile_string(rng)]),
        2 => {
            let mut object = serde_json::Map::new();
            object.insert(hostile_string(rng), json!(hostile_string(rng)));
            object.insert("n".to_owned(), json!(n));
            object.insert(
                "nested".to_owned(),
                json!({ "text": hostile_string(rng), "list": [hostile_string(rng)] }),
            );
            Value::Object(object)
        }
        _ => json!({ "n": n, "text": hostile_string(rng) }),
    }
}

/// Pretty-printed JSON whose line breaks between tokens are replaced by a
/// random mix of LF, CRLF, CR and friends. Inside strings, serde escapes
/// control characters, so raw breaks only ever fall between tokens.
fn loose_json(rng: &mut Rng, value: &Value) -> anyhow::Result<String> {
    let pretty = serde_json::to_string_pretty(value)?;
    let breaks = ["\n", "\r\n", "\r", "\n\n\t", " \r\n  ", "\r\r\n"];
    let mut out = String::with_capacity(pretty.len() * 2);
    for c in pretty.chars() {
        if c == '\n' {
            out.push_str(rng.pick(&breaks));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

const PUBLICATIONS: usize = 300;

/// Random hostile payloads, published through the API (compact and as
/// pretty-printed JSON with raw CR/LF between tokens) and by an SSE client,
/// come back through a spec-compliant SSE parser as one event each, whose
/// data is exactly one JSON value equal to what was published; no `id:`,
/// `event:` or other field is ever emitted.
#[tokio::test]
async fn sse_output_is_never_injectable() -> anyhow::Result<()> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let server = TidingsServer::start().await?;
    let key = server.api_key().context("no API key")?.to_owned();

    let mut sse = server.connect_over(Transport::Sse).await?;
    sse.subscribe("inject").await?;
    let mut uni = UniClient::open(
        &server.http_url(),
        UniTransport::Sse,
        &json!({ "subs": { "inject": {} } }),
    )
    .await?;

    // A raw line break inside a string is not JSON: refused, nothing sent.
    let (status, body) = server
        .api_raw(
            "publish",
            "{\"channel\":\"inject\",\"data\":\"a\nid: 1\n\ndata: b\"}",
            &[("X-API-Key", &key)],
        )
        .await?;
    assert_eq!(status, 400, "{body}");

    let mut published = Vec::with_capacity(PUBLICATIONS);
    for n in 0..PUBLICATIONS {
        let data = hostile_value(&mut rng, n);
        match n % 10 {
            0 => {
                sse.publish("inject", data.clone()).await?;
            }
            1..=4 => {
                let body = loose_json(&mut rng, &json!({ "channel": "inject", "data": data }))?;
                let (status, reply) = server
                    .api_raw("publish", &body, &[("X-API-Key", &key)])
                    .await?;
                assert_eq!(status, 200, "seed {seed}: {body:?} -> {reply}");
                assert!(
                    !reply.contains("\"error\""),
                    "seed {seed}: {body:?} -> {reply}"
                );
            }
            _ => {
                server.publish("inject", data.clone()).await?;
            }
        }
        published.push(data);
    }

    for (n, data) in published.iter().enumerate() {
        let over_sse = sse
            .next_pub("inject")
            .await
            .with_context(|| format!("seed {seed}, publication {n}"))?;
        assert_eq!(
            &over_sse["data"], data,
            "seed {seed}, publication {n} over sse"
        );
        let over_uni = uni
            .next_pub("inject")
            .await
            .with_context(|| format!("seed {seed}, publication {n} over uni_sse"))?;
        assert_eq!(
            &over_uni["data"], data,
            "seed {seed}, publication {n} over uni_sse"
        );
    }
    for (name, counts) in [
        ("sse", sse.sse_field_counts()),
        ("uni_sse", uni.sse_field_counts()),
    ] {
        let fields: BTreeSet<&str> = counts
            .into_iter()
            .flatten()
            .map(|(field, _)| field.as_str())
            .collect();
        assert_eq!(fields, BTreeSet::from(["data"]), "seed {seed}, over {name}");
    }
    Ok(())
}

// ---- CORS and allowed origins ----------------------------------------------

/// Endpoints a browser on another origin POSTs to.
const POST_ENDPOINTS: &[&str] = &[
    "/emulation",
    "/connection/http_stream",
    "/connection/long_poll",
    "/connection/sse",
    "/connection/uni_http_stream",
];

async fn preflight(
    http: &reqwest::Client,
    server: &TidingsServer,
    path: &str,
    origin: &str,
) -> anyhow::Result<reqwest::Response> {
    http.request(Method::OPTIONS, format!("{}{path}", server.http_url()))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("OPTIONS {path}"))
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn cors_preflight_echoes_an_allowed_origin_without_credentials() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(config(&[APP]))
        .start()
        .await?;
    let http = reqwest::Client::new();
    for path in POST_ENDPOINTS {
        let response = preflight(&http, &server, path, APP).await?;
        let status = response.status().as_u16();
        assert!((200..300).contains(&status), "OPTIONS {path} -> {status}");
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            Some(APP),
            "OPTIONS {path}: {:?}",
            response.headers()
        );
        assert_eq!(
            header(&response, "access-control-allow-credentials"),
            None,
            "OPTIONS {path}"
        );
        let methods = header(&response, "access-control-allow-methods").unwrap_or("");
        assert!(
            methods.contains("POST"),
            "OPTIONS {path}: methods {methods:?}"
        );
        let headers = header(&response, "access-control-allow-headers").unwrap_or("");
        assert!(
            headers.to_ascii_lowercase().contains("content-type"),
            "OPTIONS {path}: headers {headers:?}"
        );
        let vary = header(&response, "vary").unwrap_or("").to_ascii_lowercase();
        assert!(vary.contains("origin"), "OPTIONS {path}: vary {vary:?}");
    }

    // The actual cross-origin request works and is labelled the same way.
    let response = http
        .post(format!("{}/connection/http_stream", server.http_url()))
        .header("Origin", APP)
        .header("Content-Type", "application/json")
        .body(r#"{"id":1,"connect":{}}"#)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&response, "access-control-allow-credentials"), None);
    Ok(())
}

#[tokio::test]
async fn cors_and_origin_checks_refuse_a_disallowed_origin() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(config(&[APP]))
        .start()
        .await?;
    let http = reqwest::Client::new();
    let base = server.http_url();
    // A live session, opened without an Origin (not a browser), to aim at.
    let mut client = server.connect_over(Transport::Sse).await?;
    let session = client.session().context("no session")?.to_owned();
    let lp = ProtoClient::connect(&base, Transport::LongPoll, json!({})).await?;
    let lp_session = lp.session().context("no long-poll session")?.to_owned();
    let connect = r#"{"id":1,"connect":{}}"#;
    let emulation =
        json!({ "session": session, "data": r#"{"id":5,"subscribe":{"channel":"x"}}"# })
            .to_string();
    let sse_query = format!(
        "cf_connect={}",
        "%7B%22id%22%3A1%2C%22connect%22%3A%7B%7D%7D"
    );

    for origin in [
        "https://evil.example",
        "https://app.example.evil",
        "http://app.example",
        "null",
    ] {
        for path in POST_ENDPOINTS {
            let response = preflight(&http, &server, path, origin).await?;
            assert_eq!(
                header(&response, "access-control-allow-origin"),
                None,
                "OPTIONS {path} from {origin}"
            );
        }
        let requests = [
            (Method::POST, "/emulation".to_owned(), emulation.clone()),
            (
                Method::POST,
                "/connection/http_stream".to_owned(),
                connect.to_owned(),
            ),
            (
                Method::GET,
                format!("/connection/sse?{sse_query}"),
                String::new(),
            ),
            (
                Method::POST,
                "/connection/sse".to_owned(),
                connect.to_owned(),
            ),
            (
                Method::POST,
                "/connection/long_poll".to_owned(),
                connect.to_owned(),
            ),
            (
                Method::GET,
                format!("/connection/long_poll?session={lp_session}&cursor=0"),
                String::new(),
            ),
            (
                Method::DELETE,
                format!("/connection/long_poll?session={lp_session}"),
                String::new(),
            ),
            (Method::GET, "/connection/uni_sse".to_owned(), String::new()),
            (
                Method::POST,
                "/connection/uni_http_stream".to_owned(),
                "{}".to_owned(),
            ),
        ];
        for (method, path, body) in requests {
            let response = http
                .request(method.clone(), format!("{base}{path}"))
                .header("Origin", origin)
                .header("Content-Type", "application/json")
                .body(body)
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            assert_eq!(
                response.status().as_u16(),
                403,
                "{method} {path} from {origin}"
            );
            assert_eq!(
                header(&response, "access-control-allow-origin"),
                None,
                "{method} {path} from {origin}"
            );
        }
        for path in ["/connection/websocket", "/connection/uni_websocket"] {
            let url = format!("ws://{}{path}", server.addr());
            let status = handshake_status(&url, &[("Origin", origin)]).await?;
            assert_eq!(status, 403, "{path} from {origin}");
        }
    }

    // Neither session noticed: the refused command never reached them.
    let result = client.subscribe("after").await?;
    assert!(result.is_object(), "{result}");
    let skipped = client.skipped_pushes().len();
    assert_eq!(skipped, 0);
    let mut lp = lp;
    lp.subscribe("after").await?;
    Ok(())
}

// ---- unidirectional endpoints ----------------------------------------------

/// Connect push, publications for the channels in `subs` and the token's
/// `channels` claim, and `{}` pings that need no answer.
async fn uni_endpoint_serves_subscriptions(transport: UniTransport) -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(config(&["*"]))
        .start()
        .await?;
    let base = server.http_url();

    let mut anonymous =
        UniClient::open(&base, transport, &json!({ "subs": { "news": {} } })).await?;
    let connect = anonymous.next_message().await?;
    let result = &connect["connect"];
    assert!(
        result["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{connect}"
    );
    assert!(result["subs"]["news"].is_object(), "{connect}");
    server.publish("news", json!({ "headline": "one" })).await?;
    let publication = anonymous.next_pub("news").await?;
    assert_eq!(publication["data"], json!({ "headline": "one" }));

    let token =
        hs256_token_with_claims(SECRET, &json!({ "sub": "carol", "channels": ["alerts"] }))?;
    let mut carol = UniClient::open(&base, transport, &json!({ "token": token })).await?;
    let connect = carol.next_message().await?;
    assert!(
        connect["connect"]["subs"]["alerts"].is_object(),
        "{connect}"
    );
    server.publish("alerts", json!("fire drill")).await?;
    assert_eq!(carol.next_pub("alerts").await?["data"], json!("fire drill"));

    // A ping arrives within two intervals, and no pong is expected back:
    // the client stays subscribed past the pong timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while anonymous.pings_received() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ping over {transport}"
        );
        let message = anonymous.next_message().await?;
        assert!(
            message.as_object().is_some_and(|o| o.is_empty()) || message.get("pub").is_some(),
            "unexpected {message} over {transport}"
        );
    }
    let after_ping = anonymous.pings_received();
    while anonymous.pings_received() < after_ping + 1 {
        anonymous.next_message().await?;
    }
    server.publish("news", json!({ "headline": "two" })).await?;
    let publication = anonymous.next_pub("news").await?;
    assert_eq!(publication["data"], json!({ "headline": "two" }));
    assert_eq!(publication["offset"], json!(2), "{publication}");
    Ok(())
}

#[tokio::test]
async fn uni_websocket_serves_subscriptions() -> anyhow::Result<()> {
    uni_endpoint_serves_subscriptions(UniTransport::WebSocket).await
}

#[tokio::test]
async fn uni_sse_serves_subscriptions() -> anyhow::Result<()> {
    uni_endpoint_serves_subscriptions(UniTransport::Sse).await
}

#[tokio::test]
async fn uni_http_stream_serves_subscriptions() -> anyhow::Result<()> {
    uni_endpoint_serves_subscriptions(UniTransport::HttpStream).await
}
