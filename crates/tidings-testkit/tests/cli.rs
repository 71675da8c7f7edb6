//! The `tidings token` and `tidings check-config` commands, run as a user runs them.

use std::path::PathBuf;
use std::process::Output;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tidings_testkit::{binary_path, unix_now, TidingsServer};

const SECRET: &str = "cli-test-secret-that-is-32-bytes-or-more";

/// Runs the binary with `args` and an environment without `TIDINGS_*` variables
/// (plus `env`), with a deadline.
async fn run(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(binary_path()?);
    command.args(args).kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TIDINGS_") {
            command.env_remove(&key);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    Ok(tokio::time::timeout(std::time::Duration::from_secs(15), command.output()).await??)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The claims of a JWT, unverified (the server verifies; this only reads).
fn claims_of(token: &str) -> anyhow::Result<Value> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWT: {token}"))?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?)
}

async fn token(extra: &[&str]) -> anyhow::Result<Value> {
    let mut args = vec!["token", "--secret", SECRET];
    args.extend_from_slice(extra);
    let out = run(&args, &[]).await?;
    anyhow::ensure!(
        out.status.success(),
        "tidings token failed: {}",
        stderr(&out)
    );
    claims_of(&stdout(&out))
}

fn exp_in(claims: &Value) -> i64 {
    claims["exp"].as_i64().unwrap_or(0) - unix_now() as i64
}

#[tokio::test]
async fn token_takes_user_channels_and_a_humantime_ttl() -> anyhow::Result<()> {
    let claims = token(&["--user", "42", "--channels", "a,b", "--ttl", "1h"]).await?;
    assert_eq!(claims["sub"], json!("42"));
    assert_eq!(claims["channels"], json!(["a", "b"]));
    let left = exp_in(&claims);
    assert!((3590..=3600).contains(&left), "exp in {left}s: {claims}");

    let claims = token(&["--user", "42", "--ttl", "90"]).await?;
    assert!(
        (80..=90).contains(&exp_in(&claims)),
        "plain seconds: {claims}"
    );
    let claims = token(&["--user", "42", "--ttl", "1h 30m"]).await?;
    assert!((5390..=5400).contains(&exp_in(&claims)), "{claims}");
    let claims = token(&["--user", "42", "--ttl", "0"]).await?;
    assert!(claims.get("exp").is_none(), "no expiry: {claims}");

    let claims = token(&["--user", "42", "--channel", "$inbox", "--ttl", "10m"]).await?;
    assert_eq!(claims["channel"], json!("$inbox"), "subscription token");

    let out = run(
        &["token", "--secret", SECRET, "--user", "1", "--ttl", "soon"],
        &[],
    )
    .await?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("soon"), "{}", stderr(&out));
    Ok(())
}

#[tokio::test]
async fn minted_token_connects_and_subscribes_its_channels() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)
        .start()
        .await?;
    let out = run(
        &[
            "token",
            "--user",
            "42",
            "--channels",
            "news,alerts",
            "--ttl",
            "1h",
        ],
        &[("TIDINGS_CLIENT_TOKEN_HMAC_SECRET_KEY", SECRET)],
    )
    .await?;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut client = server.client().await?;
    let result = client.connect(json!({ "token": stdout(&out) })).await?;
    assert!(result["subs"].get("news").is_some(), "{result}");
    assert!(result["subs"].get("alerts").is_some(), "{result}");
    assert_eq!(result["expires"], json!(true));
    Ok(())
}

/// Writes `config` to a temp file and runs `check-config` on it.
async fn check(config: Value, env: &[(&str, &str)]) -> anyhow::Result<Output> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path: PathBuf =
        std::env::temp_dir().join(format!("tidings-check-{}-{n}.json", std::process::id()));
    std::fs::write(&path, config.to_string())?;
    let out = run(&["check-config", path.to_str().unwrap_or_default()], env).await;
    let _ = std::fs::remove_file(&path);
    out
}

