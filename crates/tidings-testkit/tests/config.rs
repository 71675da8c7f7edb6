//! `--config` files in TOML, YAML and JSON (Centrifugo v6 key names) allow
//! exactly what they say; `TIDINGS_*` environment variables override them.

use serde_json::json;
use tidings_testkit::profile::{namespace, open_config};
use tidings_testkit::{handshake_status, hs256_token, unix_now, Outcome, TidingsServer, WsClient};

const TOML_CONFIG: &str = r#"
[client]
allowed_origins = ["*"]

[client.token]
hmac_secret_key = "toml-secret"

[http_api]
key = "toml-key"

[[channel.namespaces]]
name = "chat"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
history_size = 10
history_ttl = "60s"
force_recovery = true
"#;

const YAML_CONFIG: &str = r#"
client:
  allowed_origins: ["*"]
  allow_anonymous_connect_without_token: false
  token:
    hmac_secret_key: yaml-secret
http_api:
  key: yaml-key
channel:
  without_namespace:
    presence: true
    allow_subscribe_for_client: true
"#;

/// Connecting without a token must not produce a session. Centrifugo closes
/// with 3501 (no credentials); an `unauthorized` error is also a refusal.
async fn assert_anonymous_refused(server: &TidingsServer) -> anyhow::Result<()> {
    let mut client = server.client().await?;
    match client.call_or_close(json!({ "connect": {} })).await? {
        Outcome::Closed(code, reason) => {
            assert!(
                code == 3501 || code == 3500,
                "anonymous connect closed with {code} {reason:?}"
            )
        }
        Outcome::Reply(reply) => {
            assert_eq!(
                reply["error"]["code"],
                json!(101),
                "anonymous connect got {reply}"
            )
        }
    }
    Ok(())
}

#[tokio::test]
async fn toml_config_applies_namespaces_and_permissions() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_toml(TOML_CONFIG)
        .api_key("toml-key")
        .start()
        .await?;
    assert_anonymous_refused(&server).await?;

    let token = hs256_token("toml-secret", "tom", None)?;
    let mut tom = server.connected_client_with_token(&token).await?;
    let result = tom.subscribe("chat:room").await?;
    assert_eq!(result["recoverable"], json!(true), "{result}");
    tom.publish("chat:room", json!("hello")).await?;
    assert_eq!(tom.next_pub("chat:room").await?["data"], json!("hello"));

    let code = tom
        .error_code(json!({ "subscribe": { "channel": "other:room" } }))
        .await?;
    assert_eq!(code, 102, "namespace not in the file");
    let code = tom
        .error_code(json!({ "subscribe": { "channel": "plain" } }))
        .await?;
    assert_eq!(
        code, 103,
        "channels without namespace allow nothing by default"
    );
    let code = tom
        .error_code(json!({ "presence": { "channel": "chat:room" } }))
        .await?;
    assert!(
        code == 108 || code == 103,
        "presence is off in chat: {code}"
    );

    server.publish("chat:room", json!("from api")).await?;
    Ok(())
}

#[tokio::test]
async fn yaml_config_refuses_anonymous_connect_without_token() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_yaml(YAML_CONFIG)
        .api_key("yaml-key")
        .start()
        .await?;
    assert_anonymous_refused(&server).await?;

    let token = hs256_token("yaml-secret", "yan", None)?;
    let mut yan = server.connected_client_with_token(&token).await?;
    yan.subscribe("news").await?;
    let code = yan
        .error_code(json!({ "publish": { "channel": "news", "data": 1 } }))
        .await?;
    assert_eq!(code, 103, "publish is not allowed by the file");
    let code = yan
        .error_code(json!({ "presence": { "channel": "news" } }))
        .await?;
    assert_eq!(
        code, 103,
        "presence for subscribers is not allowed by the file"
    );
    let (status, _) = server.api("info", json!({})).await?;
    assert_eq!(status, 200);
    Ok(())
}

fn json_config() -> serde_json::Value {
    let mut config = open_config("json-key", "json-secret");
    config["client"]["allow_anonymous_connect_without_token"] = json!(false);
    config["client"]["ping_interval"] = json!("10s");
    config["client"]["pong_timeout"] = json!("4s");
    config["channel"]["max_length"] = json!(20);
    config["channel"]["namespaces"] = json!([namespace(
        "team",
        json!({ "presence": true, "allow_subscribe_for_client": true })
    )]);
    config
}

#[tokio::test]
async fn json_config_accepts_hs256_tokens_from_hmac_secret_key() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(json_config())
        .start()
        .await?;
    assert_anonymous_refused(&server).await?;
    let token = hs256_token("json-secret", "jo", Some(unix_now() + 300))?;
    let mut jo = server.client().await?;
    let result = jo.connect(json!({ "token": token })).await?;
    assert_eq!(
        result["ping"],
        json!(10),
        "ping_interval from the file: {result}"
    );
    assert_eq!(result["expires"], json!(true), "{result}");
    jo.subscribe("team:blue").await?;
    let presence = server
        .api_ok("presence", json!({ "channel": "team:blue" }))
        .await?;
    let id = jo.client_id().unwrap_or_default();
    assert_eq!(presence["presence"][id]["user"], json!("jo"), "{presence}");
    Ok(())
}

