//! Connection tokens over a real WebSocket: every algorithm family, keys from a JWKS
//! endpoint, every kind of bad token refused with 3500 (expired: 109) without
//! leaving a subscription or a presence entry, refresh, and expiry (3005).

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use tidings_testkit::keys::{raw_token, TestKey};
use tidings_testkit::profile::open_config;
use tidings_testkit::stub::JsonStub;
use tidings_testkit::{hs256_token_with_claims, unix_now, Outcome, TidingsServer, WsClient};

const API_KEY: &str = "auth-test-key";
const SECRET: &str = "auth-test-secret-which-is-long-enough";

/// The open profile with these `client.token` settings.
async fn server_with_token(token: Value) -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    config["client"]["token"] = token;
    TidingsServer::builder().config_json(config).start().await
}

/// Connects with `token` and returns the user the server sees (from presence).
async fn user_seen(server: &TidingsServer, token: &str) -> anyhow::Result<String> {
    let mut client = server.connected_client_with_token(token).await?;
    let channel = format!("who-{}", client.client_id().unwrap_or_default());
    client.subscribe(&channel).await?;
    let presence = client
        .call_result(json!({ "presence": { "channel": channel } }))
        .await?;
    let id = client.client_id().unwrap_or_default().to_owned();
    Ok(presence["presence"][&id]["user"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Sends `connect` with `token` and returns how it ended.
async fn try_connect(server: &TidingsServer, token: &str) -> anyhow::Result<Outcome> {
    let mut client = server.client().await?;
    client
        .call_or_close(json!({ "connect": { "token": token } }))
        .await
}

fn claims(user: &str) -> Value {
    json!({ "sub": user, "exp": unix_now() + 300 })
}

#[tokio::test]
async fn each_configured_key_admits_tokens_of_its_algorithms() -> anyhow::Result<()> {
    let rsa = TestKey::rsa("r")?;
    let ec = TestKey::p256("e")?;
    let ed = TestKey::ed25519("d")?;
    let server = server_with_token(json!({
        "hmac_secret_key": SECRET,
        "rsa_public_key": rsa.public_pem,
        "ecdsa_public_key": ec.public_pem,
        "ed25519_public_key": ed.public_pem,
    }))
    .await?;
    let mut tokens = vec![
        ("RS256", rsa.sign_as(Algorithm::RS256, &claims("rs256"))?),
        ("RS384", rsa.sign_as(Algorithm::RS384, &claims("rs384"))?),
        ("RS512", rsa.sign_as(Algorithm::RS512, &claims("rs512"))?),
        ("ES256", ec.sign(&claims("es256"))?),
        ("EdDSA", ed.sign(&claims("eddsa"))?),
    ];
    for (name, alg) in [
        ("HS256", Algorithm::HS256),
        ("HS384", Algorithm::HS384),
        ("HS512", Algorithm::HS512),
    ] {
        let token = jsonwebtoken::encode(
            &Header::new(alg),
            &claims(&name.to_lowercase()),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )?;
        tokens.push((name, token));
    }
    for (name, token) in tokens {
        assert_eq!(
            user_seen(&server, &token).await?,
            name.to_lowercase(),
            "{name}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn ecdsa_p384_key_admits_es384() -> anyhow::Result<()> {
    let ec = TestKey::p384("e")?;
    let server = server_with_token(json!({ "ecdsa_public_key": ec.public_pem })).await?;
    assert_eq!(
        user_seen(&server, &ec.sign(&claims("p384"))?).await?,
        "p384"
    );
    Ok(())
}

/// Channels and presence as the server API reports them.
async fn trace_of(server: &TidingsServer, channel: &str) -> anyhow::Result<(bool, usize)> {
    let channels = server.api_ok("channels", json!({})).await?;
    let listed = channels["channels"].get(channel).is_some();
    let presence = server
        .api_ok("presence", json!({ "channel": channel }))
        .await?;
    let entries = presence["presence"].as_object().map_or(0, |m| m.len());
    Ok((listed, entries))
}

#[tokio::test]
async fn bad_tokens_close_with_3500_and_leave_no_subscription_or_presence() -> anyhow::Result<()> {
    let rsa = TestKey::rsa("r")?;
    let ec = TestKey::p256("e")?;
    let server = server_with_token(json!({
        "rsa_public_key": rsa.public_pem,
        "audience": "tidings",
        "issuer": "https://backend.test",
    }))
    .await?;
    let channel = "trace";
    // Every token asks for a server-side subscription with presence: a token that got
    // through would show up in the API's channel list and presence.
    let good = json!({
        "sub": "mallory",
        "exp": unix_now() + 300,
        "aud": "tidings",
        "iss": "https://backend.test",
        "channels": [channel],
    });
    let with = |changes: Value| {
        let mut c = good.clone();
        for (k, v) in changes.as_object().into_iter().flatten() {
            if v.is_null() {
                c.as_object_mut().map(|m| m.remove(k));
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let valid = rsa.sign(&good)?;
    let mut tampered: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let mut sig = tampered[2].clone().into_bytes();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    tampered[2] = String::from_utf8(sig)?;
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            raw_token(&json!({ "alg": "none" }), &good, None),
        ),
        (
            "RSA public key as HMAC secret",
            raw_token(
                &json!({ "alg": "HS256", "typ": "JWT" }),
                &good,
                Some(rsa.public_pem.as_bytes()),
            ),
        ),
        ("algorithm not configured (ES256)", ec.sign(&good)?),
        ("bad signature", tampered.join(".")),
        (
            "nbf in the future",
            rsa.sign(&with(json!({ "nbf": unix_now() + 600 })))?,
        ),
        (
            "wrong aud",
            rsa.sign(&with(json!({ "aud": "another-service" })))?,
        ),
        ("no aud", rsa.sign(&with(json!({ "aud": null })))?),
        (
            "wrong iss",
            rsa.sign(&with(json!({ "iss": "https://evil.test" })))?,
        ),
        (
            "subscription token as connection token",
            rsa.sign(&with(json!({ "channel": "$x" })))?,
        ),
        ("not a JWT", "definitely.not.ajwt".to_owned()),
    ];
    for (case, token) in cases {
        match try_connect(&server, &token).await? {
            Outcome::Closed(code, _) => assert_eq!(code, 3500, "{case}"),
            Outcome::Reply(reply) => panic!("{case}: connected or answered: {reply}"),
        }
        assert_eq!(trace_of(&server, channel).await?, (false, 0), "{case}");
    }

    // An expired token gets error 109, the SDK's cue to fetch a new token; the
    // connection stays unconnected and nothing is subscribed.
    let mut client = server.client().await?;
    let expired = rsa.sign(&with(json!({ "exp": unix_now() - 5 })))?;
    let reply = client
        .call(json!({ "connect": { "token": expired } }))
        .await?;
    assert_eq!(reply["error"]["code"], json!(109), "{reply}");
    assert_eq!(trace_of(&server, channel).await?, (false, 0), "expired");
    // So does an `exp` before 1970, negative numbers included: they are as
    // expired as `exp: 1`, not malformed.
    for exp in [json!(-1), json!(-1000), json!(0), json!(1)] {
        let mut other = server.client().await?;
        let token = rsa.sign(&with(json!({ "exp": exp })))?;
        let reply = other.call(json!({ "connect": { "token": token } })).await?;
        assert_eq!(reply["error"]["code"], json!(109), "exp {exp}: {reply}");
    }
    assert_eq!(trace_of(&server, channel).await?, (false, 0), "exp < 0");
    match client
        .call_or_close(json!({ "subscribe": { "channel": channel } }))
        .await?
    {
        Outcome::Closed(code, _) => assert_eq!(code, 3501, "not connected"),
        Outcome::Reply(reply) => panic!("expired token allowed a command: {reply}"),
    }

    // The control: the same token, correctly signed, does subscribe and appear.
    let _mallory = server.connected_client_with_token(&valid).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while trace_of(&server, channel).await? != (true, 1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the valid token left no trace"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn jwks_keys_admit_rsa_ec_and_eddsa_and_token_urls_are_never_fetched() -> anyhow::Result<()> {
    let rsa = TestKey::rsa("rsa-key")?;
    let ec = TestKey::p256("ec-key")?;
    let ed = TestKey::ed25519("okp-key")?;
    let endpoint = JsonStub::start(&TestKey::jwks(&[&rsa, &ec, &ed])).await?;
    let attacker = TestKey::p256("attacker")?;
    let trap = JsonStub::start(&TestKey::jwks(&[&attacker])).await?;
    let server = server_with_token(json!({ "jwks_public_endpoint": endpoint.url() })).await?;

    for (key, user) in [(&rsa, "r"), (&ec, "e"), (&ed, "d")] {
        assert_eq!(user_seen(&server, &key.sign(&claims(user))?).await?, user);
    }
    assert_eq!(endpoint.hits(), 1, "keys are cached by kid");

    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("attacker".into());
    header.jku = Some(trap.url().to_owned());
    header.x5u = Some(trap.url().to_owned());
    let token = attacker.sign_with_header(&header, &claims("admin"))?;
    match try_connect(&server, &token).await? {
        Outcome::Closed(code, _) => assert_eq!(code, 3500),
        Outcome::Reply(reply) => panic!("token with jku connected: {reply}"),
    }
    assert_eq!(trap.hits(), 0, "a URL from the token header was fetched");
    // HS256 is never available through JWKS, even keyed with a published key.
    let hs = raw_token(
        &json!({ "alg": "HS256", "kid": "rsa-key" }),
        &claims("admin"),
        Some(rsa.public_pem.as_bytes()),
    );
    match try_connect(&server, &hs).await? {
        Outcome::Closed(code, _) => assert_eq!(code, 3500),
        Outcome::Reply(reply) => panic!("HS256 via JWKS connected: {reply}"),
    }
    Ok(())
}

#[tokio::test]
async fn refresh_must_be_valid_and_for_the_same_user() -> anyhow::Result<()> {
    let server = server_with_token(json!({ "hmac_secret_key": SECRET })).await?;
    let token = |c: Value| hs256_token_with_claims(SECRET, &c);

    let mut alice = server
        .connected_client_with_token(&token(claims("alice"))?)
        .await?;
    let result = alice
        .call_result(json!({ "refresh": { "token": token(json!({ "sub": "alice", "exp": unix_now() + 900 }))? } }))
        .await?;
    assert_eq!(result["expires"], json!(true));
    assert!(result["ttl"].as_u64().unwrap_or(0) > 300, "{result}");

    for (case, refresh, expected) in [
        ("another user", token(claims("bob"))?, 3500),
        (
            "bad signature",
            hs256_token_with_claims("some-other-secret", &claims("alice"))?,
            3500,
        ),
        (
            "expired",
            token(json!({ "sub": "alice", "exp": unix_now() - 5 }))?,
            3005,
        ),
    ] {
        let mut client = server
            .connected_client_with_token(&token(claims("alice"))?)
            .await?;
        match client
            .call_or_close(json!({ "refresh": { "token": refresh } }))
            .await?
        {
            Outcome::Closed(code, _) => assert_eq!(code, expected, "{case}"),
            Outcome::Reply(reply) => panic!("{case}: refresh answered {reply}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn connection_that_does_not_refresh_in_time_is_closed_with_3005() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    config["client"]["expired_close_delay"] = json!("0s");
    let server = TidingsServer::builder().config_json(config).start().await?;
    let short = |user: &str| {
        hs256_token_with_claims(SECRET, &json!({ "sub": user, "exp": unix_now() + 2 }))
    };
    let mut lazy = server.connected_client_with_token(&short("lazy")?).await?;
    let mut diligent = server
        .connected_client_with_token(&short("diligent")?)
        .await?;
    let ttl = diligent.connect_result().map(|r| r["ttl"].clone());
    assert!(
        matches!(ttl, Some(Value::Number(ref n)) if n.as_u64().is_some_and(|t| t <= 2)),
        "ttl {ttl:?}"
    );
    let fresh = hs256_token_with_claims(
        SECRET,
        &json!({ "sub": "diligent", "exp": unix_now() + 600 }),
    )?;
    diligent
        .call_result(json!({ "refresh": { "token": fresh } }))
        .await?;

    let (code, reason) = lazy.expect_close_within(Duration::from_secs(8)).await?;
    assert_eq!((code, reason.as_str()), (3005, "connection expired"));
    // The refreshed connection outlived the lazy one's deadline and still answers.
    diligent.call_result(json!({ "ping": {} })).await?;
    assert!(diligent.close_status().is_none());
    Ok(())
}

#[tokio::test]
async fn expire_at_zero_keeps_the_connection_past_exp() -> anyhow::Result<()> {
    let server = server_with_token(json!({ "hmac_secret_key": SECRET })).await?;
    let token = hs256_token_with_claims(
        SECRET,
        &json!({ "sub": "u", "exp": unix_now() + 60, "expire_at": 0 }),
    )?;
    let mut client = WsClient::open(&server.ws_url()).await?;
    let result = client.connect(json!({ "token": token })).await?;
    assert!(
        result.get("expires").is_none_or(|e| e == &json!(false)),
        "{result}"
    );
    Ok(())
}
