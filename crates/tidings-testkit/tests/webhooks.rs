//! Webhooks against a real receiver (an axum app started by the test) that checks
//! every request as Pusher's libraries do: `X-Pusher-Key`, the HMAC-SHA256
//! `X-Pusher-Signature` of the exact body, `application/json`, a fresh `time_ms`.
//!
//! - channel_occupied / channel_vacated once per cluster-wide transition, and
//!   member_added / member_removed for the first and last connection of a user,
//!   across two nodes on Redis and on NATS;
//! - member_removed and channel_vacated told by a live node after `kill -9` of the
//!   node that held the member, within the presence TTL;
//! - receivers that answer 500 or never answer cost a control client nothing, and
//!   the events arrive once the receiver recovers.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tidings_testkit::cluster::{merge, Cluster, Engine, CLUSTER_SECRET};
use tidings_testkit::profile::open_config;
use tidings_testkit::{hs256_token, per_engine_tests, TidingsServer};

const KEY: &str = "webhook-key";
const SECRET: &str = "webhook-secret";
/// The engine's presence TTL here (entries are refreshed every second).
const TTL: Duration = Duration::from_secs(3);

/// What the receiver does with a request.
const ANSWER_OK: u8 = 0;
const ANSWER_500: u8 = 1;
const NEVER_ANSWER: u8 = 2;

#[derive(Default)]
struct Seen {
    /// Every event of every accepted request, in arrival order.
    events: Mutex<Vec<Value>>,
    /// Requests that failed the Pusher checks.
    invalid: AtomicUsize,
    requests: AtomicUsize,
    /// Requests with more than one event.
    batched: AtomicUsize,
    mode: AtomicU8,
}

struct Receiver {
    url: String,
    seen: Arc<Seen>,
    _task: tokio::task::JoinHandle<()>,
}

fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn hook(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    match seen.mode.load(Ordering::SeqCst) {
        ANSWER_500 => return StatusCode::INTERNAL_SERVER_ERROR,
        NEVER_ANSWER => std::future::pending::<()>().await,
        _ => {}
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let now_ms = tidings_testkit::unix_now() as i64 * 1000;
    let fresh = parsed
        .as_ref()
        .and_then(|v| v["time_ms"].as_i64())
        .is_some_and(|t| (now_ms - t).abs() < 300_000);
    let valid = header("x-pusher-key") == Some(KEY)
        && header("x-pusher-signature") == Some(hex_hmac(SECRET, &body).as_str())
        && header("content-type") == Some("application/json")
        && fresh;
    let Some(parsed) = parsed.filter(|_| valid) else {
        seen.invalid.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    };
    let events = parsed["events"].as_array().cloned().unwrap_or_default();
    if events.len() > 1 {
        seen.batched.fetch_add(1, Ordering::SeqCst);
    }
    seen.events.lock().unwrap().extend(events);
    StatusCode::OK
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/pusher", post(hook))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/pusher", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url,
            seen,
            _task: task,
        })
    }

    fn set_mode(&self, mode: u8) {
        self.seen.mode.store(mode, Ordering::SeqCst);
    }

    fn events(&self) -> Vec<Value> {
        self.seen.events.lock().unwrap().clone()
    }

    /// How many distinct events (by id) named `name` about `channel` (and `user`).
    fn count(&self, name: &str, channel: &str, user: Option<&str>) -> usize {
        let mut ids: Vec<String> = self
            .events()
            .into_iter()
            .filter(|e| e["name"] == name && e["channel"] == channel)
            .filter(|e| user.is_none_or(|u| e["user_id"] == u))
            .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    /// Waits until `count(name, channel, user)` reaches `n`.
    async fn wait_for(
        &self,
        n: usize,
        name: &str,
        channel: &str,
        user: Option<&str>,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.count(name, channel, user);
            if got >= n {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{name} {channel} {user:?}: {got} of {n} within {within:?}; seen {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn invalid(&self) -> usize {
        self.seen.invalid.load(Ordering::SeqCst)
    }
}

fn webhook(url: &str, events: &[&str]) -> Value {
    json!({
        "name": "app",
        "endpoint": url,
        "key": KEY,
        "secret": SECRET,
        "events": events,
        "timeout": "500ms",
        "retry_backoff_min": "100ms",
        "retry_backoff_max": "500ms",
    })
}

const CHANNEL_AND_MEMBER_EVENTS: [&str; 4] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
];

async fn two_nodes(engine: Engine, receiver: &Receiver) -> anyhow::Result<Cluster> {
    let ttl = format!("{}s", TTL.as_secs());
    let hooks = json!([webhook(&receiver.url, &CHANNEL_AND_MEMBER_EVENTS)]);
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
            c["webhooks"] = hooks;
        })
        .start()
        .await?;
    cluster.wait_for_nodes(2, Duration::from_secs(15)).await?;
    Ok(cluster)
}

