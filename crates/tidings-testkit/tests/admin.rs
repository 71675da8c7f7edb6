//! The admin UI's HTTP endpoints (docs/admin.md) on the real binary: the login,
//! the session token and what is refused without one, requests from another
//! site, the internal port, insecure mode, and the live tail on every engine.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::profile::open_config;
use tidings_testkit::sse::SseParser;
use tidings_testkit::token::{hs256_token_with_claims, unix_now};
use tidings_testkit::{NatsServer, RedisServer, TidingsServer};
use tokio::time::Instant;

const API_KEY: &str = "admin-test-api-key";
const HMAC: &str = "admin-test-client-hmac-secret-32b!";
const PASSWORD: &str = "admin-test-password";
const SECRET: &str = "admin-test-secret-of-thirty-two-bytes";
const WAIT: Duration = Duration::from_secs(10);

fn config(admin: Value) -> Value {
    let mut config = open_config(API_KEY, HMAC);
    config["admin"] = admin;
    config
}

fn secured() -> Value {
    json!({ "enabled": true, "password": PASSWORD, "secret": SECRET, "handler_prefix": "/admin" })
}

/// POSTs JSON to `url` with extra headers; the status and body text.
async fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .timeout(WAIT);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

async fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
    let mut request = reqwest::Client::new().get(url).timeout(WAIT);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Logs in at `base` (`…/admin/admin`) and returns the session token.
async fn login(base: &str) -> anyhow::Result<String> {
    let (status, body) = post(
        &format!("{base}/auth"),
        &json!({ "password": PASSWORD }),
        &[],
    )
    .await?;
    anyhow::ensure!(status == 200, "login: {status} {body}");
    let answer: Value = serde_json::from_str(&body)?;
    Ok(answer["token"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn the_admin_api_needs_a_valid_session_token() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(config(secured()))
        .start()
        .await?;
    let base = format!("{}/admin/admin", server.http_url());
    let api = format!("{base}/api");
    let info = json!({ "method": "info", "params": {} });

    let (status, body) = post(
        &format!("{base}/auth"),
        &json!({ "password": "guess" }),
        &[],
    )
    .await?;
    assert_eq!((status, body.as_str()), (401, "wrong password"));
    let token = login(&base).await?;
    let bearer = format!("token {token}");
    let (status, body) = post(&api, &info, &[("Authorization", &bearer)]).await?;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body)?;
    assert_eq!(
        answer["result"]["nodes"].as_array().map(Vec::len),
        Some(1),
        "{body}"
    );

    // Without a token, or with one that is not a session of this server.
    assert_eq!(post(&api, &info, &[]).await?.0, 401);
    let claims =
        |exp: u64| json!({ "sub": "admin", "aud": "tidings-admin", "iat": unix_now(), "exp": exp });
    let forged = hs256_token_with_claims("another secret", &claims(unix_now() + 600))?;
    let expired = hs256_token_with_claims(SECRET, &claims(unix_now() - 60))?;
    let no_audience =
        hs256_token_with_claims(SECRET, &json!({ "sub": "admin", "exp": unix_now() + 600 }))?;
    let unsigned = format!(
        "eyJhbGciOiJub25lIn0.{}.",
        base64_url(&claims(unix_now() + 600).to_string())
    );
    for (what, token) in [
        ("forged", forged.as_str()),
        ("expired", expired.as_str()),
        ("without the admin audience", no_audience.as_str()),
        ("unsigned", unsigned.as_str()),
    ] {
        let header = format!("token {token}");
        let (status, body) = post(&api, &info, &[("Authorization", &header)]).await?;
        assert_eq!(status, 401, "a {what} token: {body}");
        let (status, _) = get(&format!("{base}/config"), &[("Authorization", &header)]).await?;
        assert_eq!(status, 401, "the configuration with a {what} token");
        let (status, _) = get(
            &format!("{base}/tail?channel=x"),
            &[("Authorization", &header)],
        )
        .await?;
        assert_eq!(status, 401, "the tail with a {what} token");
    }
    let header = format!("token {expired}");
    let (_, body) = post(&api, &info, &[("Authorization", &header)]).await?;
    assert!(body.contains("expired"), "{body}");

    // The page says whether the token it holds is still good.
    let (_, body) = get(&format!("{base}/init"), &[("Authorization", &bearer)]).await?;
    assert_eq!(serde_json::from_str::<Value>(&body)?["authenticated"], true);
    let (_, body) = get(&format!("{base}/init"), &[]).await?;
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["authenticated"],
        false
    );

    // The configuration, with its secrets masked.
    let (status, body) = get(&format!("{base}/config"), &[("Authorization", &bearer)]).await?;
    assert_eq!(status, 200);
    for secret in [PASSWORD, SECRET, HMAC, API_KEY] {
        assert!(!body.contains(secret), "the configuration shows {secret}");
    }
    Ok(())
}

