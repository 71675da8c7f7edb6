//! Deltas and tags filters across two nodes: the publisher's delta mark and the
//! publication's tags travel through Redis and NATS, and each node's hub keeps its
//! own delta chain for its subscribers.

use std::time::Duration;

use anyhow::ensure;
use serde_json::{json, Value};
use tidings_testkit::{Cluster, Engine, Transport};

async fn cluster(engine: Engine) -> anyhow::Result<Cluster> {
    let cluster = Cluster::builder(engine)
        .nodes(2)
        .config(|c| {
            let ns = &mut c["channel"]["without_namespace"];
            ns["allowed_delta_types"] = json!(["fossil"]);
            ns["allow_tags_filter"] = json!(true);
        })
        .start()
        .await?;
    cluster.wait_for_nodes(2, Duration::from_secs(10)).await?;
    Ok(cluster)
}

fn doc(n: u64) -> Value {
    let mut o = serde_json::Map::new();
    for i in 0..100 {
        o.insert(format!("field{i}"), json!(format!("value {i}")));
    }
    o.insert("n".into(), json!(n));
    Value::Object(o)
}

async fn a_delta_published_on_one_node_arrives_as_a_delta_on_the_other(
    engine: Engine,
) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut sub = c.node(0).connect_over(Transport::WebSocket).await?;
    let result = sub
        .subscribe_with(json!({ "channel": "doc", "delta": "fossil" }))
        .await?;
    ensure!(result["delta"] == json!(true), "{result}");
    for n in 1..=3 {
        c.node(1)
            .api_ok(
                "publish",
                json!({ "channel": "doc", "data": doc(n), "delta": true }),
            )
            .await?;
    }
    let first = sub.next_pub("doc").await?;
    let text = first["data"].as_str().unwrap_or_default().to_owned();
    ensure!(serde_json::from_str::<Value>(&text)? == doc(1), "{first}");
    ensure!(first.get("delta").is_none(), "the first is full: {first}");
    let mut data = text.into_bytes();
    for n in 2..=3 {
        let p = sub.next_pub("doc").await?;
        ensure!(p["delta"] == json!(true), "publication {n}: {p}");
        let patch = p["data"].as_str().unwrap_or_default();
        data = fossil_delta::apply(&data, patch.as_bytes())
            .map_err(|e| anyhow::anyhow!("patch {n} does not apply: {e:?}"))?;
        ensure!(
            serde_json::from_slice::<Value>(&data)? == doc(n),
            "rebuilt {n}"
        );
    }
    Ok(())
}

async fn a_tags_filter_applies_to_publications_from_another_node(
    engine: Engine,
) -> anyhow::Result<()> {
    let c = cluster(engine).await?;
    let mut sub = c.node(0).connect_over(Transport::WebSocket).await?;
    sub.subscribe_with(json!({
        "channel": "ticks",
        "tf": { "key": "ticker", "cmp": "in", "vals": ["BTC", "ETH"] }
    }))
    .await?;
    for (n, ticker) in [(1, "DOGE"), (2, "ETH"), (3, "XRP"), (4, "BTC")] {
        c.node(1)
            .api_ok(
                "publish",
                json!({ "channel": "ticks", "data": {"n": n}, "tags": {"ticker": ticker} }),
            )
            .await?;
    }
    for n in [2, 4] {
        let p = sub.next_pub("ticks").await?;
        ensure!(p["data"] == json!({ "n": n }), "expected {n}: {p}");
    }
    Ok(())
}

tidings_testkit::per_engine_tests!(
    a_delta_published_on_one_node_arrives_as_a_delta_on_the_other,
    a_tags_filter_applies_to_publications_from_another_node,
);