fn safe() -> Value {
    json!({
        "client": { "token": { "hmac_secret_key": SECRET } },
        "http_api": { "key": "an-api-key" }
    })
}

fn with(mut base: Value, pointer: &str, value: Value) -> Value {
    if let Some(slot) = base.pointer_mut(pointer) {
        *slot = value;
        return base;
    }
    // Create the path.
    let mut node = &mut base;
    for part in pointer.trim_start_matches('/').split('/') {
        if node.get(part).is_none() {
            node[part] = json!({});
        }
        node = &mut node[part];
    }
    *node = value;
    base
}

#[tokio::test]
async fn check_config_accepts_a_safe_config() -> anyhow::Result<()> {
    for config in [
        safe(),
        with(safe(), "/http_api/insecure", json!(true)),
        with(
            with(safe(), "/http_api/insecure", json!(true)),
            "/http_server/address",
            json!("::1"),
        ),
        with(
            with(safe(), "/http_api/insecure", json!(true)),
            "/http_server/address",
            json!("localhost"),
        ),
        with(
            safe(),
            "/client/token",
            json!({ "jwks_public_endpoint": "http://127.0.0.1:8080/certs" }),
        ),
    ] {
        // http_api.insecure with no address is refused below; give it loopback.
        let config = if config.pointer("/http_api/insecure").is_some()
            && config.pointer("/http_server/address").is_none()
        {
            with(config, "/http_server/address", json!("127.0.0.1"))
        } else {
            config
        };
        let out = check(config.clone(), &[]).await?;
        assert!(out.status.success(), "{config}: {}", stderr(&out));
        let printed: Value = serde_json::from_str(&stdout(&out))?;
        assert!(printed.get("client").is_some());
    }
    Ok(())
}

#[tokio::test]
async fn check_config_refuses_insecure_combinations() -> anyhow::Result<()> {
    let cases = [
        (
            "client.insecure",
            with(safe(), "/client/insecure", json!(true)),
        ),
        (
            "client.insecure_skip_token_signature_verify",
            with(
                safe(),
                "/client/insecure_skip_token_signature_verify",
                json!(true),
            ),
        ),
        (
            "client.token.hmac_secret_key is 6 bytes",
            with(safe(), "/client/token/hmac_secret_key", json!("secret")),
        ),
        (
            "client.subscription_token.hmac_secret_key is 5 bytes",
            with(
                safe(),
                "/client/subscription_token",
                json!({ "enabled": true, "hmac_secret_key": "short" }),
            ),
        ),
        (
            "http_api.insecure serves the server API without a key on every interface",
            with(safe(), "/http_api/insecure", json!(true)),
        ),
        (
            "http_api.insecure serves the server API without a key on 0.0.0.0",
            with(
                with(safe(), "/http_api/insecure", json!(true)),
                "/http_server/address",
                json!("0.0.0.0"),
            ),
        ),
        (
            "http_api.insecure serves the server API without a key on 192.0.2.10",
            with(
                with(safe(), "/http_api/insecure", json!(true)),
                "/http_server/address",
                json!("192.0.2.10"),
            ),
        ),
        (
            "plain http from idp.example.com",
            with(
                safe(),
                "/client/token/jwks_public_endpoint",
                json!("http://idp.example.com/certs"),
            ),
        ),
    ];
    for (expected, config) in cases {
        let out = check(config.clone(), &[]).await?;
        assert_eq!(out.status.code(), Some(2), "accepted {config}");
        let err = stderr(&out);
        assert!(err.contains(expected), "{expected:?} not in {err}");
        assert!(err.contains("refusing an insecure configuration"), "{err}");
    }
    // The environment counts too, as it does for `serve`.
    let out = check(safe(), &[("TIDINGS_CLIENT_INSECURE", "true")]).await?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("client.insecure"));
    Ok(())
}

#[tokio::test]
async fn check_config_names_a_key_that_does_not_parse() -> anyhow::Result<()> {
    let out = check(
        with(safe(), "/client/token/rsa_public_key", json!("not a key")),
        &[],
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("client.token.rsa_public_key"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