#[tokio::test]
async fn token_signed_with_another_secret_closes_3500() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(json_config())
        .start()
        .await?;
    let forged = hs256_token("not-the-secret", "mallory", None)?;
    let mut client = server.client().await?;
    match client
        .call_or_close(json!({ "connect": { "token": forged } }))
        .await?
    {
        Outcome::Closed(code, reason) => assert_eq!(code, 3500, "reason {reason:?}"),
        Outcome::Reply(reply) => panic!("a forged token got {reply}"),
    }
    // Garbage that is not a JWT at all is also an invalid token.
    let mut client = server.client().await?;
    match client
        .call_or_close(json!({ "connect": { "token": "abc.def" } }))
        .await?
    {
        Outcome::Closed(code, reason) => assert_eq!(code, 3500, "reason {reason:?}"),
        Outcome::Reply(reply) => panic!("a malformed token got {reply}"),
    }
    Ok(())
}

#[tokio::test]
async fn expired_token_returns_109() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(json_config())
        .start()
        .await?;
    let expired = hs256_token("json-secret", "late", Some(unix_now() - 60))?;
    let mut client = server.client().await?;
    let code = client
        .error_code(json!({ "connect": { "token": expired } }))
        .await?;
    assert_eq!(code, 109);
    // The SDK then fetches a fresh token and connects again.
    let fresh = hs256_token("json-secret", "late", Some(unix_now() + 60))?;
    server.connected_client_with_token(&fresh).await?;
    Ok(())
}

#[tokio::test]
async fn channel_max_length_comes_from_the_file() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(json_config())
        .start()
        .await?;
    let token = hs256_token("json-secret", "max", None)?;
    let mut client = server.connected_client_with_token(&token).await?;
    client.subscribe("team:123456789012345").await?; // 20 characters
    let code = client
        .error_code(json!({ "subscribe": { "channel": "team:1234567890123456" } }))
        .await?;
    assert_eq!(code, 107);
    Ok(())
}

#[tokio::test]
async fn env_overrides_http_api_key_from_file() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_json(json_config())
        .env("TIDINGS_HTTP_API_KEY", "env-key")
        .start()
        .await?;
    let body = r#"{"channel":"team:x","data":1}"#;
    let (status, _) = server
        .api_raw("publish", body, &[("X-API-Key", "json-key")])
        .await?;
    assert_eq!(status, 401, "the file's key is overridden");
    let (status, text) = server
        .api_raw("publish", body, &[("X-API-Key", "env-key")])
        .await?;
    assert_eq!(status, 200, "{text}");
    Ok(())
}

#[tokio::test]
async fn env_overrides_nested_client_options() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .config_toml(TOML_CONFIG)
        .api_key("toml-key")
        .env("TIDINGS_CLIENT_PING_INTERVAL", "7s")
        .env("TIDINGS_CLIENT_PONG_TIMEOUT", "3s")
        .env(
            "TIDINGS_CLIENT_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN",
            "true",
        )
        .start()
        .await?;
    let mut anonymous = server.client().await?;
    let result = anonymous.connect(json!({})).await?;
    assert_eq!(result["ping"], json!(7), "{result}");
    Ok(())
}

#[tokio::test]
async fn allowed_origins_reject_other_origins() -> anyhow::Result<()> {
    let mut config = json_config();
    config["client"]["allowed_origins"] = json!(["http://good.example"]);
    let server = TidingsServer::builder().config_json(config).start().await?;
    let url = server.ws_url();
    assert_eq!(
        handshake_status(&url, &[("Origin", "http://good.example")]).await?,
        101
    );
    assert_eq!(
        handshake_status(&url, &[("Origin", "http://evil.example")]).await?,
        403
    );
    // Non-browser clients send no Origin and are let through.
    WsClient::open(&url).await?;
    Ok(())
}

#[tokio::test]
async fn broken_config_file_fails_to_start() -> anyhow::Result<()> {
    for (ext, text) in [
        ("json", "{ \"client\": "),
        ("toml", "[client\nallowed_origins = 1"),
        ("yaml", "client: [unclosed"),
    ] {
        let started = TidingsServer::builder()
            .config_file(ext, text)
            .api_key("unused")
            .start()
            .await;
        assert!(started.is_err(), "a broken .{ext} file was accepted");
    }
    Ok(())
}

#[tokio::test]
async fn invalid_namespace_name_fails_to_start() -> anyhow::Result<()> {
    let mut config = open_config("k", "s");
    config["channel"]["namespaces"] = json!([namespace("bad name!", json!({}))]);
    let started = TidingsServer::builder().config_json(config).start().await;
    assert!(
        started.is_err(),
        "a namespace named \"bad name!\" was accepted"
    );
    Ok(())
}
