//! The NATS engine against a real `nats-server -js` (started by the testkit on a
//! free port): history semantics mirrored from the memory broker's tests, fan-out,
//! join/leave and control between two brokers, presence with a short TTL, server
//! crashes with and without data loss, subject safety, and backend publishes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tidings::broker::{Broker, BrokerError, BrokerEventHandler, HistoryFilter, PublishOptions};
use tidings::config::NatsEngineConfig;
use tidings::engine::nats::{NatsBroker, NatsConnection, NatsPresenceManager};
use tidings::engine::{IngestError, IngestPublish};
use tidings::presence::PresenceManager;
use tidings_protocol::{ClientInfo, Publication, RawJson, StreamPosition};
use tidings_testkit::NatsServer;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Publication(String, u64, String),
    Join(String, String),
    Leave(String, String),
    Control(Vec<u8>),
}

/// Records what a broker delivers.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    /// The epochs publications came with from a channel's stream, by channel.
    epochs: Mutex<std::collections::BTreeSet<(String, String)>>,
    reconnects: AtomicUsize,
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    fn publications(&self, channel: &str) -> Vec<(u64, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Publication(c, offset, data) if c == channel => Some((offset, data)),
                _ => None,
            })
            .collect()
    }

    fn epochs(&self, channel: &str) -> Vec<String> {
        self.epochs
            .lock()
            .iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &str, publication: &Publication) {
        let data = publication
            .data
            .as_ref()
            .map(|d| d.as_str().to_string())
            .unwrap_or_default();
        self.events.lock().push(Event::Publication(
            channel.to_string(),
            publication.offset,
            data,
        ));
    }
    fn handle_stream_publication(&self, channel: &str, publication: &Publication, epoch: &str) {
        self.epochs
            .lock()
            .insert((channel.to_string(), epoch.to_string()));
        self.handle_publication(channel, publication);
    }
    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.events
            .lock()
            .push(Event::Join(channel.to_string(), info.client.clone()));
    }
    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.events
            .lock()
            .push(Event::Leave(channel.to_string(), info.client.clone()));
    }
    fn handle_control(&self, data: &[u8]) {
        self.events.lock().push(Event::Control(data.to_vec()));
    }
    fn handle_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `check` until it holds or [`WAIT`] passes.
