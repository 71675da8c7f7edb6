//! Online status across two nodes on Redis and on NATS (`online_status`,
//! docs/online-status.md): a user is online while any connection of theirs lives
//! on any node, offline with a last-seen time once the last one closes, and
//! offline within the presence TTL after `kill -9` of the node that held them.
//! Followers of a user's status channel get each change once; the server API's
//! `user_status` answers from any node. The latency histograms of `/metrics`
//! are checked on the same cluster.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use tidings_testkit::cluster::{merge, Cluster, Engine, CLUSTER_SECRET};
use tidings_testkit::metrics::sample;
use tidings_testkit::{hs256_token, per_engine_tests, TidingsServer, WsClient};

/// The engine's presence TTL here (entries are refreshed every second).
const TTL: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(15);

async fn two_nodes(engine: Engine) -> anyhow::Result<Cluster> {
    let ttl = format!("{}s", TTL.as_secs());
    let cluster = Cluster::builder(engine)
        .nodes(2)
        .config(|c| {
            let engine_patch = match engine {
                Engine::Redis
                | Engine::RedisShards
                | Engine::RedisSentinel
                | Engine::RedisCluster => {
                    json!({"engine": {"redis": {"presence_ttl": ttl}}})
                }
                Engine::Nats => json!({"engine": {"nats": {"presence_ttl": ttl}}}),
            };
            merge(c, &engine_patch);
            merge(c, &json!({"online_status": {"enabled": true}}));
            let status = json!({
                "name": "status",
                "history_size": 1,
                "history_ttl": "1h",
                "allow_subscribe_for_client": true,
                "allow_history_for_subscriber": true,
            });
            match c["channel"]["namespaces"].as_array_mut() {
                Some(list) => list.push(status),
                None => c["channel"]["namespaces"] = json!([status]),
            }
        })
        .start()
        .await?;
    cluster.wait_for_nodes(2, Duration::from_secs(15)).await?;
    Ok(cluster)
}

async fn user_client(node: &TidingsServer, user: &str) -> anyhow::Result<WsClient> {
    let token = hs256_token(CLUSTER_SECRET, user, None)?;
    node.connected_client_with_token(&token).await
}

/// `user_status` of one user, asked of `node`.
async fn status(node: &TidingsServer, user: &str) -> anyhow::Result<Value> {
    let result = node
        .api_ok("user_status", json!({ "users": [user] }))
        .await?;
    result["statuses"][0]
        .as_object()
        .map(|o| Value::Object(o.clone()))
        .context("no status in the answer")
}

