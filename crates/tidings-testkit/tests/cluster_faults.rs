//! What a cluster does when a part of it dies: the broker, a node, the history,
//! and all of it at random in a chaos run. The rule in every case: a client gets
//! what it missed through recovery, or is told `recovered: false`; never a silent
//! gap, never a duplicate.
//!
//! Publications carry a sequence number (`{"seq": N}`); [`Follower`] checks what
//! each subscriber received against what was published.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use tidings_testkit::cluster::{merge, BrokerProcess, CLUSTER_API_KEY};
use tidings_testkit::{Cluster, Engine, Follower, TidingsServer, Transport};
use tokio::time::{sleep, Instant};

/// How long the nodes get to hear of each other.
const HEAR: Duration = Duration::from_secs(10);

/// Presence entries of a dead node must be gone within this (the engine's
/// presence TTL set below, plus one refresh interval and some slack).
const PRESENCE_TTL: Duration = Duration::from_secs(3);

/// Short presence TTL for the engine in use, and broker timeouts short enough
/// that a publish with the broker down is answered within the test's HTTP wait.
fn short_presence_ttl(engine: Engine, config: &mut Value) {
    let ttl = format!("{}s", PRESENCE_TTL.as_secs());
    let patch = match engine {
        Engine::Redis | Engine::RedisShards | Engine::RedisSentinel | Engine::RedisCluster => {
            json!({"engine": {"redis": {"presence_ttl": ttl, "io_timeout": "2s"}}})
        }
        Engine::Nats => json!({"engine": {"nats": {
            "presence_ttl": ttl, "request_timeout": "2s", "write_timeout": "1s"
        }}}),
    };
    merge(config, &patch);
}

async fn cluster(engine: Engine) -> anyhow::Result<Cluster> {
    let cluster = Cluster::builder(engine)
        .config(|c| short_presence_ttl(engine, c))
        .start()
        .await?;
    cluster.wait_for_nodes(3, HEAR).await?;
    Ok(cluster)
}

/// What a publisher knows about its publications.
#[derive(Default)]
struct Published {
    /// Answered with a position: published.
    ok: Vec<u64>,
    /// Failed in a way that may or may not have published (a timeout).
    uncertain: Vec<u64>,
    /// Answered with an error: not published.
    refused: Vec<u64>,
}

impl Published {
    /// Publishes `seq` through `node`, filing the outcome.
    async fn publish(&mut self, node: &TidingsServer, channel: &str, seq: u64) -> bool {
        let body = json!({"channel": channel, "data": {"seq": seq}});
        match tokio::time::timeout(Duration::from_secs(8), node.api("publish", body)).await {
            Ok(Ok((200, reply))) if reply.get("result").is_some() => {
                self.ok.push(seq);
                true
            }
            Ok(Ok((_, reply))) if reply.get("error").is_some() => {
                self.refused.push(seq);
                false
            }
            _ => {
                self.uncertain.push(seq);
                false
            }
        }
    }