/// Base64url without padding, for a hand-made token.
fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn requests_from_another_site_are_refused() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(config(secured()))
        .start()
        .await?;
    let base = format!("{}/admin/admin", server.http_url());
    let token = login(&base).await?;
    let bearer = format!("token {token}");
    let info = json!({ "method": "info" });
    let api = format!("{base}/api");
    let same = server.http_url();
    assert_eq!(
        post(
            &api,
            &info,
            &[("Authorization", &bearer), ("Origin", &same)]
        )
        .await?
        .0,
        200
    );
    for headers in [
        [
            ("Authorization", bearer.as_str()),
            ("Origin", "http://evil.example"),
        ],
        [("Authorization", bearer.as_str()), ("Origin", "null")],
        [
            ("Authorization", bearer.as_str()),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    ] {
        let (status, body) = post(&api, &info, &headers).await?;
        assert_eq!(
            (status, body.as_str()),
            (403, "cross-origin request refused"),
            "{headers:?}"
        );
    }
    // A login from another site is refused before the password is looked at.
    let (status, _) = post(
        &format!("{base}/auth"),
        &json!({ "password": PASSWORD }),
        &[("Origin", "http://evil.example")],
    )
    .await?;
    assert_eq!(status, 403);
    // What an HTML form can send (no JSON content type) is refused.
    let response = reqwest::Client::new()
        .post(&api)
        .header("Authorization", &bearer)
        .header("Content-Type", "text/plain")
        .body(info.to_string())
        .timeout(WAIT)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 415);
    // Bad input: a clear status and message.
    let (status, body) = post(
        &api,
        &json!({ "params": {} }),
        &[("Authorization", &bearer)],
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &api,
        &json!({ "method": "batch" }),
        &[("Authorization", &bearer)],
    )
    .await?;
    assert_eq!(
        (status, body.as_str()),
        (400, "unknown API method \"batch\"")
    );
    let (status, body) = get(&format!("{base}/tail"), &[("Authorization", &bearer)]).await?;
    assert_eq!(status, 400, "{body}");
    let long = "x".repeat(2000);
    let (status, _) = get(
        &format!("{base}/tail?channel={long}"),
        &[("Authorization", &bearer)],
    )
    .await?;
    assert_eq!(status, 400);
    Ok(())
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(config(secured()))
        .start()
        .await?;
    let auth = format!("{}/admin/admin/auth", server.http_url());
    for _ in 0..10 {
        assert_eq!(
            post(&auth, &json!({ "password": "guess" }), &[]).await?.0,
            401
        );
    }
    // Now even the right password is not looked at.
    let (status, body) = post(&auth, &json!({ "password": PASSWORD }), &[]).await?;
    assert_eq!(status, 429, "{body}");
    Ok(())
}

#[tokio::test]
async fn on_the_internal_port_the_admin_is_served_there_only() -> anyhow::Result<()> {
    let mut config = config(json!({ "enabled": true, "password": PASSWORD, "secret": SECRET }));
    config["http_server"] = json!({ "address": "127.0.0.1", "internal_port": "0" });
    let server = TidingsServer::builder().config_json(config).start().await?;
    let internal = format!(
        "http://{}",
        server.internal_addr().expect("an internal port")
    );
    let response = reqwest::get(format!("{internal}/")).await?;
    assert_eq!(response.status().as_u16(), 200);
    let csp = response.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert!(response.text().await?.contains("admin.js"));
    login(&format!("{internal}/admin")).await?;
    // The public port keeps the demo at `/` and has no admin endpoints.
    let (status, body) = server.http_get("/").await?;
    assert_eq!(status, 200);
    assert!(!body.contains("admin.js"));
    assert_eq!(server.http_get("/admin/init").await?.0, 404);
    Ok(())
}

#[tokio::test]
async fn insecure_mode_needs_no_login() -> anyhow::Result<()> {
    let mut config = config(json!({ "enabled": true, "insecure": true }));
    config["http_server"] = json!({ "address": "127.0.0.1" });
    let server = TidingsServer::builder().config_json(config).start().await?;
    let base = format!("{}/admin", server.http_url());
    let (status, body) = post(&format!("{base}/api"), &json!({ "method": "info" }), &[]).await?;
    assert_eq!(status, 200, "{body}");
    let (_, body) = get(&format!("{base}/init"), &[]).await?;
    assert_eq!(serde_json::from_str::<Value>(&body)?["insecure"], true);
    // Still no requests from another site.
    let (status, _) = post(
        &format!("{base}/api"),
        &json!({ "method": "info" }),
        &[("Origin", "http://evil.example")],
    )
    .await?;
    assert_eq!(status, 403);
    assert!(server
        .logs()
        .iter()
        .any(|l| l.contains("admin.insecure is on")));
    Ok(())
}

