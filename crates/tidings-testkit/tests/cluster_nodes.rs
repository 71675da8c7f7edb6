//! Three nodes joined through one broker behave as one server: publications,
//! presence, history, recovery, node info, server API user operations and the
//! emulated transports work whichever node a request lands on.
//!
//! Each scenario is written once, generic over the engine, and instantiated per
//! engine at the bottom of the file.

use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};
use tidings_testkit::cluster::CLUSTER_SECRET;
use tidings_testkit::{hs256_token, Cluster, Engine, ProtoClient, Transport};
use tokio::time::{sleep, Instant};

/// How long the nodes get to hear of each other.
const HEAR: Duration = Duration::from_secs(10);

async fn cluster(engine: Engine) -> anyhow::Result<Cluster> {
    let cluster = Cluster::start(engine).await?;
    cluster.wait_for_nodes(3, HEAR).await?;
    Ok(cluster)
}

async fn publications_reach_every_node(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut a = c.node(0).connect_over(Transport::WebSocket).await?;
    a.subscribe("news").await?;
    let mut on_c = c.node(2).connect_over(Transport::WebSocket).await?;

    c.node(1)
        .publish("news", json!({"from": "api on B"}))
        .await?;
    let first = a.next_pub("news").await?;
    ensure!(first["data"] == json!({"from": "api on B"}), "got {first}");

    on_c.publish("news", json!({"from": "client on C"})).await?;
    let second = a.next_pub("news").await?;
    ensure!(
        second["data"] == json!({"from": "client on C"}),
        "got {second}"
    );
    ensure!(
        second["offset"].as_u64() == first["offset"].as_u64().map(|o| o + 1),
        "offsets {first} then {second}"
    );
    Ok(())
}

async fn presence_lists_clients_of_every_node(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut client = c.node(i).connect_over(Transport::WebSocket).await?;
        client.subscribe("room").await?;
        ids.push(client.client_id().context("client id")?.to_owned());
        clients.push(client);
    }
    for i in 0..3 {
        let result = c
            .node(i)
            .api_ok("presence", json!({"channel": "room"}))
            .await?;
        let presence = result["presence"].as_object().context("presence map")?;
        for id in &ids {
            ensure!(
                presence.contains_key(id),
                "node {i} does not list {id}: {result}"
            );
        }
        let stats = c
            .node(i)
            .api_ok("presence_stats", json!({"channel": "room"}))
            .await?;
        ensure!(stats["num_clients"] == json!(3), "node {i}: {stats}");
    }
    // A client asks its own node, and sees the clients of the others too.
    let seen = clients[1].presence("room").await?;
    ensure!(
        seen.as_object().map(|m| m.len()) == Some(3),
        "client view {seen}"
    );
    Ok(())
}

