//! Subscription tokens over a real WebSocket: `$` channels need one, a token admits
//! to any channel on its own, it must name this channel and this user, its claims
//! reach presence and the subscribe result, `sub_refresh` renews it, and an
//! unrenewed subscription is unsubscribed with 2501.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_config};
use tidings_testkit::{hs256_token, hs256_token_with_claims, unix_now, Outcome, TidingsServer};

const API_KEY: &str = "subtoken-test-key";
const SECRET: &str = "subtoken-test-secret-long-enough-to-use";

async fn server() -> anyhow::Result<TidingsServer> {
    server_with(|_| {}).await
}

/// The open profile plus a namespace nobody may subscribe to without a token.
async fn server_with(change: impl FnOnce(&mut Value)) -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["namespaces"] = json!([namespace(
        "locked",
        json!({ "presence": true, "join_leave": true })
    )]);
    change(&mut config);
    TidingsServer::builder().config_json(config).start().await
}

fn sub_token(user: &str, channel: &str, extra: Value) -> anyhow::Result<String> {
    let mut claims = json!({ "sub": user, "channel": channel, "exp": unix_now() + 300 });
    for (k, v) in extra.as_object().into_iter().flatten() {
        claims[k] = v.clone();
    }
    hs256_token_with_claims(SECRET, &claims)
}

/// Presence of `channel` once `ready` holds for it (entries are added just after the
/// subscribe reply), failing after a deadline.
async fn presence_when(
    server: &TidingsServer,
    channel: &str,
    ready: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let presence = server
            .api_ok("presence", json!({ "channel": channel }))
            .await?;
        if ready(&presence) {
            return Ok(presence);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "presence of {channel} never got ready: {presence}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn user(server: &TidingsServer, name: &str) -> anyhow::Result<tidings_testkit::WsClient> {
    server
        .connected_client_with_token(&hs256_token(SECRET, name, None)?)
        .await
}

#[tokio::test]
async fn private_channel_needs_a_subscription_token() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    // `$` channels are closed without a token even where everyone may subscribe.
    let code = alice
        .error_code(json!({ "subscribe": { "channel": "$alice-inbox" } }))
        .await?;
    assert_eq!(code, 103);
    let token = sub_token("alice", "$alice-inbox", json!({}))?;
    let result = alice
        .subscribe_with(json!({ "channel": "$alice-inbox", "token": token }))
        .await?;
    assert_eq!(result["expires"], json!(true), "{result}");
    let ttl = result["ttl"].as_u64().unwrap_or(0);
    assert!((1..=300).contains(&ttl), "{result}");
    server.publish("$alice-inbox", json!({ "n": 1 })).await?;
    assert_eq!(
        alice.next_pub("$alice-inbox").await?["data"],
        json!({ "n": 1 })
    );
    Ok(())
}

#[tokio::test]
async fn a_token_admits_to_a_channel_the_namespace_keeps_closed() -> anyhow::Result<()> {
    let server = server().await?;
    let mut anonymous = server.connected_client().await?;
    let code = anonymous
        .error_code(json!({ "subscribe": { "channel": "locked:room" } }))
        .await?;
    assert_eq!(code, 103);
    // An anonymous connection takes a token issued for the anonymous user (no sub).
    let token = hs256_token_with_claims(SECRET, &json!({ "channel": "locked:room" }))?;
    anonymous
        .subscribe_with(json!({ "channel": "locked:room", "token": token }))
        .await?;
    Ok(())
}