/// Polls `node` until `user`'s status has `online == want`.
async fn wait_status(
    node: &TidingsServer,
    user: &str,
    want: bool,
    within: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let s = status(node, user).await?;
        if s["online"] == json!(want) {
            return Ok(s);
        }
        ensure!(
            Instant::now() < deadline,
            "{user} still not online={want} after {within:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn online_while_any_connection_lives_on_any_node(engine: Engine) -> anyhow::Result<()> {
    let cluster = two_nodes(engine).await?;
    let (a, b) = (cluster.node(0), cluster.node(1));

    // Never seen: offline, no time.
    let never = status(b, "alice").await?;
    ensure!(
        never == json!({"user": "alice", "online": false}),
        "{never}"
    );

    // A follower on node B.
    let mut watcher = user_client(b, "watcher").await?;
    watcher.subscribe("status:alice").await?;

    let alice_a = user_client(a, "alice").await?;
    let online = wait_status(b, "alice", true, WAIT).await?;
    let since = online["at"].as_u64().context("online without a time")?;
    let pushed = watcher.next_pub("status:alice").await?;
    ensure!(
        pushed["data"]["online"] == json!(true) && pushed["data"]["user"] == json!("alice"),
        "{pushed}"
    );

    // A second connection on node B; the first closes: still online.
    let alice_b = user_client(b, "alice").await?;
    alice_a.close().await?;
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    let still = status(a, "alice").await?;
    ensure!(still["online"] == json!(true), "{still}");
    ensure!(still["at"] == json!(since), "online again? {still}");

    // The last connection closes: offline, last seen after she came online.
    alice_b.close().await?;
    let offline = wait_status(a, "alice", false, WAIT).await?;
    let seen = offline["at"]
        .as_u64()
        .context("offline without a last-seen time")?;
    ensure!(seen >= since, "last seen {seen} before online at {since}");
    let pushed = watcher.next_pub("status:alice").await?;
    ensure!(pushed["data"]["online"] == json!(false), "{pushed}");
    ensure!(pushed["data"]["at"] == json!(seen), "{pushed}");

    // Exactly those two changes, even past two TTLs of refreshes and reaps.
    tokio::time::sleep(TTL * 2).await;
    watcher.set_wait(Duration::from_millis(500));
    ensure!(
        watcher.next_pub("status:alice").await.is_err(),
        "a status was published twice"
    );

    // Several users at once, in order; an unknown method's neighbour is checked
    // too: asking for too many users is refused.
    let many = b
        .api_ok(
            "user_status",
            json!({ "users": ["alice", "nobody", "watcher"] }),
        )
        .await?;
    let list = many["statuses"].as_array().context("statuses")?;
    ensure!(list.len() == 3, "{many}");
    ensure!(
        list[0]["online"] == json!(false) && list[0]["at"] == json!(seen),
        "{many}"
    );
    ensure!(
        list[1] == json!({"user": "nobody", "online": false}),
        "{many}"
    );
    ensure!(list[2]["online"] == json!(true), "{many}");
    let users: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let key = b.api_key().context("no API key")?;
    let (status_code, body) = b
        .api_raw(
            "user_status",
            &json!({ "users": users }).to_string(),
            &[("X-API-Key", key)],
        )
        .await?;
    ensure!(
        status_code == 200 && body.contains("\"code\":107"),
        "1001 users -> {status_code} {body}"
    );

    // The latency histograms have seen these calls.
    let (code, text) = b.http_get("/metrics").await?;
    ensure!(code == 200, "/metrics -> {code}");
    for (name, labels) in [
        (
            "tidings_api_request_duration_seconds_count",
            vec![("method", "user_status")],
        ),
        (
            "tidings_api_request_duration_seconds_bucket",
            vec![("method", "user_status"), ("le", "10")],
        ),
        (
            "tidings_engine_call_duration_seconds_count",
            vec![("op", "history")],
        ),
        (
            "tidings_engine_call_duration_seconds_count",
            vec![("op", "publish")],
        ),
        ("tidings_fanout_duration_seconds_count", vec![]),
        ("tidings_outbox_wait_seconds_count", vec![]),
    ] {
        let n = sample(&text, name, &labels).with_context(|| format!("{name} missing"))?;
        ensure!(n >= 1.0, "{name}{labels:?} = {n}");
    }
    drop(watcher);
    Ok(())
}

async fn offline_within_the_presence_ttl_after_kill_9(engine: Engine) -> anyhow::Result<()> {
    let mut cluster = two_nodes(engine).await?;
    let carol = user_client(cluster.node(0), "carol").await?;
    wait_status(cluster.node(1), "carol", true, WAIT).await?;

    cluster.kill9_node(0).await?;
    let killed = Instant::now();
    // The TTL, one refresh period for the reaper to run, and slack for a loaded
    // machine.
    let offline = wait_status(
        cluster.node(1),
        "carol",
        false,
        TTL + Duration::from_secs(10),
    )
    .await?;
    ensure!(
        killed.elapsed() >= TTL - Duration::from_millis(500),
        "offline before the entry could have expired: {offline}"
    );
    ensure!(offline["at"].as_u64().is_some(), "{offline}");
    drop(carol);
    Ok(())
}

per_engine_tests!(
    online_while_any_connection_lives_on_any_node,
    offline_within_the_presence_ttl_after_kill_9,
);

/// Off by default: `user_status` answers 108.
#[tokio::test]
async fn without_online_status_the_api_answers_108() -> anyhow::Result<()> {
    // A configuration file without `online_status` (the development profile has it on).
    let server = TidingsServer::builder()
        .config_json(tidings_testkit::profile::open_config(
            "api-key",
            CLUSTER_SECRET,
        ))
        .api_key("api-key")
        .start()
        .await?;
    let key = server.api_key().context("no API key")?;
    let (code, body) = server
        .api_raw(
            "user_status",
            &json!({ "users": ["a"] }).to_string(),
            &[("X-API-Key", key)],
        )
        .await?;
    ensure!(
        code == 200 && body.contains("\"code\":108"),
        "{code} {body}"
    );
    Ok(())
}
