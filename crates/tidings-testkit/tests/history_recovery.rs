//! `history` with limit/since/reverse, and recovery on subscribe: exact
//! missed publications, `recovered: false` when that cannot be promised, and
//! no loss or duplicates when publications race a subscribe.

use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::profile::{namespace, open_channel_options, open_config};
use tidings_testkit::{TidingsServer, WsClient};
use tokio::sync::watch;

const API_KEY: &str = "history-test-key";
const SECRET: &str = "history-test-secret";

fn offset(v: &Value) -> u64 {
    v["offset"].as_u64().unwrap_or(0)
}

fn offsets(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .map(|list| list.iter().map(offset).collect())
        .unwrap_or_default()
}

/// Protocol booleans are left out when false.
fn flag(v: &Value, key: &str) -> bool {
    v[key].as_bool().unwrap_or(false)
}

fn epoch(v: &Value) -> String {
    v["epoch"].as_str().unwrap_or_default().to_owned()
}

async fn publish_numbered(
    server: &TidingsServer,
    channel: &str,
    range: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<()> {
    for n in range {
        server.publish(channel, json!({ "n": n })).await?;
    }
    Ok(())
}

/// Subscribes on a fresh connection, asking to recover from `offset`/`epoch`.
async fn recover(
    server: &TidingsServer,
    channel: &str,
    offset: u64,
    epoch: &str,
) -> anyhow::Result<(WsClient, Value)> {
    let mut client = server.connected_client().await?;
    let result = client
        .subscribe_with(json!({
            "channel": channel, "recover": true, "offset": offset, "epoch": epoch
        }))
        .await?;
    Ok((client, result))
}

#[tokio::test]
async fn history_honours_limit_since_and_reverse() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    publish_numbered(&server, "log", 1..=10).await?;
    let mut client = server.connected_client().await?;
    client.subscribe("log").await?;
    let history = |params: Value| {
        let mut request = json!({ "channel": "log" });
        if let (Some(r), Some(p)) = (request.as_object_mut(), params.as_object()) {
            r.extend(p.clone());
        }
        request
    };

    let first = client
        .call_result(json!({ "history": history(json!({ "limit": 3 })) }))
        .await?;
    assert_eq!(offsets(&first["publications"]), vec![1, 2, 3], "{first}");
    assert_eq!(
        first["publications"][0]["data"],
        json!({ "n": 1 }),
        "{first}"
    );
    assert_eq!(offset(&first), 10, "top offset in {first}");
    let stream_epoch = epoch(&first);
    assert!(!stream_epoch.is_empty(), "epoch in {first}");

    let last = client
        .call_result(json!({ "history": history(json!({ "limit": 3, "reverse": true })) }))
        .await?;
    assert_eq!(offsets(&last["publications"]), vec![10, 9, 8], "{last}");

    let after = client
        .call_result(json!({ "history": history(json!({
            "limit": 3, "since": { "offset": 4, "epoch": stream_epoch }
        })) }))
        .await?;
    assert_eq!(offsets(&after["publications"]), vec![5, 6, 7], "{after}");

    let before = client
        .call_result(json!({ "history": history(json!({
            "limit": 3, "reverse": true, "since": { "offset": 8, "epoch": stream_epoch }
        })) }))
        .await?;
    assert_eq!(offsets(&before["publications"]), vec![7, 6, 5], "{before}");

    let all = client
        .call_result(json!({ "history": history(json!({ "limit": -1 })) }))
        .await?;
    assert_eq!(
        offsets(&all["publications"]),
        (1..=10).collect::<Vec<_>>(),
        "{all}"
    );

    let position = client
        .call_result(json!({ "history": history(json!({ "limit": 0 })) }))
        .await?;
    assert!(offsets(&position["publications"]).is_empty(), "{position}");
    assert_eq!(offset(&position), 10, "{position}");
    assert_eq!(epoch(&position), stream_epoch, "{position}");
    Ok(())
}

#[tokio::test]
async fn history_since_another_epoch_returns_112() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    publish_numbered(&server, "log", 1..=3).await?;
    let mut client = server.connected_client().await?;
    client.subscribe("log").await?;
    let code = client
        .error_code(json!({ "history": {
            "channel": "log", "limit": 10, "since": { "offset": 1, "epoch": "not-this-one" }
        } }))
        .await?;
    assert_eq!(code, 112);
    Ok(())
}

#[tokio::test]
async fn history_requires_subscription_returns_103() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    let code = client
        .error_code(json!({ "history": { "channel": "private-log", "limit": 1 } }))
        .await?;
    assert_eq!(code, 103);
    Ok(())
}

#[tokio::test]
async fn history_in_channel_without_history_returns_108() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    config["channel"]["namespaces"] = json!([namespace(
        "live",
        json!({
            "allow_subscribe_for_client": true,
            "allow_subscribe_for_anonymous": true,
            "allow_history_for_subscriber": true,
            "allow_history_for_anonymous": true
        })
    )]);
    let server = TidingsServer::builder().config_json(config).start().await?;
    let mut client = server.connected_client().await?;
    client.subscribe("live:feed").await?;
    let code = client
        .error_code(json!({ "history": { "channel": "live:feed", "limit": 1 } }))
        .await?;
    assert_eq!(code, 108);
    Ok(())
}