    /// Publishes the next sequence number until one is accepted, within `limit`;
    /// returns it.
    async fn publish_until_ok(
        &mut self,
        node: &TidingsServer,
        channel: &str,
        next: &mut u64,
        limit: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            *next += 1;
            if self.publish(node, channel, *next).await {
                return Ok(*next);
            }
            ensure!(
                Instant::now() < deadline,
                "no publish accepted within {limit:?}"
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Publishes fresh sequence numbers through `node` until every follower has
/// received one of them (a follower whose resubscribe lands after a publication
/// legitimately skips it with `recovered: false`, hence a stream of them). Dead
/// followers reconnect to `node`.
async fn deliver_fresh(
    published: &mut Published,
    node: &TidingsServer,
    channel: &str,
    seq: &mut u64,
    followers: &mut [Follower],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let first = *seq + 1;
    loop {
        *seq += 1;
        published.publish(node, channel, *seq).await;
        let mut all = true;
        for f in followers.iter_mut() {
            if !f.is_connected() {
                let _ = f.connect(&node.http_url()).await;
            }
            if f.is_connected() {
                f.pump(Duration::from_millis(30)).await?;
            }
            all &= f.seqs.last().is_some_and(|&s| s >= first);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            let lasts: Vec<Option<&u64>> = followers.iter().map(|f| f.seqs.last()).collect();
            anyhow::bail!(
                "followers did not get a publication from {first} on within {limit:?}: last {lasts:?}; \
                 the node said:\n{}",
                node.log_tail(30)
            );
        }
    }
}

/// Checks every follower's verdict.
fn judge(followers: &[Follower], published: &Published) -> anyhow::Result<()> {
    // An error answer (a Redis timeout, say) may still have published: such a
    // number may arrive, but need not.
    let maybe: Vec<u64> = published
        .uncertain
        .iter()
        .chain(&published.refused)
        .copied()
        .collect();
    for (i, f) in followers.iter().enumerate() {
        if let Err(problems) = f.verdict(&published.ok, &maybe) {
            anyhow::bail!(
                "follower {i} ({} received, {} reports, {} resubscribes, {} reconnects): {problems}",
                f.seqs.len(),
                f.reported_at.len(),
                f.resubscribes,
                f.reconnects
            );
        }
    }
    Ok(())
}

async fn broker_restart_loses_nothing_silently(engine: Engine) -> anyhow::Result<()> {
    let mut c = cluster(engine).await?;
    let mut followers = Vec::new();
    for i in 0..3 {
        followers.push(Follower::start(&c.node(i).http_url(), "ticks").await?);
    }
    let mut published = Published::default();
    let mut seq = 0;
    for _ in 0..5 {
        let n = published
            .publish_until_ok(c.node(seq as usize % 3), "ticks", &mut seq, HEAR)
            .await?;
        for f in &mut followers {
            f.wait_for_seq(n, Duration::from_secs(5)).await?;
        }
    }

    c.kill9_broker().await?;
    // While the broker is down, a publish is an error, never a silent 200.
    for i in 0..3 {
        seq += 1;
        let body = json!({"channel": "ticks", "data": {"seq": seq}});
        let (status, reply) = c.node(i).api("publish", body.clone()).await?;
        ensure!(
            reply.get("error").is_some() && reply.get("result").is_none(),
            "node {i} answered HTTP {status} {reply} with the broker down"
        );
        published.refused.push(seq);
        let (status, _) = c
            .node(i)
            .api_raw(
                "publish",
                &body.to_string(),
                &[
                    ("X-API-Key", CLUSTER_API_KEY),
                    ("X-Centrifugo-Error-Mode", "transport"),
                ],
            )
            .await?;
        ensure!(status >= 500, "transport error mode answered {status}");
    }

    c.restart_broker().await?;
    let back = Instant::now();
    // Within 5 s of the broker's return, publications through each node reach
    // every follower (each node has resubscribed, and followers that lost their
    // place were told and resubscribed).
    for i in 0..3 {
        let left = Duration::from_secs(5).saturating_sub(back.elapsed());
        deliver_fresh(
            &mut published,
            c.node(i),
            "ticks",
            &mut seq,
            &mut followers,
            left,
        )
        .await
        .with_context(|| format!("through node {i} after the restart"))?;
    }
    // The nodes told their subscribers to recover: each follower resubscribed.
    let mut told = 0.0;
    for i in 0..3 {
        let (_, text) = c.node(i).http_get("/metrics").await?;
        let name = "tidings_recoveries_requested_total";
        told += tidings_testkit::metrics::sample(&text, name, &[]).unwrap_or(0.0);
    }
    ensure!(told >= 3.0, "recoveries requested: {told}");
    judge(&followers, &published).with_context(|| {
        format!(
            "published {:?}, refused {:?}, uncertain {:?}",
            published.ok, published.refused, published.uncertain
        )
    })?;
    Ok(())
}

async fn a_dead_nodes_clients_recover_elsewhere_and_its_presence_expires(
    engine: Engine,
) -> anyhow::Result<()> {
    let mut c = cluster(engine).await?;
    let mut followers = Vec::new();
    for _ in 0..2 {
        followers.push(Follower::start(&c.node(2).http_url(), "doomed").await?);
    }
    let mut watcher = c.node(0).connect_over(Transport::WebSocket).await?;
    watcher.subscribe("doomed").await?;
    let mut published = Published::default();
    let mut seq = 0;
    let n = published
        .publish_until_ok(c.node(1), "doomed", &mut seq, HEAR)
        .await?;
    for f in &mut followers {
        f.wait_for_seq(n, Duration::from_secs(5)).await?;
    }
    let presence = c
        .node(0)
        .api_ok("presence", json!({"channel": "doomed"}))
        .await?;
    ensure!(
        presence["presence"].as_object().map(|m| m.len()) == Some(3),
        "{presence}"
    );

    c.kill9_node(2).await?;
    let killed = Instant::now();
    for _ in 0..5 {
        published
            .publish_until_ok(c.node(1), "doomed", &mut seq, HEAR)
            .await?;
    }
    // The followers notice and reconnect to node A, recovering what they missed.
    for f in &mut followers {
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.pump(Duration::from_millis(100)).await? {
            ensure!(Instant::now() < deadline, "still connected to a dead node");
        }
        f.connect(&c.node(0).http_url()).await?;
        ensure!(f.recovered == 1, "not recovered");
        f.wait_for_seq(seq, Duration::from_secs(5)).await?;
    }
    // Their old entries leave presence within the TTL (plus a refresh round).
    let limit = PRESENCE_TTL + Duration::from_secs(3);
    loop {
        let presence = c
            .node(1)
            .api_ok("presence", json!({"channel": "doomed"}))
            .await?;
        // The watcher and the two reconnected followers.
        if presence["presence"].as_object().map(|m| m.len()) == Some(3) {
            break;
        }
        ensure!(
            killed.elapsed() < limit,
            "dead node's entries still listed after {limit:?}: {presence}"
        );
        sleep(Duration::from_millis(100)).await;
    }
    // And node A stops listing it.
    c.wait_for_nodes(2, HEAR).await?;
    judge(&followers, &published)?;
    Ok(())
}

async fn lost_history_means_a_new_epoch_and_recovered_false(engine: Engine) -> anyhow::Result<()> {
    let mut c = cluster(engine).await?;
    let mut followers = Vec::new();
    for i in 0..3 {
        followers.push(Follower::start(&c.node(i).http_url(), "wiped").await?);
    }
    let mut published = Published::default();
    let mut seq = 0;
    for _ in 0..3 {
        published
            .publish_until_ok(c.node(0), "wiped", &mut seq, HEAR)
            .await?;
    }
    for f in &mut followers {
        f.wait_for_seq(seq, Duration::from_secs(5)).await?;
    }
    let old_epoch: Vec<String> = followers
        .iter()
        .map(|f| f.position().1.to_owned())
        .collect();

    c.lose_history().await?;
    // Keep publishing until every follower has been told and moved on.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = published
            .publish_until_ok(c.node(1), "wiped", &mut seq, HEAR)
            .await?;
        let mut done = true;
        for f in &mut followers {
            f.pump(Duration::from_millis(100)).await?;
            done &= f.reported_at.len() == 1 && f.seqs.last() == Some(&n);
        }
        if done {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "followers never moved to the new epoch: reports {:?}",
            followers
                .iter()
                .map(|f| f.reported_at.len())
                .collect::<Vec<_>>()
        );
    }
    for (f, old) in followers.iter().zip(&old_epoch) {
        ensure!(f.position().1 != old, "epoch did not change");
    }
    judge(&followers, &published)?;
    Ok(())
}

/// 60 s (TIDINGS_CHAOS_SECS), 3 nodes, 2,000 publications, followers killed at
/// random and reconnected to random nodes, and one broker restart halfway.
async fn chaos_run_has_no_silent_gaps(engine: Engine) -> anyhow::Result<()> {
    let secs: u64 = std::env::var("TIDINGS_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let total: u64 = 2_000;
    let c = Arc::new(tokio::sync::RwLock::new(cluster(engine).await?));
    let urls: Vec<String> = {
        let c = c.read().await;
        (0..3).map(|i| c.node(i).http_url()).collect()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..6usize {
        let mut f = Follower::start(&urls[k % 3], "chaos").await?;
        let urls = urls.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(k as u64 * 7919 + 17);
            let mut next_kill = Instant::now() + Duration::from_millis(1_000 + rng.below(4_000));
            while !stop.load(Ordering::Acquire) {
                if Instant::now() >= next_kill {
                    f.vanish();
                    next_kill = Instant::now() + Duration::from_millis(1_000 + rng.below(4_000));
                }
                if !f.is_connected() {
                    let url = &urls[rng.below(3) as usize];
                    if f.connect(url).await.is_err() {
                        sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
                f.pump(Duration::from_millis(100)).await?;
            }
            anyhow::Ok(f)
        }));
    }

    let mut published = Published::default();
    let start = Instant::now();
    let period = Duration::from_millis(secs * 1000 / total);
    let mut restarted = false;
    for seq in 1..=total {
        let at = start + period * seq as u32;
        tokio::time::sleep_until(at).await;
        if !restarted && seq >= total / 2 {
            restarted = true;
            let mut c = c.write().await;
            c.kill9_broker().await?;
            c.restart_broker().await?;
        }
        let c = c.read().await;
        published
            .publish(c.node(seq as usize % 3), "chaos", seq)
            .await;
    }
    // Every follower must be back on track at the end, however it fared.
    stop.store(true, Ordering::Release);
    let mut finals = Vec::new();
    for t in tasks {
        finals.push(t.await??);
    }
    let mut seq = total;
    {
        let c = c.read().await;
        deliver_fresh(
            &mut published,
            c.node(0),
            "chaos",
            &mut seq,
            &mut finals,
            Duration::from_secs(20),
        )
        .await?;
    }
    ensure!(
        published.ok.len() as u64 > total / 2,
        "only {} of {total} publications accepted",
        published.ok.len()
    );
    judge(&finals, &published)?;
    let received: usize = finals.iter().map(|f| f.seqs.len()).sum();
    eprintln!(
        "chaos: {} accepted, {} refused, {} uncertain; {received} deliveries, {} reconnects, {} resubscribes, {} gap reports",
        published.ok.len(),
        published.refused.len(),
        published.uncertain.len(),
        finals.iter().map(|f| f.reconnects).sum::<usize>(),
        finals.iter().map(|f| f.resubscribes).sum::<usize>(),
        finals.iter().map(|f| f.reported_at.len()).sum::<usize>(),
    );
    Ok(())
}

/// Kills the master of the channel's data while publications flow through all
/// three nodes, every 20 ms round robin; the replica takes over. Publishing
/// resumes through every node, and every follower either received each
/// accepted publication once, in order, or was told it could not recover (the
/// promoted replica starts every channel on a new epoch): no silent gap, no
/// duplicate. Returns how long after the kill the first publish was accepted.
async fn master_killed_mid_publish(mut c: Cluster, what: &str) -> anyhow::Result<Duration> {
    let mut followers = Vec::new();
    for i in 0..3 {
        followers.push(Follower::start(&c.node(i).http_url(), "ticks").await?);
    }
    let mut published = Published::default();
    let mut seq = 0;
    // Steady traffic first, every follower in step.
    for _ in 0..20 {
        let n = published
            .publish_until_ok(c.node(seq as usize % 3), "ticks", &mut seq, HEAR)
            .await?;
        for f in &mut followers {
            f.wait_for_seq(n, Duration::from_secs(5)).await?;
        }
    }
    let mut killed_at = None;
    let mut resumed_after = None;
    let mut ok_after_resume = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    while ok_after_resume < 30 {
        ensure!(
            Instant::now() < deadline,
            "publishing did not resume within 40 s"
        );
        seq += 1;
        if seq == 31 {
            kill_channel_master(&mut c).await?;
            killed_at = Some(Instant::now());
        }
        let ok = published
            .publish(c.node(seq as usize % 3), "ticks", seq)
            .await;
        if let (Some(at), true) = (killed_at, ok) {
            resumed_after.get_or_insert(at.elapsed());
            ok_after_resume += 1;
        }
        for f in &mut followers {
            if f.is_connected() {
                f.pump(Duration::from_millis(5)).await?;
            }
        }
        sleep(Duration::from_millis(20)).await;
    }
    // Every follower is back in step through every node.
    for i in 0..3 {
        deliver_fresh(
            &mut published,
            c.node(i),
            "ticks",
            &mut seq,
            &mut followers,
            Duration::from_secs(15),
        )
        .await
        .with_context(|| format!("through node {i} after the failover"))?;
    }
    judge(&followers, &published).with_context(|| {
        format!(
            "refused {:?}, uncertain {:?}",
            published.refused, published.uncertain
        )
    })?;
    let resumed = resumed_after.context("no publish accepted after the kill")?;
    eprintln!(
        "{what} failover: first publish accepted {} ms after the kill; {} accepted, {} refused, {} uncertain; {} gap reports, {} resubscribes",
        resumed.as_millis(),
        published.ok.len(),
        published.refused.len(),
        published.uncertain.len(),
        followers.iter().map(|f| f.reported_at.len()).sum::<usize>(),
        followers.iter().map(|f| f.resubscribes).sum::<usize>(),
    );
    Ok(resumed)
}

/// SIGKILL for the master that holds channel `ticks`: the Sentinel master, or
/// the Cluster master of the channel's slot.
async fn kill_channel_master(c: &mut Cluster) -> anyhow::Result<()> {
    match c.broker() {
        BrokerProcess::RedisSentinel(set) => set.kill9_master().await.map(drop),
        BrokerProcess::RedisCluster(set) => set.kill9_master_of("{ticks}").await.map(drop),
        _ => anyhow::bail!("no replica to fail over to"),
    }
}

/// Redis Sentinel (1 master, 1 replica, 3 sentinels): see
/// [`master_killed_mid_publish`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_mid_publish_loses_nothing_silently() -> anyhow::Result<()> {
    master_killed_mid_publish(cluster(Engine::RedisSentinel).await?, "sentinel")
        .await
        .map(drop)
}

/// Redis Cluster (3 masters, a replica each): see [`master_killed_mid_publish`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_failover_mid_publish_loses_nothing_silently() -> anyhow::Result<()> {
    let c = Cluster::builder(Engine::RedisCluster)
        .redis_replicas()
        .config(|c| short_presence_ttl(Engine::RedisCluster, c))
        .start()
        .await?;
    c.wait_for_nodes(3, HEAR).await?;
    master_killed_mid_publish(c, "cluster").await.map(drop)
}

/// A small deterministic generator, so a failing chaos run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

tidings_testkit::per_engine_tests!(
    broker_restart_loses_nothing_silently,
    a_dead_nodes_clients_recover_elsewhere_and_its_presence_expires,
    lost_history_means_a_new_epoch_and_recovered_false,
    chaos_run_has_no_silent_gaps,
);