#[tokio::test]
async fn token_for_another_channel_user_or_client_closes_with_3500() -> anyhow::Result<()> {
    let server = server().await?;
    let cases = [
        (
            "another channel",
            "$room-a",
            sub_token("alice", "$room-b", json!({}))?,
        ),
        (
            "another user",
            "$room-a",
            sub_token("bob", "$room-a", json!({}))?,
        ),
        (
            "another client",
            "$room-a",
            sub_token("alice", "$room-a", json!({ "client": "someone-else" }))?,
        ),
    ];
    for (case, channel, token) in cases {
        let mut alice = user(&server, "alice").await?;
        match alice
            .call_or_close(json!({ "subscribe": { "channel": channel, "token": token } }))
            .await?
        {
            Outcome::Closed(code, _) => assert_eq!(code, 3500, "{case}"),
            Outcome::Reply(reply) => panic!("{case}: {reply}"),
        }
    }
    // A `client` claim naming this very connection is accepted.
    let mut alice = user(&server, "alice").await?;
    let me = alice.client_id().unwrap_or_default().to_owned();
    let token = sub_token("alice", "$room-a", json!({ "client": me }))?;
    alice
        .subscribe_with(json!({ "channel": "$room-a", "token": token }))
        .await?;
    Ok(())
}

#[tokio::test]
async fn invalid_token_is_103_and_expired_token_is_109() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    let forged = hs256_token_with_claims(
        "not-the-secret",
        &json!({ "sub": "alice", "channel": "$vault" }),
    )?;
    let code = alice
        .error_code(json!({ "subscribe": { "channel": "$vault", "token": forged } }))
        .await?;
    assert_eq!(code, 103);
    let expired = sub_token("alice", "$vault", json!({ "exp": unix_now() - 5 }))?;
    let code = alice
        .error_code(json!({ "subscribe": { "channel": "$vault", "token": expired } }))
        .await?;
    assert_eq!(code, 109);
    // An `exp` before 1970 (negative) is expired too, not malformed.
    for exp in [json!(-1), json!(-1000), json!(0)] {
        let expired = sub_token("alice", "$vault", json!({ "exp": exp }))?;
        let code = alice
            .error_code(json!({ "subscribe": { "channel": "$vault", "token": expired } }))
            .await?;
        assert_eq!(code, 109, "exp {exp}");
    }
    let future = sub_token("alice", "$vault", json!({ "nbf": unix_now() + 600 }))?;
    let code = alice
        .error_code(json!({ "subscribe": { "channel": "$vault", "token": future } }))
        .await?;
    assert_eq!(code, 103);
    // None of it subscribed anything, and the connection is still usable.
    let channels = server.api_ok("channels", json!({})).await?;
    assert!(channels["channels"].get("$vault").is_none(), "{channels}");
    alice.call_result(json!({ "ping": {} })).await?;
    Ok(())
}

#[tokio::test]
async fn token_info_reaches_presence_and_data_the_subscribe_result() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    let token = sub_token(
        "alice",
        "locked:stage",
        json!({ "info": { "role": "speaker" }, "data": { "welcome": true } }),
    )?;
    let result = alice
        .subscribe_with(json!({ "channel": "locked:stage", "token": token }))
        .await?;
    assert_eq!(result["data"], json!({ "welcome": true }), "{result}");
    let id = alice.client_id().unwrap_or_default().to_owned();
    let presence = presence_when(&server, "locked:stage", |p| {
        p["presence"].get(&id).is_some()
    })
    .await?;
    assert_eq!(
        presence["presence"][&id]["chan_info"],
        json!({ "role": "speaker" }),
        "{presence}"
    );
    Ok(())
}

#[tokio::test]
async fn override_switches_presence_off_for_one_subscriber() -> anyhow::Result<()> {
    let server = server().await?;
    let mut shy = user(&server, "shy").await?;
    let mut open = user(&server, "open").await?;
    let quiet = sub_token(
        "shy",
        "locked:hall",
        json!({ "override": { "presence": { "value": false } } }),
    )?;
    shy.subscribe_with(json!({ "channel": "locked:hall", "token": quiet }))
        .await?;
    let loud = sub_token("open", "locked:hall", json!({}))?;
    open.subscribe_with(json!({ "channel": "locked:hall", "token": loud }))
        .await?;
    let presence = presence_when(&server, "locked:hall", |p| {
        p["presence"]
            .as_object()
            .is_some_and(|m| m.values().any(|e| e["user"] == json!("open")))
    })
    .await?;
    let users: Vec<&str> = presence["presence"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|e| e["user"].as_str())
        .collect();
    assert_eq!(users, vec!["open"], "{presence}");
    Ok(())
}