async fn user_client(
    node: &TidingsServer,
    user: &str,
) -> anyhow::Result<tidings_testkit::WsClient> {
    let token = hs256_token(CLUSTER_SECRET, user, None)?;
    node.connected_client_with_token(&token).await
}

const WAIT: Duration = Duration::from_secs(15);

async fn occupancy_and_members_are_told_once_across_two_nodes(
    engine: Engine,
) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let cluster = two_nodes(engine, &receiver).await?;
    let (a, b) = (cluster.node(0), cluster.node(1));

    let mut alice_a = user_client(a, "alice").await?;
    alice_a.subscribe("room").await?;
    receiver
        .wait_for(1, "channel_occupied", "room", None, WAIT)
        .await?;
    receiver
        .wait_for(1, "member_added", "room", Some("alice"), WAIT)
        .await?;

    // A second node, a second connection of alice, and bob.
    let mut alice_b = user_client(b, "alice").await?;
    alice_b.subscribe("room").await?;
    let mut bob_b = user_client(b, "bob").await?;
    bob_b.subscribe("room").await?;
    receiver
        .wait_for(1, "member_added", "room", Some("bob"), WAIT)
        .await?;

    // alice leaves node A but is still in the room through node B.
    alice_a.close().await?;
    alice_b.close().await?;
    receiver
        .wait_for(1, "member_removed", "room", Some("alice"), WAIT)
        .await?;
    bob_b.close().await?;
    receiver
        .wait_for(1, "member_removed", "room", Some("bob"), WAIT)
        .await?;
    receiver
        .wait_for(1, "channel_vacated", "room", None, WAIT)
        .await?;

    // Past two TTLs (refreshes and reaps on both nodes), nothing was told twice.
    tokio::time::sleep(TTL * 2).await;
    for (name, user) in [
        ("channel_occupied", None),
        ("channel_vacated", None),
        ("member_added", Some("alice")),
        ("member_removed", Some("alice")),
        ("member_added", Some("bob")),
        ("member_removed", Some("bob")),
    ] {
        let n = receiver.count(name, "room", user);
        ensure!(
            n == 1,
            "{name} {user:?} told {n} times: {:?}",
            receiver.events()
        );
    }
    ensure!(
        receiver.invalid() == 0,
        "a request failed the Pusher checks"
    );
    Ok(())
}

async fn a_killed_nodes_members_are_removed_within_the_presence_ttl(
    engine: Engine,
) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let mut cluster = two_nodes(engine, &receiver).await?;
    let mut carol = user_client(cluster.node(0), "carol").await?;
    carol.subscribe("doomed").await?;
    receiver
        .wait_for(1, "member_added", "doomed", Some("carol"), WAIT)
        .await?;
    receiver
        .wait_for(1, "channel_occupied", "doomed", None, WAIT)
        .await?;

    cluster.kill9_node(0).await?;
    let killed = Instant::now();
    // The TTL, one refresh period for the reaper to run, and slack for a loaded
    // machine.
    let within = TTL + Duration::from_secs(10);
    receiver
        .wait_for(1, "member_removed", "doomed", Some("carol"), within)
        .await?;
    receiver
        .wait_for(1, "channel_vacated", "doomed", None, within)
        .await?;
    ensure!(
        killed.elapsed() >= TTL - Duration::from_millis(500),
        "removed before the entry could have expired"
    );
    tokio::time::sleep(TTL).await;
    ensure!(receiver.count("member_removed", "doomed", Some("carol")) == 1);
    ensure!(receiver.count("channel_vacated", "doomed", None) == 1);
    drop(carol);
    Ok(())
}

per_engine_tests!(
    occupancy_and_members_are_told_once_across_two_nodes,
    a_killed_nodes_members_are_removed_within_the_presence_ttl,
);