#[tokio::test]
async fn subscribe_to_a_fresh_recoverable_channel_reports_its_epoch() -> anyhow::Result<()> {
    // A client that subscribes before anything was published must still get
    // the stream's epoch, or it cannot tell later whether the stream changed.
    let server = TidingsServer::start().await?;
    let mut client = server.connected_client().await?;
    let position = client.subscribe("fresh").await?;
    assert!(flag(&position, "recoverable"), "{position}");
    let subscribed_epoch = epoch(&position);
    assert!(!subscribed_epoch.is_empty(), "no epoch in {position}");
    let published = server.publish("fresh", json!(1)).await?;
    assert_eq!(epoch(&published), subscribed_epoch, "{published}");
    Ok(())
}

#[tokio::test]
async fn subscribe_with_recover_returns_missed_publications_in_order() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let mut first = server.connected_client().await?;
    let position = first.subscribe("room").await?;
    assert_eq!(offset(&position), 0, "{position}");
    first.close().await?;

    let stream_epoch = epoch(&server.publish("room", json!({ "n": 1 })).await?);
    publish_numbered(&server, "room", 2..=5).await?;

    let (mut client, result) = recover(&server, "room", 0, &stream_epoch).await?;
    assert!(flag(&result, "recovered"), "{result}");
    assert!(flag(&result, "was_recovering"), "{result}");
    assert_eq!(
        offsets(&result["publications"]),
        vec![1, 2, 3, 4, 5],
        "{result}"
    );
    let data: Vec<&Value> = result["publications"]
        .as_array()
        .map(|l| l.iter().map(|p| &p["data"]["n"]).collect())
        .unwrap_or_default();
    assert_eq!(
        data,
        vec![&json!(1), &json!(2), &json!(3), &json!(4), &json!(5)]
    );
    assert_eq!(offset(&result), 5, "{result}");
    assert_eq!(epoch(&result), stream_epoch, "{result}");

    // Live publications continue right after the recovered ones.
    server.publish("room", json!({ "n": 6 })).await?;
    assert_eq!(offset(&client.next_pub("room").await?), 6);

    // Recovering from the middle returns only what is after that point.
    let (_client, result) = recover(&server, "room", 3, &stream_epoch).await?;
    assert!(flag(&result, "recovered"), "{result}");
    assert_eq!(offsets(&result["publications"]), vec![4, 5, 6], "{result}");
    Ok(())
}

#[tokio::test]
async fn recover_from_top_is_recovered_with_nothing_missed() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    let top = server.publish("calm", json!(1)).await?;
    let (_client, result) = recover(&server, "calm", offset(&top), &epoch(&top)).await?;
    assert!(flag(&result, "recovered"), "{result}");
    assert!(offsets(&result["publications"]).is_empty(), "{result}");
    Ok(())
}

#[tokio::test]
async fn recover_with_another_epoch_reports_not_recovered() -> anyhow::Result<()> {
    let server = TidingsServer::start().await?;
    publish_numbered(&server, "room", 1..=3).await?;
    let (_client, result) = recover(&server, "room", 1, "some-old-epoch").await?;
    assert!(!flag(&result, "recovered"), "{result}");
    assert!(flag(&result, "was_recovering"), "{result}");
    assert_eq!(offset(&result), 3, "current top in {result}");
    assert_ne!(epoch(&result), "some-old-epoch");
    Ok(())
}

#[tokio::test]
async fn recover_when_missed_publications_are_gone_reports_not_recovered() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    let mut short = open_channel_options();
    short["history_size"] = json!(3);
    config["channel"]["namespaces"] = json!([namespace("short", short)]);
    let server = TidingsServer::builder().config_json(config).start().await?;

    let top = server.publish("short:feed", json!({ "n": 1 })).await?;
    let stream_epoch = epoch(&top);
    publish_numbered(&server, "short:feed", 2..=10).await?;

    let history = server
        .api_ok("history", json!({ "channel": "short:feed", "limit": -1 }))
        .await?;
    assert_eq!(
        offsets(&history["publications"]),
        vec![8, 9, 10],
        "{history}"
    );

    let (_client, result) = recover(&server, "short:feed", 1, &stream_epoch).await?;
    assert!(!flag(&result, "recovered"), "{result}");
    assert_eq!(offset(&result), 10, "{result}");

    // Still recoverable when everything missed is within the window.
    let (_client, result) = recover(&server, "short:feed", 7, &stream_epoch).await?;
    assert!(flag(&result, "recovered"), "{result}");
    assert_eq!(offsets(&result["publications"]), vec![8, 9, 10], "{result}");
    Ok(())
}