/// Opens a tail at `base`, publishes through the API until a publication shows
/// up in it, and checks `channels` and `presence` through the admin API.
async fn tail_sees_publications(server: &TidingsServer) -> anyhow::Result<()> {
    let base = format!("{}/admin/admin", server.http_url());
    let token = login(&base).await?;
    let bearer = format!("token {token}");
    let channel = format!("tail-{}", std::process::id());
    let mut response = reqwest::Client::new()
        .get(format!("{base}/tail?channel={channel}"))
        .header("Authorization", &bearer)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut parser = SseParser::new();
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    let data = loop {
        n += 1;
        // An engine that is still connecting answers errors; the next round retries.
        let _ = server.publish(&channel, json!({ "n": n })).await;
        let chunk = tokio::time::timeout(Duration::from_millis(500), response.chunk()).await;
        if let Ok(chunk) = chunk {
            if let Some(bytes) = chunk? {
                parser.feed(&bytes);
            }
        }
        if let Some(event) = std::iter::from_fn(|| parser.pop()).find(|e| !e.data.is_empty()) {
            break event.data;
        }
        anyhow::ensure!(Instant::now() < deadline, "no publication reached the tail");
    };
    let push: Value = serde_json::from_str(&data)?;
    assert_eq!(push["push"]["channel"], json!(channel), "{data}");
    assert!(push["push"]["pub"]["data"]["n"].is_u64(), "{data}");
    let (status, body) = post(
        &format!("{base}/api"),
        &json!({ "method": "channels", "params": {} }),
        &[("Authorization", &bearer)],
    )
    .await?;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body)?;
    assert_eq!(
        answer["result"]["channels"][&channel]["num_clients"], 1,
        "{body}"
    );
    drop(response);
    Ok(())
}

#[tokio::test]
async fn the_tail_works_on_every_engine() -> anyhow::Result<()> {
    let memory = TidingsServer::builder()
        .config_json(config(secured()))
        .start()
        .await?;
    tail_sees_publications(&memory).await?;

    let redis = RedisServer::start().await?;
    let mut on_redis = config(secured());
    on_redis["engine"] = json!({ "type": "redis", "redis": { "address": redis.url() } });
    let server = TidingsServer::builder()
        .config_json(on_redis)
        .start()
        .await?;
    tail_sees_publications(&server).await?;

    let nats = NatsServer::start().await?;
    let mut on_nats = config(secured());
    on_nats["engine"] = json!({ "type": "nats", "nats": { "url": nats.url() } });
    let server = TidingsServer::builder()
        .config_json(on_nats)
        .start()
        .await?;
    tail_sees_publications(&server).await?;
    Ok(())
}

#[tokio::test]
async fn an_open_tail_ends_when_the_node_shuts_down() -> anyhow::Result<()> {
    let mut server = TidingsServer::builder()
        .config_json(config(secured()))
        .start()
        .await?;
    let base = format!("{}/admin/admin", server.http_url());
    let token = login(&base).await?;
    let mut response = reqwest::Client::new()
        .get(format!("{base}/tail?channel=shutdown"))
        .header("Authorization", format!("token {token}"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    server.sigterm()?;
    let mut parser = SseParser::new();
    let deadline = Instant::now() + WAIT;
    let end = loop {
        if let Some(event) = std::iter::from_fn(|| parser.pop()).find(|e| e.event_type == "end") {
            break event;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(bytes))) => parser.feed(&bytes),
            Ok(Ok(None)) => anyhow::bail!("the tail closed without an end event"),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => anyhow::bail!("the tail did not end within {WAIT:?}"),
        }
    };
    assert_eq!(
        serde_json::from_str::<Value>(&end.data)?["reason"],
        "shutdown"
    );
    // The open tail does not hold the shutdown up.
    let status = server.wait_exit(WAIT).await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_serves_at_most_sixteen_tails() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(config(secured()))
        .start()
        .await?;
    let base = format!("{}/admin/admin", server.http_url());
    let bearer = format!("token {}", login(&base).await?);
    let http = reqwest::Client::new();
    let open = |n: usize| {
        http.get(format!("{base}/tail?channel=busy-{n}"))
            .header("Authorization", &bearer)
            .timeout(WAIT)
            .send()
    };
    let mut tails = Vec::new();
    for n in 0..16 {
        let response = open(n).await?;
        assert_eq!(response.status().as_u16(), 200, "tail {n}");
        tails.push(response);
    }
    let response = open(16).await?;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response.text().await?,
        "too many live tails are open on this node"
    );
    // A closed tail frees its place.
    drop(tails.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let response = open(17).await?;
        if response.status().as_u16() == 200 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the closed tail's place never came free"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