/// A node on the memory engine with one webhook for every event.
async fn single_node(receiver: &Receiver) -> anyhow::Result<TidingsServer> {
    let mut config = open_config("api-key", CLUSTER_SECRET);
    let mut all = CHANNEL_AND_MEMBER_EVENTS.to_vec();
    all.push("client_event");
    merge(
        &mut config,
        &json!({
            "client": {"presence_update_interval": "1s"},
            "webhooks": [webhook(&receiver.url, &all)],
        }),
    );
    TidingsServer::builder()
        .config_json(config)
        .api_key("api-key")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_cost_clients_nothing_and_events_arrive_after_recovery(
) -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let node = single_node(&receiver).await?;
    let mut control = user_client(&node, "ctl").await?;
    control.subscribe("control").await?;

    for mode in [ANSWER_500, NEVER_ANSWER] {
        receiver.set_mode(mode);
        let asked = receiver.seen.requests.load(Ordering::SeqCst);
        // Events pile up: a client publication (client_event) and a member.
        let mut dave = user_client(&node, "dave").await?;
        dave.subscribe(&format!("busy-{mode}")).await?;
        dave.publish(&format!("busy-{mode}"), json!({"n": mode}))
            .await?;
        // The receiver is being asked (and failing) ...
        let deadline = Instant::now() + WAIT;
        while receiver.seen.requests.load(Ordering::SeqCst) < asked + 2 {
            ensure!(Instant::now() < deadline, "no retries seen in mode {mode}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ... while the control client publishes and receives as usual.
        for i in 0..5 {
            node.publish("control", json!({"i": i})).await?;
            let push = control.next_push_of("pub", "control").await?;
            ensure!(push.to_string().contains(&format!("\"i\":{i}")), "{push}");
        }
        dave.close().await?;
    }

    // The receiver recovers: everything queued or retried arrives.
    receiver.set_mode(ANSWER_OK);
    for mode in [ANSWER_500, NEVER_ANSWER] {
        let channel = format!("busy-{mode}");
        receiver
            .wait_for(1, "channel_occupied", &channel, None, WAIT)
            .await?;
        receiver
            .wait_for(1, "member_added", &channel, Some("dave"), WAIT)
            .await?;
        receiver
            .wait_for(1, "client_event", &channel, None, WAIT)
            .await?;
        receiver
            .wait_for(1, "member_removed", &channel, Some("dave"), WAIT)
            .await?;
        receiver
            .wait_for(1, "channel_vacated", &channel, None, WAIT)
            .await?;
    }
    let client_event = receiver
        .events()
        .into_iter()
        .find(|e| e["name"] == "client_event")
        .context("a client_event")?;
    ensure!(client_event["event"] == "publication", "{client_event}");
    ensure!(client_event["user_id"] == "dave", "{client_event}");
    ensure!(client_event["socket_id"].is_string(), "{client_event}");
    let data: Value = serde_json::from_str(client_event["data"].as_str().context("data")?)?;
    ensure!(data["n"].is_number(), "{client_event}");
    ensure!(
        receiver.invalid() == 0,
        "a request failed the Pusher checks"
    );
    ensure!(
        receiver.seen.batched.load(Ordering::SeqCst) > 0,
        "the queued events came one per request"
    );
    Ok(())
}

/// With online status on, a user's first connection and last one are told as
/// `user_online` and `user_offline` (no channel), once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_online_and_offline_are_told_once() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let mut config = open_config("api-key", CLUSTER_SECRET);
    merge(
        &mut config,
        &json!({
            "client": {"presence_update_interval": "1s"},
            "online_status": {"enabled": true},
            "webhooks": [webhook(&receiver.url, &["user_online", "user_offline"])],
        }),
    );
    config["channel"]["namespaces"] = json!([{
        "name": "status", "history_size": 1, "history_ttl": "1h",
    }]);
    let node = TidingsServer::builder()
        .config_json(config)
        .api_key("api-key")
        .start()
        .await?;
    let told = |name: &str| {
        receiver
            .events()
            .into_iter()
            .filter(|e| e["name"] == name && e["user_id"] == "eve")
            .count()
    };
    let first = user_client(&node, "eve").await?;
    let second = user_client(&node, "eve").await?;
    let deadline = Instant::now() + WAIT;
    while told("user_online") == 0 {
        ensure!(
            Instant::now() < deadline,
            "no user_online: {:?}",
            receiver.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.close().await?;
    second.close().await?;
    while told("user_offline") == 0 {
        ensure!(
            Instant::now() < deadline,
            "no user_offline: {:?}",
            receiver.events()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past two refresh periods, still once each; user events carry no channel.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        told("user_online") == 1 && told("user_offline") == 1,
        "{:?}",
        receiver.events()
    );
    ensure!(
        receiver.events().iter().all(|e| e.get("channel").is_none()),
        "{:?}",
        receiver.events()
    );
    ensure!(
        receiver.invalid() == 0,
        "a request failed the Pusher checks"
    );
    Ok(())
}