#[tokio::test]
async fn sub_refresh_renews_and_an_unrenewed_subscription_gets_2501() -> anyhow::Result<()> {
    let server = server_with(|c| c["client"]["expired_sub_close_delay"] = json!("0s")).await?;
    let mut alice = user(&server, "alice").await?;
    let short = |channel: &str| sub_token("alice", channel, json!({ "exp": unix_now() + 2 }));
    alice
        .subscribe_with(json!({ "channel": "$kept", "token": short("$kept")? }))
        .await?;
    alice
        .subscribe_with(json!({ "channel": "$lapsed", "token": short("$lapsed")? }))
        .await?;
    let renewed = sub_token("alice", "$kept", json!({ "exp": unix_now() + 600 }))?;
    let result = alice
        .call_result(json!({ "sub_refresh": { "channel": "$kept", "token": renewed } }))
        .await?;
    assert_eq!(result["expires"], json!(true), "{result}");
    assert!(result["ttl"].as_u64().unwrap_or(0) > 300, "{result}");

    alice.set_wait(Duration::from_secs(8));
    let push = alice.next_push_of("unsubscribe", "$lapsed").await?;
    assert_eq!(push["unsubscribe"]["code"], json!(2501), "{push}");
    // The renewed subscription outlived the other's deadline.
    server.publish("$kept", json!("still here")).await?;
    assert_eq!(alice.next_pub("$kept").await?["data"], json!("still here"));
    let channels = server.api_ok("channels", json!({})).await?;
    assert!(channels["channels"].get("$lapsed").is_none(), "{channels}");
    Ok(())
}

#[tokio::test]
async fn sub_refresh_is_checked_like_a_subscribe() -> anyhow::Result<()> {
    let server = server().await?;
    let mut alice = user(&server, "alice").await?;
    let token = sub_token("alice", "$box", json!({}))?;
    let code = alice
        .error_code(json!({ "sub_refresh": { "channel": "$box", "token": token } }))
        .await?;
    assert_eq!(code, 103, "not subscribed");
    alice
        .subscribe_with(json!({ "channel": "$box", "token": token }))
        .await?;
    let code = alice
        .error_code(json!({ "sub_refresh": { "channel": "$box", "token": "" } }))
        .await?;
    assert_eq!(code, 107, "no token");
    let expired = sub_token("alice", "$box", json!({ "exp": unix_now() - 5 }))?;
    let code = alice
        .error_code(json!({ "sub_refresh": { "channel": "$box", "token": expired } }))
        .await?;
    assert_eq!(code, 109, "expired token");
    let other = sub_token("alice", "$other", json!({}))?;
    match alice
        .call_or_close(json!({ "sub_refresh": { "channel": "$box", "token": other } }))
        .await?
    {
        Outcome::Closed(code, _) => assert_eq!(code, 3500),
        Outcome::Reply(reply) => panic!("token for another channel: {reply}"),
    }
    Ok(())
}

#[tokio::test]
async fn separate_subscription_token_settings_replace_the_connection_ones() -> anyhow::Result<()> {
    const SUB_SECRET: &str = "a-different-secret-for-subscriptions-only";
    let server = server_with(|c| {
        c["client"]["subscription_token"] =
            json!({ "enabled": true, "hmac_secret_key": SUB_SECRET });
    })
    .await?;
    let mut alice = user(&server, "alice").await?;
    let with_connection_secret = sub_token("alice", "$pay", json!({}))?;
    let code = alice
        .error_code(json!({ "subscribe": { "channel": "$pay", "token": with_connection_secret } }))
        .await?;
    assert_eq!(code, 103);
    let with_sub_secret =
        hs256_token_with_claims(SUB_SECRET, &json!({ "sub": "alice", "channel": "$pay" }))?;
    alice
        .subscribe_with(json!({ "channel": "$pay", "token": with_sub_secret }))
        .await?;
    Ok(())
}
