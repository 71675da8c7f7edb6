//! The subscribe request's newer fields over the raw JSON protocol: `tf` (tags
//! filter), `delta`, `flag` and `type`. What Tidings does not do is refused, never
//! ignored.

use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_config};
use tidings_testkit::{hs256_token_with_claims, Outcome, TidingsServer};

const API_KEY: &str = "subscribe-options-key";
const SECRET: &str = "subscribe-options-secret";

async fn server() -> anyhow::Result<TidingsServer> {
    let mut config = open_config(API_KEY, SECRET);
    let history = json!({
        "allow_subscribe_for_client": true,
        "allow_subscribe_for_anonymous": true,
        "allow_history_for_anonymous": true,
        "allow_history_for_subscriber": true,
        "allow_recovery": true,
        "history_size": 10,
        "history_ttl": "60s",
    });
    let with = |extra: Value| {
        let mut o = history.clone();
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        o
    };
    config["channel"]["namespaces"] = json!([
        namespace("tf", with(json!({ "allow_tags_filter": true }))),
        namespace("plain", history.clone()),
        namespace(
            "delta",
            with(
                json!({ "allowed_delta_types": ["fossil"], "force_positioning": true, "delta_publish": true })
            )
        ),
    ]);
    TidingsServer::builder().config_json(config).start().await
}

/// Publishes through the server API and fails unless it succeeded.
async fn publish(server: &TidingsServer, body: Value) -> anyhow::Result<()> {
    let (status, reply) = server.api("publish", body).await?;
    anyhow::ensure!(
        status == 200 && reply.get("error").is_none(),
        "{status} {reply}"
    );
    Ok(())
}

#[tokio::test]
async fn a_tags_filter_needs_allow_tags_filter_and_a_valid_tree() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = server.connected_client().await?;
    let filter = json!({ "key": "a", "cmp": "eq", "val": "1" });
    let code = client
        .error_code(json!({ "subscribe": { "channel": "plain:x", "tf": filter } }))
        .await?;
    assert_eq!(code, 107, "tf where allow_tags_filter is off");
    for bad in [
        json!({ "key": "a", "cmp": "eq" }),
        json!({ "key": "a", "cmp": "regex", "val": "1" }),
        json!({ "op": "not", "nodes": [] }),
        json!({ "op": "or", "nodes": vec![filter.clone(); 200] }),
    ] {
        let code = client
            .error_code(json!({ "subscribe": { "channel": "tf:x", "tf": bad } }))
            .await?;
        assert_eq!(code, 107, "malformed filter {bad}");
    }
    // The connection is still usable, and a good filter subscribes.
    client
        .subscribe_with(json!({ "channel": "tf:x", "tf": filter }))
        .await?;
    publish(
        &server,
        json!({ "channel": "tf:x", "data": {"n": 1}, "tags": {"a": "2"} }),
    )
    .await?;
    publish(
        &server,
        json!({ "channel": "tf:x", "data": {"n": 2}, "tags": {"a": "1"} }),
    )
    .await?;
    let publication = client.next_pub("tf:x").await?;
    assert_eq!(publication["data"], json!({ "n": 2 }));
    Ok(())
}