async fn until(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Returns once the server has taken in every subscription `client` made before.
///
/// `Client::flush` of async-nats is not enough: it only writes the buffered bytes
/// to the socket, and the server reads each connection on its own, so a message
/// another connection (here the broker's JetStream republish) sends right after may
/// reach the subject before the server has read the SUB, and is then dropped for
/// want of interest. A request to a subject nobody serves comes back "no
/// responders" only after the server has handled everything this connection sent
/// before it, the SUB included.
async fn subscribed(client: &async_nats::Client) -> anyhow::Result<()> {
    match client.request("t.barrier", Bytes::new()).await {
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        other => bail!("round trip to the server: expected no responders, got {other:?}"),
    }
}

fn config(url: &str) -> NatsEngineConfig {
    NatsEngineConfig {
        url: url.to_string(),
        prefix: "t".into(),
        presence_ttl: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

struct Node {
    broker: Arc<NatsBroker>,
    events: Arc<Recorder>,
}

async fn node_with(cfg: &NatsEngineConfig, uid: &str) -> anyhow::Result<Node> {
    let conn = NatsConnection::start(cfg).map_err(anyhow::Error::msg)?;
    let broker = Arc::new(NatsBroker::new(conn));
    let events = Arc::new(Recorder::default());
    broker.run(uid, events.clone());
    if !broker.wait_ready(WAIT).await {
        bail!("broker not ready");
    }
    Ok(Node { broker, events })
}

async fn node(url: &str, uid: &str) -> anyhow::Result<Node> {
    node_with(&config(url), uid).await
}

fn opts() -> PublishOptions {
    PublishOptions {
        history_size: 3,
        history_ttl: Duration::from_secs(60),
        idempotency_key: None,
    }
}

/// Options that publish with this idempotency key.
fn keyed(key: &str) -> PublishOptions {
    PublishOptions {
        idempotency_key: Some(key.into()),
        ..Default::default()
    }
}

fn publication(n: u32) -> Publication {
    Publication {
        data: Some(RawJson::from_value(&n)),
        ..Default::default()
    }
}

fn since(offset: u64, epoch: &str) -> HistoryFilter {
    HistoryFilter {
        since: Some(StreamPosition {
            offset,
            epoch: epoch.to_string(),
        }),
        ..Default::default()
    }
}

fn offsets(page: &tidings::broker::HistoryPage) -> Vec<u64> {
    page.publications.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn offsets_grow_history_is_bounded_and_trimmed_positions_are_unrecoverable(
) -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let mut epoch = String::new();
    for n in 0..5 {
        let pos = a.broker.publish("c", publication(n), opts()).await?;
        assert_eq!(pos.offset, u64::from(n) + 1);
        if !epoch.is_empty() {
            assert_eq!(pos.epoch, epoch, "the epoch stays while the stream lives");
        }
        epoch = pos.epoch;
    }
    let page = a.broker.history("c", HistoryFilter::default()).await?;
    assert_eq!(offsets(&page), vec![3, 4, 5]);
    assert_eq!(page.position.offset, 5);
    assert_eq!(page.position.epoch, epoch);
    let data: Vec<String> = page
        .publications
        .iter()
        .map(|p| p.data.as_ref().unwrap().as_str().to_string())
        .collect();
    assert_eq!(data, vec!["2", "3", "4"]);

    assert!(matches!(
        a.broker.history("c", since(1, &epoch)).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    assert_eq!(
        offsets(&a.broker.history("c", since(2, &epoch)).await?),
        vec![3, 4, 5]
    );
    assert!(a
        .broker
        .history("c", since(5, &epoch))
        .await?
        .publications
        .is_empty());
    // Ahead of the stream, or another epoch: unrecoverable.
    assert!(matches!(
        a.broker.history("c", since(6, &epoch)).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    assert!(matches!(
        a.broker.history("c", since(4, "other")).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    Ok(())
}

#[tokio::test]
async fn concurrent_publishers_on_two_nodes_get_contiguous_offsets_in_one_epoch(
) -> anyhow::Result<()> {
    race_on_two_nodes(true).await
}

/// The same race on a channel whose stream does not exist yet, so both nodes try to
/// create it at once (they agree on its epoch through a KV claim first).
#[tokio::test]
async fn two_nodes_creating_a_channels_stream_at_once_agree_on_its_epoch() -> anyhow::Result<()> {
    race_on_two_nodes(false).await
}

/// 40 publications from two nodes at once on channel `race`; with `warm`, both
/// nodes have read the channel (and so created or found its stream) first.
async fn race_on_two_nodes(warm: bool) -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let b = node(&server.url(), "b").await?;
    a.broker.subscribe("race").await?;
    if warm {
        let first = a.broker.history("race", HistoryFilter::default()).await?;
        let second = b.broker.history("race", HistoryFilter::default()).await?;
        assert_eq!(first.position, second.position);
    }
    let many = PublishOptions {
        history_size: 100,
        ..opts()
    };
    let mut tasks = Vec::new();
    for n in 0..40u32 {
        let broker = if n % 2 == 0 {
            a.broker.clone()
        } else {
            b.broker.clone()
        };
        let o = many.clone();
        tasks.push(tokio::spawn(async move {
            broker.publish("race", publication(n), o).await
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        positions.push(t.await??);
    }
    let epochs: std::collections::HashSet<_> = positions.iter().map(|p| p.epoch.clone()).collect();
    assert_eq!(epochs.len(), 1, "one stream, one epoch: {epochs:?}");
    let epoch = positions[0].epoch.clone();
    let mut published: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    published.sort_unstable();
    assert_eq!(published, (1..=40).collect::<Vec<u64>>());
    // Every publication is in the one stream, which both nodes find.
    for n in [&a, &b] {
        let page = n.broker.history("race", HistoryFilter::default()).await?;
        assert_eq!(
            page.position,
            StreamPosition {
                offset: 40,
                epoch: epoch.clone()
            }
        );
        assert_eq!(offsets(&page), (1..=40).collect::<Vec<u64>>());
    }
    // Each delivered once, from that stream. The order may differ from the
    // offsets': the server republishes after it has let go of the stream, so two
    // publishes from two connections can go out swapped (the node handles that,
    // see docs/engines.md).
    until("every delivery", || {
        a.events.publications("race").len() >= 40
    })
    .await?;
    let mut delivered: Vec<u64> = a
        .events
        .publications("race")
        .iter()
        .map(|(o, _)| *o)
        .collect();
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=40).collect::<Vec<u64>>());
    assert_eq!(a.events.epochs("race"), vec![epoch]);
    Ok(())
}

/// Many nodes reading (and so creating) the streams of new channels at the same
/// moment all end up with one stream, and one epoch, per channel.
#[tokio::test]
async fn many_nodes_creating_streams_at_once_agree_on_each_epoch() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    // Six nodes' requests at once on a loaded machine can take seconds: the
    // default request timeout, not the tests' short one.
    let cfg = NatsEngineConfig {
        request_timeout: NatsEngineConfig::default().request_timeout,
        ..config(&server.url())
    };
    let mut nodes = Vec::new();
    for uid in ["a", "b", "c", "d", "e", "f"] {
        nodes.push(node_with(&cfg, uid).await?);
    }
    for round in 0..40 {
        let channel = format!("fresh{round}");
        let reads = nodes.iter().map(|n| {
            let broker = n.broker.clone();
            let channel = channel.clone();
            tokio::spawn(async move { broker.history(&channel, HistoryFilter::default()).await })
        });
        let mut seen = std::collections::HashSet::new();
        for read in futures_util::future::join_all(reads).await {
            let position = read??.position;
            seen.insert((position.offset, position.epoch));
        }
        assert_eq!(seen.len(), 1, "{channel}: one position: {seen:?}");
        // A publication through any node lands in that stream.
        let epoch = seen.into_iter().next().map(|p| p.1).unwrap_or_default();
        let n = &nodes[round % nodes.len()];
        let pos = n.broker.publish(&channel, publication(1), opts()).await?;
        assert_eq!((pos.offset, pos.epoch.as_str()), (1, epoch.as_str()));
    }
    Ok(())
}

/// The interleaving that used to give two epochs, forced: another node has
/// claimed an epoch for the channel's stream but not created the stream yet. This
/// node creates the stream with that epoch, and takes the claim back, so the stream
/// made after this one is lost gets a new epoch.
#[tokio::test]
async fn a_node_creates_a_stream_with_the_epoch_another_node_claimed() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    // The claim bucket exists once a node has created a stream.
    a.broker.history("warmup", HistoryFilter::default()).await?;
    let other = async_nats::connect(server.url()).await?;
    let js = async_nats::jetstream::new(other);
    let claims = js.get_key_value("t_epochs").await?;
    claims
        .create("t_history_claimed", Bytes::from_static(b"claimedEpoch1"))
        .await?;

    let pos = a.broker.publish("claimed", publication(1), opts()).await?;
    assert_eq!((pos.offset, pos.epoch.as_str()), (1, "claimedEpoch1"));
    let page = a
        .broker
        .history("claimed", HistoryFilter::default())
        .await?;
    assert_eq!(page.position, pos);
    assert!(
        claims.get("t_history_claimed").await?.is_none(),
        "the claim is taken back once the stream exists"
    );

    // The stream is lost: the next one gets a fresh epoch, not the old claim.
    js.delete_stream("t_history_claimed").await?;
    let again = a.broker.publish("claimed", publication(2), opts()).await?;
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, "claimedEpoch1");
    // A claim that is not an epoch is refused, not put into a subject.
    js.delete_stream("t_history_claimed").await?;
    claims
        .create("t_history_claimed", Bytes::from_static(b"not.an epoch"))
        .await?;
    assert!(matches!(
        a.broker.history("claimed", HistoryFilter::default()).await,
        Err(BrokerError::Backend(_))
    ));
    Ok(())
}

#[tokio::test]
async fn an_unpublished_channel_has_the_epoch_later_publications_get() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let page = a.broker.history("quiet", HistoryFilter::default()).await?;
    assert_eq!(page.position.offset, 0);
    assert!(!page.position.epoch.is_empty());
    let pos = a.broker.publish("quiet", publication(1), opts()).await?;
    assert_eq!(pos.epoch, page.position.epoch);
    assert_eq!(pos.offset, 1);
    let page = a.broker.history("quiet", since(0, "")).await?;
    assert_eq!(offsets(&page), vec![1]);
    assert!(matches!(
        a.broker.history("quiet", since(0, "other")).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    Ok(())
}

#[tokio::test]
async fn a_retried_idempotent_publish_is_published_once() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let b = node(&server.url(), "b").await?;
    a.broker.subscribe("c").await?;
    let keyed = PublishOptions {
        idempotency_key: Some("k".into()),
        ..opts()
    };
    let first = a.broker.publish("c", publication(1), keyed.clone()).await?;
    // The retry may come through another node.
    let again = b.broker.publish("c", publication(1), keyed).await?;
    assert_eq!(first, again);
    let other = a.broker.publish("c", publication(2), opts()).await?;
    assert_eq!(other.offset, 2);
    let page = a.broker.history("c", HistoryFilter::default()).await?;
    assert_eq!(offsets(&page), vec![1, 2]);
    until("both deliveries", || a.events.publications("c").len() == 2).await?;
    assert_eq!(
        a.events.publications("c"),
        vec![(1, "1".to_string()), (2, "2".to_string())]
    );
    Ok(())
}

#[tokio::test]
async fn an_idempotent_publish_without_history_is_published_once() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let b = node(&server.url(), "b").await?;
    a.broker.subscribe("live").await?;
    a.broker.publish("live", publication(1), keyed("k")).await?;
    b.broker.publish("live", publication(1), keyed("k")).await?;
    // The same key in another channel is another key.
    a.broker
        .publish("other", publication(5), keyed("k"))
        .await?;
    a.broker
        .publish("live", publication(2), keyed("k2"))
        .await?;
    until("two deliveries", || {
        a.events.publications("live").len() >= 2
    })
    .await?;
    a.broker
        .publish("live", publication(3), PublishOptions::default())
        .await?;
    until("the last one", || a.events.publications("live").len() >= 3).await?;
    assert_eq!(
        a.events.publications("live"),
        vec![
            (0, "1".to_string()),
            (0, "2".to_string()),
            (0, "3".to_string())
        ]
    );
    Ok(())
}

/// A publish whose claim of an idempotency key was stored although its create
/// timed out (so the publish failed and published nothing) left a pending claim;
/// the caller's retry with the same key must publish, not be taken for a
/// duplicate. The stored-but-timed-out claim is written here directly, in the
/// claim format of docs/engines.md.
#[tokio::test]
async fn a_retry_after_a_claim_that_was_stored_but_timed_out_publishes() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let b = node(&server.url(), "b").await?;
    a.broker.subscribe("live").await?;
    // Makes the bucket.
    a.broker
        .publish("live", publication(0), keyed("warm"))
        .await?;
    let client = async_nats::connect(server.url()).await?;
    let kv = async_nats::jetstream::new(client)
        .get_key_value("t_idempotency")
        .await?;
    kv.put("live.k", Bytes::from_static(b"pending:lostcreate"))
        .await?;

    b.broker.publish("live", publication(1), keyed("k")).await?;
    // Now it went out: the same key again is a duplicate.
    a.broker.publish("live", publication(1), keyed("k")).await?;
    a.broker
        .publish("live", publication(2), PublishOptions::default())
        .await?;
    until("the last one", || {
        a.events.publications("live").last() == Some(&(0, "2".to_string()))
    })
    .await?;
    assert_eq!(
        a.events.publications("live"),
        vec![
            (0, "0".to_string()),
            (0, "1".to_string()),
            (0, "2".to_string())
        ]
    );
    Ok(())
}

/// Two publishes with one key at the same moment, through two nodes: one goes out.
#[tokio::test]
async fn concurrent_publishes_with_one_key_publish_once() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let b = node(&server.url(), "b").await?;
    a.broker.subscribe("live").await?;
    for round in 0..20u32 {
        let key = format!("k{round}");
        let (x, y) = tokio::join!(
            a.broker.publish("live", publication(round), keyed(&key)),
            b.broker.publish("live", publication(round), keyed(&key)),
        );
        x?;
        y?;
    }
    a.broker
        .publish("live", publication(999), PublishOptions::default())
        .await?;
    until("the last one", || {
        a.events.publications("live").last() == Some(&(0, "999".to_string()))
    })
    .await?;
    let got: Vec<String> = a
        .events
        .publications("live")
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let mut want: Vec<String> = (0..20u32).map(|n| n.to_string()).collect();
    want.push("999".into());
    assert_eq!(got, want);
    Ok(())
}

/// Publications from several nodes at once reach a subscribing node in offset
/// order, each once, although the server may republish them swapped (it sends a
/// stored message after letting go of the stream): the broker holds one that comes
/// early for a moment until the missing one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_from_four_nodes_arrive_in_offset_order() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let watcher = node(&server.url(), "watcher").await?;
    let mut publishers = Vec::new();
    for n in 0..4 {
        publishers.push(node(&server.url(), &format!("p{n}")).await?);
    }
    watcher.broker.subscribe("order").await?;
    watcher
        .broker
        .history("order", HistoryFilter::default())
        .await?;
    let many = PublishOptions {
        history_size: 10_000,
        ..opts()
    };
    const EACH: u32 = 300;
    let mut tasks = Vec::new();
    for (i, p) in publishers.iter().enumerate() {
        // Two publishing tasks per node, so that publishes from every connection
        // overlap all the time.
        for half in 0..2u32 {
            let broker = p.broker.clone();
            let o = many.clone();
            let base = (i as u32) * 10_000 + half * 1_000;
            tasks.push(tokio::spawn(async move {
                for n in 0..EACH / 2 {
                    broker
                        .publish("order", publication(base + n), o.clone())
                        .await?;
                }
                Ok::<_, BrokerError>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let total = 4 * EACH as usize;
    until("every publication", || {
        watcher.events.publications("order").len() >= total
    })
    .await?;
    let got: Vec<u64> = watcher
        .events
        .publications("order")
        .iter()
        .map(|(o, _)| *o)
        .collect();
    let want: Vec<u64> = (1..=total as u64).collect();
    if got != want {
        let swapped: Vec<_> = got
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect();
        bail!("{} deliveries, out of order at {swapped:?}", got.len());
    }
    Ok(())
}

/// A publication that comes after a hole that never fills (here forged: a
/// republish of offset 4 right after offset 1) is still handed on, once the short
/// wait for the missing ones is over, so the node sees the gap and makes the
/// channel's subscribers recover.
#[tokio::test]
async fn a_hole_that_never_fills_is_handed_on_after_the_wait() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let watcher = node(&server.url(), "watcher").await?;
    let publisher = node(&server.url(), "p").await?;
    watcher.broker.subscribe("holes").await?;
    let first = publisher
        .broker
        .publish("holes", publication(1), opts())
        .await?;
    until("offset 1", || {
        watcher.events.publications("holes").len() == 1
    })
    .await?;
    let client = async_nats::connect(server.url()).await?;
    let forged = |offset: u64, n: u32| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Tidings-Kind", "pub");
        headers.insert("Nats-Sequence", offset.to_string().as_str());
        headers.insert(
            "Nats-Subject",
            format!("t.history.holes.{}", first.epoch).as_str(),
        );
        let body = Bytes::from(serde_json::to_vec(&publication(n)).expect("json"));
        (headers, body)
    };
    let (h, b) = forged(4, 40);
    client.publish_with_headers("t.client.holes", h, b).await?;
    let (h, b) = forged(5, 50);
    client.publish_with_headers("t.client.holes", h, b).await?;
    client.flush().await?;
    until("offsets 4 and 5", || {
        watcher.events.publications("holes").len() == 3
    })
    .await?;
    assert_eq!(
        watcher.events.publications("holes"),
        vec![
            (1, "1".to_string()),
            (4, "40".to_string()),
            (5, "50".to_string())
        ]
    );
    assert_eq!(watcher.events.epochs("holes"), vec![first.epoch]);
    Ok(())
}

#[tokio::test]
async fn limit_and_reverse() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let five = PublishOptions {
        history_size: 10,
        ..opts()
    };
    let mut epoch = String::new();
    for n in 0..5 {
        epoch = a
            .broker
            .publish("c", publication(n), five.clone())
            .await?
            .epoch;
    }
    let read = |limit, reverse, since: Option<u64>| HistoryFilter {
        since: since.map(|offset| StreamPosition {
            offset,
            epoch: epoch.clone(),
        }),
        limit,
        reverse,
    };
    assert_eq!(
        offsets(&a.broker.history("c", read(Some(2), false, None)).await?),
        vec![1, 2]
    );
    assert_eq!(
        offsets(&a.broker.history("c", read(Some(2), true, None)).await?),
        vec![5, 4]
    );
    assert_eq!(
        offsets(&a.broker.history("c", read(None, true, None)).await?),
        vec![5, 4, 3, 2, 1]
    );
    assert_eq!(
        offsets(&a.broker.history("c", read(Some(2), false, Some(1))).await?),
        vec![2, 3]
    );
    // Backwards from a position: the ones before it.
    assert_eq!(
        offsets(&a.broker.history("c", read(Some(2), true, Some(4))).await?),
        vec![3, 2]
    );
    assert_eq!(
        offsets(&a.broker.history("c", read(None, true, Some(2))).await?),
        vec![1]
    );
    let only_position = a.broker.history("c", read(Some(0), false, None)).await?;
    assert!(only_position.publications.is_empty());
    assert_eq!(only_position.position.offset, 5);
    Ok(())
}

#[tokio::test]
async fn remove_history_keeps_the_position() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let mut pos = StreamPosition::default();
    for n in 0..3 {
        pos = a.broker.publish("c", publication(n), opts()).await?;
    }
    a.broker.remove_history("c").await?;
    a.broker.remove_history("never-published").await?;
    let page = a.broker.history("c", HistoryFilter::default()).await?;
    assert!(page.publications.is_empty());
    assert_eq!(page.position, pos);
    // Recovery across the removal is impossible.
    assert!(matches!(
        a.broker.history("c", since(1, &pos.epoch)).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    let next = a.broker.publish("c", publication(9), opts()).await?;
    assert_eq!(next.offset, 4);
    assert_eq!(next.epoch, pos.epoch);
    Ok(())
}

#[tokio::test]
async fn the_sweep_deletes_streams_nobody_needs() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    // Read but never published: one with a subscriber here, one without.
    let ghost = a.broker.history("ghost", HistoryFilter::default()).await?;
    a.broker.subscribe("watched").await?;
    a.broker
        .history("watched", HistoryFilter::default())
        .await?;
    let live = a.broker.publish("live", publication(1), opts()).await?;

    // Long thresholds: nothing goes.
    let day = Duration::from_secs(86_400);
    assert_eq!(a.broker.sweep(day, day).await?, 0);
    // Empty streams of unwatched channels go at once; published ones stay.
    assert_eq!(a.broker.sweep(Duration::ZERO, day).await?, 1);
    let again = a.broker.history("ghost", HistoryFilter::default()).await?;
    assert_ne!(
        again.position.epoch, ghost.position.epoch,
        "ghost was recreated"
    );
    let page = a.broker.history("live", HistoryFilter::default()).await?;
    assert_eq!(page.position, live);
    // Streams whose last publication is older than the meta TTL go too.
    assert_eq!(a.broker.sweep(day, Duration::ZERO).await?, 1);
    let page = a.broker.history("live", HistoryFilter::default()).await?;
    assert_ne!(page.position.epoch, live.epoch);
    assert_eq!(page.position.offset, 0);
    // A publish after the sweep finds its stream gone and makes a new one.
    let next = a.broker.publish("live", publication(2), opts()).await?;
    assert_eq!(
        (next.offset, next.epoch.as_str()),
        (1, page.position.epoch.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn history_ttl_drops_old_publications() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let short = PublishOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(1),
        idempotency_key: None,
    };
    let pos = a.broker.publish("c", publication(1), short).await?;
    let broker = a.broker.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = broker.history("c", HistoryFilter::default()).await?;
        if page.publications.is_empty() {
            assert_eq!(page.position, pos);
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("publication outlived its TTL");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn two_brokers_see_each_others_publications_joins_leaves_and_control() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "node-a").await?;
    let b = node(&server.url(), "node-b").await?;
    a.broker.subscribe("room").await?;
    b.broker.subscribe("room").await?;
    b.broker.subscribe("plain").await?;

    let pos = a.broker.publish("room", publication(7), opts()).await?;
    b.broker
        .publish("plain", publication(8), PublishOptions::default())
        .await?;
    until("a's publication on b", || {
        !b.events.publications("room").is_empty()
    })
    .await?;
    until("a's publication on a", || {
        !a.events.publications("room").is_empty()
    })
    .await?;
    assert_eq!(
        b.events.publications("room"),
        vec![(pos.offset, "7".to_string())]
    );
    until("plain on b", || !b.events.publications("plain").is_empty()).await?;
    assert_eq!(b.events.publications("plain"), vec![(0, "8".to_string())]);
    assert!(
        a.events.publications("plain").is_empty(),
        "a is not subscribed to plain"
    );

    let info = ClientInfo {
        user: "u".into(),
        client: "c1".into(),
        ..Default::default()
    };
    b.broker.publish_join("room", info.clone()).await?;
    b.broker.publish_leave("room", info).await?;
    let want = [
        Event::Join("room".into(), "c1".into()),
        Event::Leave("room".into(), "c1".into()),
    ];
    for n in [&a, &b] {
        until("join and leave", || {
            let ev = n.events.events();
            want.iter().all(|w| ev.contains(w))
        })
        .await?;
    }

    a.broker
        .publish_control(Bytes::from_static(b"to-all"), None)
        .await?;
    b.broker
        .publish_control(Bytes::from_static(b"to-a"), Some("node-a"))
        .await?;
    let all = Event::Control(b"to-all".to_vec());
    let to_a = Event::Control(b"to-a".to_vec());
    until("broadcast everywhere and targeted on a", || {
        a.events.events().contains(&all)
            && b.events.events().contains(&all)
            && a.events.events().contains(&to_a)
    })
    .await?;
    // A round trip through b after the targeted message: had b received it, it
    // would be recorded by now.
    b.broker
        .publish_control(Bytes::from_static(b"marker"), Some("node-b"))
        .await?;
    until("marker", || {
        b.events
            .events()
            .contains(&Event::Control(b"marker".to_vec()))
    })
    .await?;
    assert!(!b.events.events().contains(&to_a));

    // After unsubscribing, b gets nothing more from the channel.
    b.broker.unsubscribe("room").await?;
    a.broker.publish("room", publication(9), opts()).await?;
    until("second publication on a", || {
        a.events.publications("room").len() == 2
    })
    .await?;
    b.broker
        .publish_control(Bytes::from_static(b"marker2"), Some("node-b"))
        .await?;
    until("marker2", || {
        b.events
            .events()
            .contains(&Event::Control(b"marker2".to_vec()))
    })
    .await?;
    assert_eq!(b.events.publications("room").len(), 1);
    Ok(())
}

#[tokio::test]
async fn wildcard_and_separator_channel_names_stay_apart() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let names = ["a.*", ">", "a.b", "a", "a b", "*", "a.>", "news:1", "é"];
    for n in names {
        a.broker.subscribe(n).await?;
    }
    for (i, n) in names.iter().enumerate() {
        let with_history = i % 2 == 0;
        let o = if with_history {
            opts()
        } else {
            PublishOptions::default()
        };
        a.broker.publish(n, publication(i as u32), o).await?;
    }
    until("one publication per channel", || {
        names.iter().all(|n| !a.events.publications(n).is_empty())
    })
    .await?;
    // A last one, so that anything misrouted before it has arrived too.
    a.broker
        .publish("a", publication(99), PublishOptions::default())
        .await?;
    until("the last one", || a.events.publications("a").len() == 2).await?;
    for (i, n) in names.iter().enumerate() {
        let got: Vec<String> = a
            .events
            .publications(n)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        let mut want = vec![i.to_string()];
        if *n == "a" {
            want.push("99".into());
        }
        assert_eq!(got, want, "channel {n:?} got another channel's publication");
    }
    // Histories are separate too.
    let page = a.broker.history(">", HistoryFilter::default()).await;
    assert!(page.is_ok());
    let star = a.broker.history("a.*", HistoryFilter::default()).await?;
    assert_eq!(star.publications.len(), 1);
    Ok(())
}

#[tokio::test]
async fn presence_is_shared_and_expires_without_refresh() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let cfg = config(&server.url());
    let conn_a = NatsConnection::start(&cfg).map_err(anyhow::Error::msg)?;
    let conn_b = NatsConnection::start(&cfg).map_err(anyhow::Error::msg)?;
    assert!(conn_a.wait_connected(WAIT).await && conn_b.wait_connected(WAIT).await);
    let a = NatsPresenceManager::new(conn_a);
    let b = NatsPresenceManager::new(conn_b);
    let info = |user: &str, client: &str| ClientInfo {
        user: user.into(),
        client: client.into(),
        ..Default::default()
    };
    a.add("room.1", info("u1", "c1")).await?;
    a.add("room.1", info("u1", "c2")).await?;
    b.add("room.1", info("u2", "c3")).await?;
    b.add("room.2", info("u3", "c4")).await?;
    let seen = b.presence("room.1").await?;
    let mut clients: Vec<_> = seen.keys().cloned().collect();
    clients.sort();
    assert_eq!(clients, vec!["c1", "c2", "c3"]);
    assert_eq!(seen["c3"].user, "u2");
    let stats = a.stats("room.1").await?;
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    assert!(a.presence("nobody-here").await?.is_empty());

    a.remove("room.1", "c2").await?;
    let after: Vec<_> = b.presence("room.1").await?.into_keys().collect();
    assert_eq!(after.len(), 2);
    assert!(!after.contains(&"c2".to_string()));

    // Refreshed entries stay, the others leave within the TTL (1 s).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        a.add("room.1", info("u1", "c1")).await?;
        let now: Vec<_> = b.presence("room.1").await?.into_keys().collect();
        if now == vec!["c1".to_string()] {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("unrefreshed presence did not expire: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Presence refreshes rewrite every entry all the time; a read made meanwhile must
/// still list every client once (nats-server 2.9 can deliver a message twice and a
/// rewritten key late while a key changes under the reading consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_list_everyone_while_entries_are_rewritten() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let mut cfg = config(&server.url());
    cfg.presence_ttl = Duration::from_secs(60);
    let conn_a = NatsConnection::start(&cfg).map_err(anyhow::Error::msg)?;
    let conn_b = NatsConnection::start(&cfg).map_err(anyhow::Error::msg)?;
    assert!(conn_a.wait_connected(WAIT).await && conn_b.wait_connected(WAIT).await);
    let writer = Arc::new(NatsPresenceManager::new(conn_a));
    let reader = NatsPresenceManager::new(conn_b);
    const CLIENTS: usize = 8;
    let info = |n: usize| ClientInfo {
        user: format!("u{n}"),
        client: format!("c{n}"),
        ..Default::default()
    };
    for n in 0..CLIENTS {
        writer.add("room", info(n)).await?;
    }
    // Rewrites the entries, one after another, until the reads are done (at most
    // 20,000 writes).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rewrites = tokio::spawn({
        let (writer, stop) = (writer.clone(), stop.clone());
        async move {
            for i in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                writer.add("room", info(i % CLIENTS)).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    let mut short = Vec::new();
    for _ in 0..300 {
        let seen = reader.presence("room").await?;
        if seen.len() != CLIENTS {
            let mut clients: Vec<_> = seen.into_keys().collect();
            clients.sort();
            short.push(clients);
        }
    }
    stop.store(true, Ordering::SeqCst);
    rewrites.await??;
    assert!(
        short.is_empty(),
        "{} reads missed clients: {short:?}",
        short.len()
    );
    Ok(())
}

/// A read while the entries are rewritten now and then (as every node refreshes
/// its clients) answers at once. Reading through a consumer, it used to wait for
/// write after write until its deadline: nats-server 2.9 counts one message too
/// many as pending when a key is rewritten while the consumer starts, so the
/// read never saw the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_answer_at_once_while_entries_are_refreshed() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let cfg = config(&server.url());
    let conn_a = NatsConnection::start(&cfg).map_err(anyhow::Error::msg)?;
    let conn_b = NatsConnection::start(&cfg).map_err(anyhow::Error::msg)?;
    assert!(conn_a.wait_connected(WAIT).await && conn_b.wait_connected(WAIT).await);
    let writer = Arc::new(NatsPresenceManager::new(conn_a));
    let reader = NatsPresenceManager::new(conn_b);
    let info = |n: usize| ClientInfo {
        user: format!("u{n}"),
        client: format!("c{n}"),
        ..Default::default()
    };
    writer.add("lobby", info(0)).await?;
    writer.add("lobby", info(1)).await?;
    // Both entries rewritten at once every 20 ms (well within the 1 s TTL).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refreshes = tokio::spawn({
        let (writer, stop) = (writer.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let (a, b) =
                    tokio::join!(writer.add("lobby", info(0)), writer.add("lobby", info(1)));
                a?;
                b?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    let mut slow = Vec::new();
    let mut wrong = Vec::new();
    for _ in 0..1000 {
        let started = tokio::time::Instant::now();
        let mut seen: Vec<_> = reader.presence("lobby").await?.into_keys().collect();
        let took = started.elapsed();
        // Far above a read's few milliseconds, far below the 4 s deadline.
        if took > Duration::from_secs(1) {
            slow.push(took);
        }
        seen.sort();
        if seen != ["c0", "c1"] {
            wrong.push(seen);
        }
        if slow.len() + wrong.len() >= 3 {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    refreshes.await??;
    assert!(slow.is_empty(), "{} slow reads: {slow:?}", slow.len());
    assert!(wrong.is_empty(), "{} reads listed {wrong:?}", wrong.len());
    Ok(())
}

#[tokio::test]
async fn a_wiped_server_gives_a_new_epoch_and_calls_fail_while_it_is_down() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let presence = NatsPresenceManager::new(a.broker.connection().clone());
    a.broker.subscribe("c").await?;
    let before = a.broker.publish("c", publication(1), opts()).await?;
    presence.add("c", ClientInfo::default()).await?;

    server.kill9().await?;
    until("the client to notice", || {
        !a.broker.connection().is_connected()
    })
    .await?;
    assert!(matches!(
        a.broker.publish("c", publication(2), opts()).await,
        Err(BrokerError::Backend(_))
    ));
    assert!(a
        .broker
        .publish("c", publication(2), PublishOptions::default())
        .await
        .is_err());
    assert!(a
        .broker
        .history("c", HistoryFilter::default())
        .await
        .is_err());
    assert!(a
        .broker
        .publish_control(Bytes::from_static(b"x"), None)
        .await
        .is_err());
    assert!(a.broker.subscribe("d").await.is_err());
    assert!(presence.presence("c").await.is_err());
    assert!(presence.add("c", ClientInfo::default()).await.is_err());

    server.restart(true).await?;
    until("handle_reconnect", || {
        a.events.reconnects.load(Ordering::SeqCst) >= 1
    })
    .await?;
    let after = a.broker.publish("c", publication(3), opts()).await?;
    assert_ne!(
        after.epoch, before.epoch,
        "a lost stream comes back with a new epoch"
    );
    assert_eq!(after.offset, 1);
    assert!(matches!(
        a.broker
            .history("c", since(before.offset, &before.epoch))
            .await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    // The channel subscription came back by itself.
    until("the publication after the restart", || {
        a.events.publications("c").contains(&(1, "3".to_string()))
            && a.events.publications("c").len() == 2
    })
    .await?;
    presence.add("c", ClientInfo::default()).await?;
    assert_eq!(presence.presence("c").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_restart_that_keeps_data_keeps_history() -> anyhow::Result<()> {
    let mut server = NatsServer::start().await?;
    let a = node(&server.url(), "a").await?;
    let mut pos = StreamPosition::default();
    for n in 0..2 {
        pos = a.broker.publish("c", publication(n), opts()).await?;
    }
    server.kill9().await?;
    server.restart(false).await?;
    until("handle_reconnect", || {
        a.events.reconnects.load(Ordering::SeqCst) >= 1
    })
    .await?;
    let page = a.broker.history("c", since(1, &pos.epoch)).await?;
    assert_eq!(offsets(&page), vec![2]);
    assert_eq!(page.position, pos);
    let next = a.broker.publish("c", publication(5), opts()).await?;
    assert_eq!((next.offset, next.epoch.as_str()), (3, pos.epoch.as_str()));
    Ok(())
}

#[tokio::test]
async fn backends_publish_through_the_envelope_and_get_the_result() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let cfg = config(&server.url());
    // The node's publish path, as Node::build installs it: here straight to the
    // broker with history, refusing one channel as the node refuses bad ones.
    let a = node_with(&cfg, "a").await?;
    let broker = a.broker.clone();
    a.broker.set_ingest(Arc::new(move |req: IngestPublish| {
        let broker = broker.clone();
        Box::pin(async move {
            if req.channel.starts_with("forbidden") {
                return Err(IngestError::Rejected(
                    tidings_protocol::codes::ERROR_UNKNOWN_CHANNEL.into(),
                ));
            }
            let mut o = opts();
            o.idempotency_key = req.idempotency_key;
            let publication = Publication {
                data: Some(req.data),
                tags: req.tags,
                ..Default::default()
            };
            broker
                .publish(&req.channel, publication, o)
                .await
                .map_err(|e| IngestError::Failed(e.into()))
        })
    }));
    a.broker.subscribe("orders.1").await?;

    let backend = async_nats::connect(server.url()).await?;
    let reply = backend
        .request(
            "t.publish",
            Bytes::from(
                r#"{"channel":"orders.1","data":{"n":1},"idempotency_key":"x1","tags":{"k":"v"}}"#,
            ),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(v["result"]["offset"], 1, "{v}");
    let epoch = v["result"]["epoch"].as_str().context("epoch")?.to_string();
    assert!(!epoch.is_empty());
    // The same key again: the first result, nothing published.
    let again = backend
        .request(
            "t.publish",
            Bytes::from(r#"{"channel":"orders.1","data":{"n":1},"idempotency_key":"x1"}"#),
        )
        .await?;
    let again: serde_json::Value = serde_json::from_slice(&again.payload)?;
    assert_eq!(again, v);
    until("delivery", || !a.events.publications("orders.1").is_empty()).await?;
    assert_eq!(
        a.events.publications("orders.1"),
        vec![(1, r#"{"n":1}"#.to_string())]
    );
    let page = a
        .broker
        .history("orders.1", HistoryFilter::default())
        .await?;
    assert_eq!(page.publications[0].tags.as_ref().unwrap()["k"], "v");

    // Refused and malformed publishes get an error reply.
    let refused = backend
        .request(
            "t.publish",
            Bytes::from(r#"{"channel":"forbidden","data":1}"#),
        )
        .await?;
    let refused: serde_json::Value = serde_json::from_slice(&refused.payload)?;
    assert_eq!(refused["error"]["code"], 102, "{refused}");
    let malformed = backend
        .request("t.publish", Bytes::from("not json"))
        .await?;
    let malformed: serde_json::Value = serde_json::from_slice(&malformed.payload)?;
    assert!(malformed["error"]["code"].is_number(), "{malformed}");

    // Fire and forget works too.
    backend
        .publish(
            "t.publish",
            Bytes::from(r#"{"channel":"orders.1","data":2}"#),
        )
        .await?;
    backend.flush().await?;
    until("fire-and-forget delivery", || {
        a.events.publications("orders.1").len() == 2
    })
    .await?;

    // A raw subscriber sees a channel's messages on the documented subject.
    let mut raw = backend.subscribe("t.client.orders=2E1").await?;
    subscribed(&backend).await?;
    a.broker.publish("orders.1", publication(3), opts()).await?;
    let msg = tokio::time::timeout(WAIT, raw.next())
        .await?
        .context("raw message")?;
    let headers = msg.headers.context("headers")?;
    assert_eq!(headers.get("Nats-Sequence").map(|v| v.as_str()), Some("3"));
    Ok(())
}

/// An ordered batch: runs of one channel are sent without waiting for each
/// acknowledgement, the rest (a keyed publish and its retry, a channel without
/// history) one by one. The results carry the offsets one publish after another
/// would give, and a subscriber of all the channels gets the publications in the
/// order of the batch.
#[tokio::test]
async fn a_batch_is_published_in_order_with_runs_pipelined() -> anyhow::Result<()> {
    use tidings::broker::BatchPublish;
    let server = NatsServer::start().await?;
    let a = node(&server.url(), "node-a").await?;
    let b = node(&server.url(), "node-b").await?;
    for ch in ["x", "y", "z", "long"] {
        b.broker.subscribe(ch).await?;
    }
    let item = |channel: &str, n: u32, opts: PublishOptions| BatchPublish {
        channel: channel.into(),
        publication: publication(n),
        opts,
    };
    let ten = PublishOptions {
        history_size: 10,
        ..opts()
    };
    let key = PublishOptions {
        idempotency_key: Some("k".into()),
        ..ten.clone()
    };
    // A run of three x (history 3), a keyed y and its retry, z without history,
    // x again (a run of one), then a run of two x: 6 publications of x, 3 kept.
    let items = vec![
        item("x", 1, opts()),
        item("x", 2, opts()),
        item("x", 3, opts()),
        item("y", 4, key.clone()),
        item("z", 5, PublishOptions::default()),
        item("x", 6, opts()),
        item("y", 4, key),
        item("x", 7, opts()),
        item("x", 8, opts()),
        item("y", 9, ten),
    ];
    let results = a
        .broker
        .publish_batch(items, true)
        .await
        .into_iter()
        .collect::<Result<Vec<StreamPosition>, _>>()?;
    let got: Vec<u64> = results.iter().map(|p| p.offset).collect();
    assert_eq!(got, vec![1, 2, 3, 1, 0, 4, 1, 5, 6, 2]);
    assert_eq!(results[0].epoch, results[8].epoch);
    assert_eq!(results[3], results[6], "the retry answers the first result");
    assert_eq!(results[3].epoch, results[9].epoch);
    assert!(results[4].epoch.is_empty());
    let page = a.broker.history("x", HistoryFilter::default()).await?;
    assert_eq!(offsets(&page), vec![4, 5, 6]);
    assert_eq!(page.position, results[8]);

    // Delivered once each, in the order of the batch.
    let want: Vec<Event> = [
        ("x", 1, 1),
        ("x", 2, 2),
        ("x", 3, 3),
        ("y", 1, 4),
        ("z", 0, 5),
        ("x", 4, 6),
        ("x", 5, 7),
        ("x", 6, 8),
        ("y", 2, 9),
    ]
    .into_iter()
    .map(|(c, o, n)| Event::Publication(c.to_string(), o, n.to_string()))
    .collect();
    let delivered = || -> Vec<Event> {
        b.events
            .events()
            .into_iter()
            .filter(|e| matches!(e, Event::Publication(..)))
            .collect()
    };
    until("the batch on b", || delivered().len() >= want.len()).await?;
    assert_eq!(delivered(), want);

    // A long run: offsets 1..=N in the batch's order, delivered in that order.
    const N: u32 = 300;
    let many = PublishOptions {
        history_size: 1000,
        ..opts()
    };
    let items = (0..N).map(|n| item("long", n, many.clone())).collect();
    let got = a
        .broker
        .publish_batch(items, true)
        .await
        .into_iter()
        .map(|r| r.map(|p| p.offset))
        .collect::<Result<Vec<u64>, _>>()?;
    assert_eq!(got, (1..=u64::from(N)).collect::<Vec<_>>());
    until("the long run on b", || {
        b.events.publications("long").len() >= N as usize
    })
    .await?;
    let want: Vec<(u64, String)> = (0..N).map(|n| (u64::from(n) + 1, n.to_string())).collect();
    assert_eq!(b.events.publications("long"), want);
    Ok(())
}