/// Two nodes publish to one channel at the same time: a subscriber on a third
/// node gets every offset once, in order, and is never sent to recover (with NATS
/// the server may republish two such publications swapped; the node puts them
/// back in order).
async fn concurrent_publishes_from_two_nodes_arrive_in_order(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut watcher = c.node(0).connect_over(Transport::WebSocket).await?;
    watcher.subscribe("busy").await?;
    const EACH: u64 = 60;
    let publish_all = |node: usize, lane: u64| {
        let node = c.node(node);
        async move {
            for n in 0..EACH {
                node.publish("busy", json!({"lane": lane, "n": n})).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let (a, b, d, e) = tokio::join!(
        publish_all(1, 0),
        publish_all(1, 1),
        publish_all(2, 2),
        publish_all(2, 3)
    );
    a?;
    b?;
    d?;
    e?;
    let mut offsets = Vec::new();
    for _ in 0..4 * EACH {
        let p = watcher
            .next_pub("busy")
            .await
            .with_context(|| format!("after offsets {offsets:?}"))?;
        offsets.push(p["offset"].as_u64().context("offset")?);
    }
    let first = offsets[0];
    let want: Vec<u64> = (first..first + 4 * EACH).collect();
    ensure!(offsets == want, "offsets {offsets:?}");
    let recoveries = counter(c.node(0), "tidings_recoveries_requested_total").await?;
    ensure!(recoveries == 0.0, "{recoveries} recoveries requested");
    Ok(())
}

async fn a_client_recovers_on_another_node(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut first = c.node(0).connect_over(Transport::WebSocket).await?;
    let sub = first.subscribe("feed").await?;
    c.node(1).publish("feed", json!({"n": 1})).await?;
    let got = first.next_pub("feed").await?;
    let epoch = sub["epoch"].as_str().context("epoch")?.to_owned();
    let offset = got["offset"].as_u64().context("offset")?;
    first.vanish();

    c.node(1).publish("feed", json!({"n": 2})).await?;
    c.node(0).publish("feed", json!({"n": 3})).await?;

    let mut again = c.node(2).connect_over(Transport::WebSocket).await?;
    let result = again
        .subscribe_with(json!({
            "channel": "feed", "recover": true, "offset": offset, "epoch": epoch
        }))
        .await?;
    ensure!(result["recovered"] == json!(true), "{result}");
    let data: Vec<Value> = result["publications"]
        .as_array()
        .context("publications")?
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    ensure!(data == vec![json!({"n": 2}), json!({"n": 3})], "{result}");

    // History reads the same from every node.
    for i in 0..3 {
        let h = c
            .node(i)
            .api_ok("history", json!({"channel": "feed", "limit": -1}))
            .await?;
        ensure!(
            h["publications"].as_array().map(Vec::len) == Some(3) && h["epoch"] == json!(epoch),
            "node {i}: {h}"
        );
    }
    Ok(())
}

async fn info_lists_every_node(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let _a = c.node(0).connect_over(Transport::WebSocket).await?;
    for i in 0..3 {
        let info = c.node(i).api_ok("info", json!({})).await?;
        let nodes = info["nodes"].as_array().context("nodes")?;
        let mut names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
        names.sort_unstable();
        ensure!(names == ["node-1", "node-2", "node-3"], "node {i}: {info}");
        for n in nodes {
            for key in [
                "uid",
                "version",
                "num_clients",
                "num_users",
                "num_channels",
                "uptime",
            ] {
                ensure!(n.get(key).is_some(), "no {key} in {n}");
            }
        }
    }
    // The heartbeats carry the figures: every node sees node-1's client.
    let deadline = Instant::now() + HEAR;
    loop {
        let info = c.node(2).api_ok("info", json!({})).await?;
        let clients_of_1 = info["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == "node-1"))
            .map(|n| n["num_clients"].clone());
        if clients_of_1 == Some(json!(1)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "node-1's client never showed: {info}"
        );
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A stream on node A whose commands are all posted to node B.
async fn emulated_commands_cross_nodes(engine: Engine, transport: Transport) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut client = c.node(0).connect_over(transport).await?;
    client.route_requests_to(&c.node(1).http_url());
    client.subscribe("crossing").await?;
    c.node(2).publish("crossing", json!({"k": 1})).await?;
    let got = client.next_pub("crossing").await?;
    ensure!(got["data"] == json!({"k": 1}), "{got}");
    client.publish("crossing", json!({"k": 2})).await?;
    let got = client.next_pub("crossing").await?;
    ensure!(got["data"] == json!({"k": 2}), "{got}");
    let presence = client.presence("crossing").await?;
    ensure!(
        presence.as_object().map(|m| m.len()) == Some(1),
        "{presence}"
    );
    // The commands really went through node B.
    let forwarded = counter(c.node(1), "tidings_forwarded_requests_total").await?;
    ensure!(forwarded >= 3.0, "node B forwarded {forwarded} requests");
    Ok(())
}

async fn counter(node: &tidings_testkit::TidingsServer, name: &str) -> anyhow::Result<f64> {
    let (status, text) = node.http_get("/metrics").await?;
    ensure!(status == 200, "/metrics -> {status}");
    tidings_testkit::metrics::sample(&text, name, &[]).with_context(|| format!("no {name}"))
}

async fn sse_commands_posted_to_another_node(engine: Engine) -> anyhow::Result<()> {
    emulated_commands_cross_nodes(engine, Transport::Sse).await
}

async fn http_stream_commands_posted_to_another_node(engine: Engine) -> anyhow::Result<()> {
    emulated_commands_cross_nodes(engine, Transport::HttpStream).await
}

async fn long_polls_answered_through_another_node(engine: Engine) -> anyhow::Result<()> {
    // Polls, commands and the final DELETE all go to node B.
    let c = cluster(engine).await?;
    let mut client = c.node(0).connect_over(Transport::LongPoll).await?;
    client.route_requests_to(&c.node(1).http_url());
    emulated_round(&c, &mut client).await?;
    client.close().await?;
    // The session on node A is gone: a connections gauge of 0 there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.node(0).connections_gauge().await? != 0.0 {
        ensure!(Instant::now() < deadline, "the session stayed on node A");
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn emulated_round(c: &Cluster, client: &mut ProtoClient) -> anyhow::Result<()> {
    client.subscribe("polled").await?;
    c.node(2).publish("polled", json!({"k": "x"})).await?;
    let got = client.next_pub("polled").await?;
    ensure!(got["data"] == json!({"k": "x"}), "{got}");
    Ok(())
}

async fn emulation_for_an_unknown_node_is_404(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let body = json!({"session": "nope", "node": "no-such-node", "data": "{}"});
    // A node that just started cannot know every node yet and forwards (504 after
    // its wait); once it has heard the heartbeats it answers 404 at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = post_json(&c.node(0).http_url(), "/emulation", &body).await?;
        if status == 404 {
            break;
        }
        ensure!(status == 504, "HTTP {status}: {text}");
        ensure!(Instant::now() < deadline, "still {status}");
    }
    let url = format!(
        "{}/connection/long_poll?session=nope&node=no-such-node&cursor=0",
        c.node(0).http_url()
    );
    let status = reqwest::get(&url).await?.status().as_u16();
    ensure!(status == 404, "poll HTTP {status}");
    Ok(())
}

async fn post_json(base: &str, path: &str, body: &Value) -> anyhow::Result<(u16, String)> {
    let res = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = res.status().as_u16();
    Ok((status, res.text().await.unwrap_or_default()))
}

async fn user_operations_act_on_every_node(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let token = hs256_token(CLUSTER_SECRET, "alice", None)?;
    let mut on_c = c
        .node(2)
        .connect_over_with(Transport::WebSocket, json!({ "token": token }))
        .await?;
    let mut also_on_b = c
        .node(1)
        .connect_over_with(Transport::WebSocket, json!({ "token": token }))
        .await?;

    // Server-side subscribe from node A reaches the client on node C.
    c.node(0)
        .api_ok("subscribe", json!({"user": "alice", "channel": "assigned"}))
        .await?;
    let push = on_c.next_push_of("subscribe", "assigned").await?;
    ensure!(push["channel"] == "assigned", "{push}");
    c.node(1)
        .publish("assigned", json!({"hello": "alice"}))
        .await?;
    ensure!(on_c.next_pub("assigned").await?["data"] == json!({"hello": "alice"}));

    // Unsubscribe from node B.
    c.node(1)
        .api_ok(
            "unsubscribe",
            json!({"user": "alice", "channel": "assigned"}),
        )
        .await?;
    let push = on_c.next_push_of("unsubscribe", "assigned").await?;
    ensure!(push["unsubscribe"]["code"] == json!(2000), "{push}");

    // Disconnect from node A drops alice on nodes B and C.
    c.node(0)
        .api_ok(
            "disconnect",
            json!({"user": "alice", "disconnect": {"code": 4000, "reason": "bye"}}),
        )
        .await?;
    for client in [&mut on_c, &mut also_on_b] {
        let (code, reason) = client.expect_disconnect().await?;
        ensure!((code, reason.as_str()) == (4000, "bye"), "{code} {reason}");
    }
    Ok(())
}

async fn channels_api_surveys_every_node(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = c.node(i).connect_over(Transport::WebSocket).await?;
        client.subscribe("everywhere").await?;
        client.subscribe(&format!("only-on-{i}")).await?;
        clients.push(client);
    }
    let result = c.node(0).api_ok("channels", json!({})).await?;
    let channels = result["channels"].as_object().context("channels")?;
    ensure!(
        channels.get("everywhere").map(|c| c["num_clients"].clone()) == Some(json!(3)),
        "{result}"
    );
    for i in 0..3 {
        if !channels.contains_key(&format!("only-on-{i}")) {
            bail!("only-on-{i} missing: {result}");
        }
    }
    Ok(())
}

/// An API batch on one node: replies in command order, offsets in order per
/// channel, an idempotent retry inside the batch published once, and the
/// publications reach a subscriber on another node in the order of the batch.
/// With `parallel` every publication still arrives once.
async fn api_batches_publish_in_order_across_nodes(engine: Engine) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut sub = c.node(2).connect_over(Transport::WebSocket).await?;
    sub.subscribe("ba").await?;
    sub.subscribe("bb").await?;
    let publish = |ch: &str, n: u32| json!({ "publish": { "channel": ch, "data": { "n": n } } });
    let keyed =
        json!({ "publish": { "channel": "ba", "data": { "n": 6 }, "idempotency_key": "k" } });
    let commands = json!([
        publish("ba", 1),
        publish("ba", 2),
        publish("bb", 3),
        publish("unknown:x", 0),
        publish("ba", 4),
        { "presence_stats": { "channel": "ba" } },
        publish("ba", 5),
        keyed,
        keyed,
    ]);
    let (status, reply) = c
        .node(0)
        .api("batch", json!({ "commands": commands }))
        .await?;
    ensure!(status == 200, "HTTP {status}: {reply}");
    let replies = reply["replies"].as_array().context("replies")?;
    ensure!(replies.len() == 9, "{reply}");
    let offsets: Vec<u64> = replies
        .iter()
        .map(|r| r["publish"]["offset"].as_u64().unwrap_or(0))
        .collect();
    ensure!(
        offsets == [1, 2, 1, 0, 3, 0, 4, 5, 5],
        "offsets {offsets:?}: {reply}"
    );
    ensure!(replies[3]["error"]["code"] == json!(102), "{reply}");
    ensure!(
        replies[5]["presence_stats"]["num_clients"] == json!(1),
        "{reply}"
    );
    ensure!(
        replies[7]["publish"]["epoch"] == replies[0]["publish"]["epoch"],
        "{reply}"
    );
    c.node(1).publish("ba", json!({ "n": 7 })).await?;
    // In order per channel (NATS orders each channel's stream on its own).
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    while ba.len() + bb.len() < 7 {
        let push = sub.next_push().await?;
        let n = push["pub"]["data"]["n"].as_u64();
        match (push["channel"].as_str(), n) {
            (Some("ba"), Some(n)) => ba.push(n),
            (Some("bb"), Some(n)) => bb.push(n),
            _ => {}
        }
    }
    ensure!(
        ba == [1, 2, 4, 5, 6, 7] && bb == [3],
        "ba {ba:?}, bb {bb:?}"
    );

    // In parallel: every publication once, offsets distinct.
    let commands: Vec<Value> = (10..30).map(|n| publish("ba", n)).collect();
    let (status, reply) = c
        .node(1)
        .api("batch", json!({ "commands": commands, "parallel": true }))
        .await?;
    ensure!(status == 200, "HTTP {status}: {reply}");
    let mut offsets: Vec<u64> = reply["replies"]
        .as_array()
        .context("replies")?
        .iter()
        .map(|r| r["publish"]["offset"].as_u64().unwrap_or(0))
        .collect();
    offsets.sort_unstable();
    ensure!(
        offsets == (7..27).collect::<Vec<u64>>(),
        "offsets {offsets:?}: {reply}"
    );
    let mut seen = Vec::new();
    for _ in 10..30 {
        seen.push(sub.next_pub("ba").await?["data"]["n"].as_u64().unwrap_or(0));
    }
    seen.sort_unstable();
    ensure!(seen == (10..30).collect::<Vec<u64>>(), "got {seen:?}");
    Ok(())
}

tidings_testkit::per_engine_tests!(
    publications_reach_every_node,
    presence_lists_clients_of_every_node,
    concurrent_publishes_from_two_nodes_arrive_in_order,
    a_client_recovers_on_another_node,
    info_lists_every_node,
    sse_commands_posted_to_another_node,
    http_stream_commands_posted_to_another_node,
    long_polls_answered_through_another_node,
    emulation_for_an_unknown_node_is_404,
    user_operations_act_on_every_node,
    channels_api_surveys_every_node,
    api_batches_publish_in_order_across_nodes,
);