#[tokio::test]
async fn map_and_shared_poll_subscriptions_are_refused() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = server.connected_client().await?;
    // Centrifugo's answers where no namespace has the subscription type: 103 for
    // the map kinds, 108 for shared poll.
    for (kind, expected) in [(1, 103), (2, 103), (3, 103), (4, 108), (9, 103)] {
        let code = client
            .error_code(json!({ "subscribe": { "channel": "plain:m", "type": kind } }))
            .await?;
        assert_eq!(code, expected, "type {kind}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_delta_type_closes_with_3501() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = server.connected_client().await?;
    let outcome = client
        .call_or_close(json!({ "subscribe": { "channel": "delta:x", "delta": "xdelta" } }))
        .await?;
    assert!(matches!(outcome, Outcome::Closed(3501, _)), "{outcome:?}");
    Ok(())
}

#[tokio::test]
async fn delta_is_agreed_only_where_allowed_and_the_first_publication_is_full() -> anyhow::Result<()>
{
    let server = server().await?;
    let mut client = server.connected_client().await?;
    let plain = client
        .subscribe_with(json!({ "channel": "plain:d", "delta": "fossil" }))
        .await?;
    assert!(plain.get("delta").is_none(), "not allowed here: {plain}");
    let result = client
        .subscribe_with(json!({ "channel": "delta:d", "delta": "fossil" }))
        .await?;
    assert_eq!(result["delta"], json!(true), "{result}");
    let doc = |n: u64| {
        let mut o = serde_json::Map::new();
        for i in 0..100 {
            o.insert(format!("field{i}"), json!(format!("value {i}")));
        }
        o.insert("n".into(), json!(n));
        Value::Object(o)
    };
    for n in 1..=2 {
        publish(&server, json!({ "channel": "delta:d", "data": doc(n) })).await?;
    }
    let first = client.next_pub("delta:d").await?;
    let text = first["data"].as_str().expect("JSON delta data is a string");
    assert_eq!(serde_json::from_str::<Value>(text)?, doc(1));
    assert!(first.get("delta").is_none(), "{first}");
    let second = client.next_pub("delta:d").await?;
    assert_eq!(
        second["delta"],
        json!(true),
        "delta_publish marks it: {second}"
    );
    let patch = second["data"].as_str().unwrap();
    assert!(patch.len() * 10 < text.len(), "{patch}");
    // History never carries deltas or the publisher's mark.
    let history = client
        .call_result(json!({ "history": { "channel": "delta:d", "limit": 10 } }))
        .await?;
    for p in history["publications"].as_array().unwrap() {
        assert!(p.get("delta").is_none(), "{p}");
        assert!(p["data"].is_object(), "{p}");
    }
    Ok(())
}

#[tokio::test]
async fn reject_unrecovered_turns_recovered_false_into_112() -> anyhow::Result<()> {
    let server = server().await?;
    publish(&server, json!({ "channel": "plain:r", "data": {"n": 1} })).await?;
    let mut client = server.connected_client().await?;
    let ask = |flag: i64| {
        json!({ "subscribe": {
            "channel": "plain:r", "recoverable": true, "recover": true,
            "offset": 1, "epoch": "gone", "flag": flag
        } })
    };
    let code = client.error_code(ask(3)).await?;
    assert_eq!(code, 112);
    // Without the flag the same subscribe succeeds with recovered: false.
    let result = client.call_result(ask(1)).await?;
    assert!(result.get("recovered").is_none(), "{result}");
    assert_eq!(result["was_recovering"], json!(true));
    Ok(())
}

#[tokio::test]
async fn a_map_publication_is_refused_with_108() -> anyhow::Result<()> {
    let server = server().await?;
    let mut client = server.connected_client().await?;
    let code = client
        .error_code(json!({ "publish": {
            "channel": "plain:p", "data": {"n": 1}, "type": 1, "key": "k"
        } }))
        .await?;
    assert_eq!(code, 108);
    // Nothing was published.
    let history = server
        .api("history", json!({ "channel": "plain:p", "limit": 10 }))
        .await?
        .1;
    let kept = history["result"]["publications"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(kept, 0, "{history}");
    Ok(())
}

#[tokio::test]
async fn a_server_side_subscription_takes_delta_from_the_connect_subs() -> anyhow::Result<()> {
    let server = server().await?;
    let token =
        hs256_token_with_claims(SECRET, &json!({ "sub": "u1", "channels": ["delta:srv"] }))?;
    let mut client = server.client().await?;
    let result = client
        .connect(json!({ "token": token, "subs": { "delta:srv": { "delta": "fossil" } } }))
        .await?;
    assert_eq!(
        result["subs"]["delta:srv"]["delta"],
        json!(true),
        "{result}"
    );
    // A server-side subscription goes live just after the connect reply is
    // queued; publications that come before that are buffered and sent whole.
    // Commands are handled in order, so a reply to a later one means it is live.
    client
        .call(json!({ "history": { "channel": "delta:srv", "limit": 0 } }))
        .await?;
    let doc = |n: u64| {
        let mut o = serde_json::Map::new();
        for i in 0..100 {
            o.insert(format!("field{i}"), json!(format!("value {i}")));
        }
        o.insert("n".into(), json!(n));
        Value::Object(o)
    };
    for n in 1..=2 {
        publish(&server, json!({ "channel": "delta:srv", "data": doc(n) })).await?;
    }
    let first = client.next_pub("delta:srv").await?;
    assert!(first["data"].is_string(), "{first}");
    let second = client.next_pub("delta:srv").await?;
    assert_eq!(second["delta"], json!(true), "{second}");
    Ok(())
}