#[tokio::test]
async fn publications_expire_after_history_ttl() -> anyhow::Result<()> {
    let mut config = open_config(API_KEY, SECRET);
    let mut brief = open_channel_options();
    brief["history_ttl"] = json!("1s");
    config["channel"]["namespaces"] = json!([namespace("brief", brief)]);
    let server = TidingsServer::builder().config_json(config).start().await?;

    let top = server.publish("brief:feed", json!({ "n": 1 })).await?;
    let stream_epoch = epoch(&top);
    server.publish("brief:feed", json!({ "n": 2 })).await?;

    // Poll until the publications are gone, well past the TTL at the latest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let history = server
            .api_ok("history", json!({ "channel": "brief:feed", "limit": -1 }))
            .await?;
        if offsets(&history["publications"]).is_empty() {
            assert_eq!(
                offset(&history),
                2,
                "the position outlives the data: {history}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publications outlived history_ttl: {history}"
        );
    }
    let (_client, result) = recover(&server, "brief:feed", 0, &stream_epoch).await?;
    assert!(!flag(&result, "recovered"), "{result}");
    Ok(())
}

#[tokio::test]
async fn recover_more_than_max_publication_limit_reports_not_recovered() -> anyhow::Result<()> {
    let server = TidingsServer::builder()
        .env("TIDINGS_CLIENT_RECOVERY_MAX_PUBLICATION_LIMIT", "5")
        .start()
        .await?;
    let top = server.publish("busy", json!({ "n": 1 })).await?;
    let stream_epoch = epoch(&top);
    publish_numbered(&server, "busy", 2..=7).await?;

    // Six missed (2..=7) is over the limit of five.
    let (_client, result) = recover(&server, "busy", 1, &stream_epoch).await?;
    assert!(!flag(&result, "recovered"), "{result}");

    // Exactly five missed (3..=7) is within it.
    let (_client, result) = recover(&server, "busy", 2, &stream_epoch).await?;
    assert!(flag(&result, "recovered"), "{result}");
    assert_eq!(
        offsets(&result["publications"]),
        vec![3, 4, 5, 6, 7],
        "{result}"
    );
    Ok(())
}

/// Reads publications until `last`, checking that offsets continue from
/// `after` with no gap and no repeat, and that data matches the offset.
async fn expect_contiguous(
    client: &mut WsClient,
    channel: &str,
    after: u64,
    last: u64,
) -> anyhow::Result<()> {
    let mut expected = after + 1;
    while expected <= last {
        let publication = client.next_pub(channel).await?;
        assert_eq!(
            offset(&publication),
            expected,
            "gap or duplicate: {publication}"
        );
        assert_eq!(publication["data"]["n"], json!(expected), "{publication}");
        expected += 1;
    }
    Ok(())
}

#[tokio::test]
async fn publications_racing_with_subscribe_are_neither_lost_nor_duplicated() -> anyhow::Result<()>
{
    const TOTAL: u64 = 400;
    const SUBSCRIBERS: u64 = 8;
    let mut config = open_config(API_KEY, SECRET);
    config["client"]["recovery_max_publication_limit"] = json!(1000);
    config["channel"]["without_namespace"]["history_size"] = json!(1000);
    let server = TidingsServer::builder().config_json(config).start().await?;

    let mut first = server.connected_client().await?;
    let stream_epoch = epoch(&first.subscribe("race").await?);
    first.close().await?;

    let (progress_tx, mut progress) = watch::channel(0u64);
    let api_url = format!("{}/api/publish", server.http_url());
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for n in 1..=TOTAL {
            let response = http
                .post(&api_url)
                .header("X-API-Key", API_KEY)
                .json(&json!({ "channel": "race", "data": { "n": n } }))
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            anyhow::ensure!(response.status().as_u16() == 200, "publish {n} failed");
            let _ = progress_tx.send(n);
        }
        anyhow::Ok(())
    });

    // Subscribe at staggered points while the publisher runs; odd ones
    // recover from the very start, even ones take the live position.
    let mut subscribers = Vec::new();
    for k in 0..SUBSCRIBERS {
        let mark = k * TOTAL / SUBSCRIBERS;
        tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|n| *n >= mark))
            .await
            .map_err(|_| anyhow::anyhow!("publisher stalled before {mark}"))??;
        let mut client = server.connected_client().await?;
        let result = if k % 2 == 1 {
            client
                .subscribe_with(json!({
                    "channel": "race", "recover": true, "offset": 0, "epoch": stream_epoch
                }))
                .await?
        } else {
            client.subscribe("race").await?
        };
        subscribers.push((k, client, result));
    }
    tokio::time::timeout(Duration::from_secs(30), publisher).await???;

    for (k, mut client, result) in subscribers {
        let after = if k % 2 == 1 {
            assert!(flag(&result, "recovered"), "subscriber {k}: {result}");
            let recovered = offsets(&result["publications"]);
            let expected: Vec<u64> = (1..=recovered.len() as u64).collect();
            assert_eq!(
                recovered, expected,
                "subscriber {k} recovered a gap: {result}"
            );
            recovered.len() as u64
        } else {
            offset(&result)
        };
        expect_contiguous(&mut client, "race", after, TOTAL)
            .await
            .map_err(|e| e.context(format!("subscriber {k}")))?;
    }
    Ok(())
}
