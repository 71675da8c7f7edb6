//! The Redis broker and presence manager against a real `redis-server` (started by
//! the testkit on a free port): history semantics mirrored from the memory broker,
//! fan-out and control messages between two brokers ("nodes") in one process,
//! presence expiry, a broker restart, FLUSHALL, and the direct-publish envelope.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tidings::broker::{
    BatchPublish, Broker, BrokerError, BrokerEventHandler, HistoryFilter, PublishOptions,
};
use tidings::config::RedisEngineConfig;
use tidings::engine::redis::{RedisBroker, RedisPresenceManager};
use tidings::engine::{Ingest, IngestError, IngestPublish};
use tidings::presence::PresenceManager;
use tidings::protocol::{ClientInfo, Publication, RawJson, StreamPosition};
use tidings_testkit::RedisServer;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Upper bound of every wait in these tests (polls return as soon as they can).
const DEADLINE: Duration = Duration::from_secs(15);

static PREFIX: AtomicUsize = AtomicUsize::new(0);

fn cfg(redis: &RedisServer) -> RedisEngineConfig {
    RedisEngineConfig {
        address: vec![redis.url()],
        // A prefix per test keeps tests that share nothing independent anyway.
        prefix: format!("t{}", PREFIX.fetch_add(1, Ordering::Relaxed)),
        io_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

fn opts(size: usize) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: Duration::from_secs(60),
        idempotency_key: None,
    }
}

fn publication(n: u32) -> Publication {
    Publication {
        data: Some(RawJson::from_value(&n)),
        ..Default::default()
    }
}

fn value(p: &Publication) -> u32 {
    serde_json::from_str(p.data.as_ref().unwrap().as_str()).unwrap()
}

fn info(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Publication(String, Publication),
    Join(String, String),
    Leave(String, String),
    Control(Vec<u8>),
    Reconnect,
}

/// Records what a broker delivers.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    fn publications(&self, channel: &str) -> Vec<Publication> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Publication(c, p) if c == channel => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Polls until `pred` holds for the recorded events.
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Event]) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            // A copy: `pred` may read the recorder itself.
            let events = self.events();
            if pred(&events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a control message through `broker` to every node and waits until this
    /// recorder has it: everything published before it on any channel this node
    /// is subscribed to has then been delivered (one connection, one order).
    async fn barrier(&self, broker: &RedisBroker) {
        let token = uuid::Uuid::new_v4().to_string().into_bytes();
        broker
            .publish_control(bytes::Bytes::from(token.clone()), None)
            .await
            .unwrap();
        self.wait_for("barrier", |ev| ev.contains(&Event::Control(token.clone())))
            .await;
    }
}

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &str, publication: &Publication) {
        self.events
            .lock()
            .push(Event::Publication(channel.into(), publication.clone()));
    }
    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.events
            .lock()
            .push(Event::Join(channel.into(), info.client.clone()));
    }
    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.events
            .lock()
            .push(Event::Leave(channel.into(), info.client.clone()));
    }
    fn handle_control(&self, data: &[u8]) {
        self.events.lock().push(Event::Control(data.to_vec()));
    }
    fn handle_reconnect(&self) {
        self.events.lock().push(Event::Reconnect);
    }
}

/// A running broker ("node") with its recorder.
async fn node(cfg: &RedisEngineConfig) -> (RedisBroker, Arc<Recorder>, String) {
    let broker = RedisBroker::new(cfg, Duration::from_secs(3600)).unwrap();
    let rec = Arc::new(Recorder::default());
    let uid = uuid::Uuid::new_v4().to_string();
    broker.run(&uid, rec.clone());
    // Ready once its own broadcast comes back.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let token = b"ready".to_vec();
        if broker
            .publish_control(bytes::Bytes::from(token.clone()), None)
            .await
            .is_ok()
            && wait_briefly(&rec, &Event::Control(token)).await
        {
            break;
        }
        assert!(Instant::now() < deadline, "broker never became ready");
    }
    (broker, rec, uid)
}

async fn wait_briefly(rec: &Recorder, event: &Event) -> bool {
    for _ in 0..50 {
        if rec.events().contains(event) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn since(offset: u64, epoch: &str) -> HistoryFilter {
    HistoryFilter {
        since: Some(StreamPosition {
            offset,
            epoch: epoch.into(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn offsets_grow_and_history_is_bounded() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let mut epoch = String::new();
    for n in 0..5 {
        let pos = broker.publish("c", publication(n), opts(3)).await.unwrap();
        assert_eq!(pos.offset, u64::from(n) + 1);
        if n > 0 {
            assert_eq!(pos.epoch, epoch, "the epoch stays while the stream lives");
        }
        epoch = pos.epoch;
    }
    let page = broker.history("c", HistoryFilter::default()).await.unwrap();
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5]);
    let values: Vec<u32> = page.publications.iter().map(value).collect();
    assert_eq!(values, vec![2, 3, 4]);
    assert_eq!(page.position, StreamPosition { offset: 5, epoch });
}

#[tokio::test]
async fn since_a_trimmed_offset_is_unrecoverable() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let mut epoch = String::new();
    for n in 0..5 {
        epoch = broker
            .publish("c", publication(n), opts(3))
            .await
            .unwrap()
            .epoch;
    }
    assert!(matches!(
        broker.history("c", since(1, &epoch)).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    let page = broker.history("c", since(2, &epoch)).await.unwrap();
    assert_eq!(page.publications.len(), 3);
    let page = broker.history("c", since(5, &epoch)).await.unwrap();
    assert!(page.publications.is_empty());
    // Ahead of the stream, or another epoch: unrecoverable.
    assert!(broker.history("c", since(6, &epoch)).await.is_err());
    assert!(broker.history("c", since(4, "other")).await.is_err());
    // A limit applies after `since`.
    let page = broker
        .history(
            "c",
            HistoryFilter {
                limit: Some(1),
                ..since(3, &epoch)
            },
        )
        .await
        .unwrap();
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![4]);
}

#[tokio::test]
async fn an_unpublished_channel_has_the_epoch_later_publications_get() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let page = broker
        .history("quiet", HistoryFilter::default())
        .await
        .unwrap();
    assert_eq!(page.position.offset, 0);
    assert!(!page.position.epoch.is_empty());
    let pos = broker
        .publish("quiet", publication(1), opts(10))
        .await
        .unwrap();
    assert_eq!(pos.epoch, page.position.epoch);
    let page = broker.history("quiet", since(0, "")).await.unwrap();
    assert_eq!(page.publications.len(), 1);
    assert!(broker.history("quiet", since(0, "other")).await.is_err());
}

#[tokio::test]
async fn a_retried_idempotent_publish_is_published_once() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let keyed = PublishOptions {
        idempotency_key: Some("k".into()),
        ..opts(10)
    };
    let first = broker
        .publish("c", publication(1), keyed.clone())
        .await
        .unwrap();
    let again = broker
        .publish("c", publication(1), keyed.clone())
        .await
        .unwrap();
    assert_eq!(first, again);
    // The key is per channel.
    let other = broker.publish("d", publication(1), keyed).await.unwrap();
    assert_eq!(other.offset, 1);
    let page = broker.history("c", HistoryFilter::default()).await.unwrap();
    assert_eq!(page.publications.len(), 1);
    assert_eq!(page.position.offset, 1);
    // Without history the key works too, and the result has no position.
    let no_history = PublishOptions {
        idempotency_key: Some("k2".into()),
        ..opts(0)
    };
    let a = broker
        .publish("e", publication(1), no_history.clone())
        .await
        .unwrap();
    let b = broker
        .publish("e", publication(1), no_history)
        .await
        .unwrap();
    assert_eq!(a, StreamPosition::default());
    assert_eq!(a, b);
}

#[tokio::test]
async fn limit_and_reverse() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let mut epoch = String::new();
    for n in 0..3 {
        epoch = broker
            .publish("c", publication(n), opts(10))
            .await
            .unwrap()
            .epoch;
    }
    let offsets = |page: tidings::broker::HistoryPage| -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    };
    let filter = |limit, reverse| HistoryFilter {
        limit,
        reverse,
        ..Default::default()
    };
    assert_eq!(
        offsets(broker.history("c", filter(Some(2), false)).await.unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        offsets(broker.history("c", filter(Some(2), true)).await.unwrap()),
        vec![3, 2]
    );
    assert_eq!(
        offsets(broker.history("c", filter(None, true)).await.unwrap()),
        vec![3, 2, 1]
    );
    let only_position = broker.history("c", filter(Some(0), false)).await.unwrap();
    assert!(only_position.publications.is_empty());
    assert_eq!(only_position.position.offset, 3);
    // Paging backwards from a position: the publications before it.
    let back = HistoryFilter {
        reverse: true,
        ..since(3, &epoch)
    };
    assert_eq!(
        offsets(broker.history("c", back).await.unwrap()),
        vec![2, 1]
    );
    let back_from_one = HistoryFilter {
        reverse: true,
        ..since(1, &epoch)
    };
    assert!(broker
        .history("c", back_from_one)
        .await
        .unwrap()
        .publications
        .is_empty());
}

#[tokio::test]
async fn expired_publications_leave_history_but_not_the_position() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let short = PublishOptions {
        history_ttl: Duration::from_millis(300),
        ..opts(10)
    };
    let pos = broker
        .publish("c", publication(1), short.clone())
        .await
        .unwrap();
    broker.publish("c", publication(2), short).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = broker.history("c", HistoryFilter::default()).await.unwrap();
        assert_eq!(page.position.offset, 2);
        assert_eq!(page.position.epoch, pos.epoch);
        if page.publications.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "publications never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Recovering across expired publications is not possible...
    assert!(matches!(
        broker.history("c", since(0, &pos.epoch)).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    // ...from the top it is, and the offsets go on.
    assert!(broker
        .history("c", since(2, &pos.epoch))
        .await
        .unwrap()
        .publications
        .is_empty());
    let next = broker.publish("c", publication(3), opts(10)).await.unwrap();
    assert_eq!(
        next,
        StreamPosition {
            offset: 3,
            epoch: pos.epoch.clone()
        }
    );
    let page = broker.history("c", since(2, &pos.epoch)).await.unwrap();
    assert_eq!(
        page.publications.iter().map(value).collect::<Vec<_>>(),
        vec![3]
    );
}

#[tokio::test]
async fn removed_history_keeps_the_position() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let mut pos = StreamPosition::default();
    for n in 0..3 {
        pos = broker.publish("c", publication(n), opts(10)).await.unwrap();
    }
    broker.remove_history("c").await.unwrap();
    let page = broker.history("c", HistoryFilter::default()).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position, pos);
    assert!(broker.history("c", since(1, &pos.epoch)).await.is_err());
    let next = broker.publish("c", publication(9), opts(10)).await.unwrap();
    assert_eq!(next.offset, 4);
    assert_eq!(next.epoch, pos.epoch);
}

#[tokio::test]
async fn two_nodes_see_each_others_publications_joins_and_leaves() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    b.subscribe("news").await.unwrap();
    let pos = a.publish("news", publication(7), opts(10)).await.unwrap();
    a.publish("news", publication(8), opts(0)).await.unwrap();
    a.publish_join("news", info("u1", "c1")).await.unwrap();
    a.publish_leave("news", info("u1", "c1")).await.unwrap();
    rec_b.barrier(&a).await;
    let events: Vec<Event> = rec_b
        .events()
        .into_iter()
        .filter(|e| !matches!(e, Event::Control(_)))
        .collect();
    let mut expected_pub = publication(7);
    expected_pub.offset = pos.offset;
    assert_eq!(
        events,
        vec![
            Event::Publication("news".into(), expected_pub),
            Event::Publication("news".into(), publication(8)),
            Event::Join("news".into(), "c1".into()),
            Event::Leave("news".into(), "c1".into()),
        ]
    );
    // A is not subscribed: it gets nothing of the channel.
    rec_a.barrier(&b).await;
    assert!(rec_a.publications("news").is_empty());
    // After the last unsubscribe, B gets nothing either.
    b.unsubscribe("news").await.unwrap();
    // The unsubscribe is applied in the background: publish until one is missed
    // after a barrier (bounded).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let before = rec_b.publications("news").len();
        a.publish("news", publication(1), opts(0)).await.unwrap();
        rec_b.barrier(&a).await;
        if rec_b.publications("news").len() == before {
            break;
        }
        assert!(Instant::now() < deadline, "unsubscribe never took effect");
    }
}

#[tokio::test]
async fn subscriptions_are_counted_so_a_late_unsubscribe_does_not_cancel_a_new_one() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    // First subscriber leaves while a second arrives: subscribe, subscribe,
    // unsubscribe leaves one subscription.
    b.subscribe("c").await.unwrap();
    b.subscribe("c").await.unwrap();
    b.unsubscribe("c").await.unwrap();
    rec_b.barrier(&a).await;
    a.publish("c", publication(1), opts(0)).await.unwrap();
    rec_b.barrier(&a).await;
    assert_eq!(rec_b.publications("c").len(), 1);
}

#[tokio::test]
async fn control_messages_reach_every_node_or_the_one_named() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, rec_a, uid_a) = node(&cfg).await;
    let (b, rec_b, uid_b) = node(&cfg).await;
    let all = |e: &[Event], m: &[u8]| e.contains(&Event::Control(m.to_vec()));
    a.publish_control(bytes::Bytes::from_static(b"to-all"), None)
        .await
        .unwrap();
    rec_a
        .wait_for("broadcast on A", |e| all(e, b"to-all"))
        .await;
    rec_b
        .wait_for("broadcast on B", |e| all(e, b"to-all"))
        .await;
    a.publish_control(bytes::Bytes::from_static(b"to-b"), Some(&uid_b))
        .await
        .unwrap();
    b.publish_control(bytes::Bytes::from_static(b"to-a"), Some(&uid_a))
        .await
        .unwrap();
    rec_b.wait_for("targeted on B", |e| all(e, b"to-b")).await;
    rec_a.wait_for("targeted on A", |e| all(e, b"to-a")).await;
    // Barriers on both: the targeted messages did not reach the other node.
    rec_a.barrier(&a).await;
    rec_b.barrier(&b).await;
    assert!(!all(&rec_a.events(), b"to-b"));
    assert!(!all(&rec_b.events(), b"to-a"));
}

#[tokio::test]
async fn concurrent_publishes_share_the_connection_and_keep_order() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    b.subscribe("load").await.unwrap();
    let a = Arc::new(a);
    const N: u32 = 2000;
    let tasks: Vec<_> = (0..N)
        .map(|n| {
            let a = a.clone();
            tokio::spawn(async move { a.publish("load", publication(n), opts(N as usize)).await })
        })
        .collect();
    let mut offsets = BTreeSet::new();
    for t in tasks {
        offsets.insert(t.await.unwrap().unwrap().offset);
    }
    assert_eq!(offsets, (1..=u64::from(N)).collect::<BTreeSet<_>>());
    rec_b
        .wait_for("all publications", |_| rec_b_count(&rec_b) == N as usize)
        .await;
    // Delivered in offset order, each value once.
    let got = rec_b.publications("load");
    assert!(got.windows(2).all(|w| w[0].offset + 1 == w[1].offset));
    let values: BTreeSet<u32> = got.iter().map(value).collect();
    assert_eq!(values.len(), N as usize);
    let page = a.history("load", HistoryFilter::default()).await.unwrap();
    assert_eq!(page.publications.len(), N as usize);
    assert_eq!(page.position.offset, u64::from(N));
}

fn item(channel: &str, n: u32, opts: PublishOptions) -> BatchPublish {
    BatchPublish {
        channel: channel.into(),
        publication: publication(n),
        opts,
    }
}

#[tokio::test]
async fn a_batch_is_published_in_order_in_one_pipeline() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    for ch in ["x", "y", "z", "long"] {
        b.subscribe(ch).await.unwrap();
    }
    let keyed = PublishOptions {
        idempotency_key: Some("k".into()),
        ..opts(10)
    };
    // Runs of x (one script call each), a keyed y and its retry, a z without
    // history, then x again: 5 publications of x with a history of 3.
    let items = vec![
        item("x", 1, opts(3)),
        item("x", 2, opts(3)),
        item("x", 3, opts(3)),
        item("y", 4, keyed.clone()),
        item("z", 5, opts(0)),
        item("x", 6, opts(3)),
        item("y", 4, keyed),
        item("x", 7, opts(3)),
        item("y", 8, opts(10)),
    ];
    let results: Vec<StreamPosition> = a
        .publish_batch(items, true)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let offsets: Vec<u64> = results.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![1, 2, 3, 1, 0, 4, 1, 5, 2]);
    assert_eq!(results[0].epoch, results[7].epoch);
    assert_eq!(
        results[3], results[6],
        "the retried key answers the first result"
    );
    assert!(results[4].epoch.is_empty());
    let page = a.history("x", HistoryFilter::default()).await.unwrap();
    let kept: Vec<(u64, u32)> = page
        .publications
        .iter()
        .map(|p| (p.offset, value(p)))
        .collect();
    assert_eq!(kept, vec![(3, 3), (4, 6), (5, 7)]);
    assert_eq!(page.position, results[7]);
    // Delivered once each, in the order of the batch (one connection, one order).
    rec_b.barrier(&a).await;
    let got: Vec<(String, u32, u64)> = rec_b
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Publication(c, p) => Some((c, value(&p), p.offset)),
            _ => None,
        })
        .collect();
    let want: Vec<(String, u32, u64)> = [
        ("x", 1, 1),
        ("x", 2, 2),
        ("x", 3, 3),
        ("y", 4, 1),
        ("z", 5, 0),
        ("x", 6, 4),
        ("x", 7, 5),
        ("y", 8, 2),
    ]
    .into_iter()
    .map(|(c, n, o)| (c.to_string(), n, o))
    .collect();
    assert_eq!(got, want);

    // A run longer than one script call takes, after the script cache was
    // emptied: the scripts are loaded again and the order holds.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    const N: u32 = 300;
    let items = (0..N).map(|n| item("long", n, opts(1000))).collect();
    let offsets: Vec<u64> = a
        .publish_batch(items, true)
        .await
        .into_iter()
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(offsets, (1..=u64::from(N)).collect::<Vec<_>>());
    rec_b
        .wait_for("the long run", |_| {
            rec_b.publications("long").len() == N as usize
        })
        .await;
    let got: Vec<(u64, u32)> = rec_b
        .publications("long")
        .iter()
        .map(|p| (p.offset, value(p)))
        .collect();
    assert_eq!(
        got,
        (0..N).map(|n| (u64::from(n) + 1, n)).collect::<Vec<_>>()
    );
    let page = a.history("long", HistoryFilter::default()).await.unwrap();
    assert_eq!(page.publications.len(), N as usize);
}

#[tokio::test]
async fn a_batch_while_redis_is_down_fails_every_item() {
    let mut redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    broker.publish("c", publication(0), opts(3)).await.unwrap();
    redis.kill9().await.unwrap();
    let results = broker
        .publish_batch(vec![item("c", 1, opts(3)), item("d", 2, opts(0))], true)
        .await;
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(BrokerError::Backend(_)))),
        "{results:?}"
    );
}

fn rec_b_count(rec: &Recorder) -> usize {
    rec.publications("load").len()
}

#[tokio::test]
async fn a_restarted_redis_means_errors_meanwhile_then_resubscription_and_a_new_epoch() {
    let mut redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    let presence = RedisPresenceManager::new(&cfg).unwrap();
    // Several channels, so that resubscription has more than one to do.
    for ch in ["r1", "r2", "r3"] {
        b.subscribe(ch).await.unwrap();
    }
    let before = a.publish("r1", publication(1), opts(10)).await.unwrap();
    rec_b
        .wait_for("first publication", |_| rec_b.publications("r1").len() == 1)
        .await;

    redis.kill9().await.unwrap();
    // While Redis is down every call fails (bounded by io_timeout), none succeeds.
    let guard = Duration::from_secs(10);
    let down = tokio::time::timeout(guard, a.publish("r1", publication(2), opts(10)))
        .await
        .expect("publish must not hang while Redis is down");
    assert!(matches!(down, Err(BrokerError::Backend(_))), "{down:?}");
    assert!(
        tokio::time::timeout(guard, a.history("r1", HistoryFilter::default()))
            .await
            .unwrap()
            .is_err()
    );
    assert!(tokio::time::timeout(
        guard,
        a.publish_control(bytes::Bytes::from_static(b"x"), None)
    )
    .await
    .unwrap()
    .is_err());
    assert!(
        tokio::time::timeout(guard, presence.add("r1", info("u", "c")))
            .await
            .unwrap()
            .is_err()
    );
    assert!(tokio::time::timeout(guard, presence.presence("r1"))
        .await
        .unwrap()
        .is_err());
    assert!(tokio::time::timeout(guard, b.subscribe("r4"))
        .await
        .unwrap()
        .is_err());
    b.unsubscribe("r4").await.unwrap();

    redis.restart().await.unwrap();
    rec_b
        .wait_for("handle_reconnect", |e| e.contains(&Event::Reconnect))
        .await;
    // Resubscribed: publications on every channel arrive again.
    let deadline = Instant::now() + DEADLINE;
    let after = loop {
        match a.publish("r1", publication(3), opts(10)).await {
            Ok(pos) => break pos,
            Err(e) => assert!(Instant::now() < deadline, "publish never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    a.publish("r3", publication(4), opts(10)).await.unwrap();
    rec_b
        .wait_for("publication after restart", |_| {
            rec_b.publications("r1").iter().any(|p| value(p) == 3)
                && rec_b.publications("r3").iter().any(|p| value(p) == 4)
        })
        .await;
    // The data went with the crash: a new epoch, offsets from 1, old position lost.
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.offset, 1);
    assert!(matches!(
        a.history("r1", since(before.offset, &before.epoch)).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    presence.add("r1", info("u", "c")).await.unwrap();
}

#[tokio::test]
async fn flushall_gives_a_new_epoch() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let broker = RedisBroker::new(&cfg, Duration::from_secs(3600)).unwrap();
    let before = broker.publish("c", publication(1), opts(10)).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let page = broker.history("c", HistoryFilter::default()).await.unwrap();
    assert_ne!(page.position.epoch, before.epoch);
    assert_eq!(page.position.offset, 0);
    assert!(matches!(
        broker.history("c", since(1, &before.epoch)).await,
        Err(BrokerError::UnrecoverablePosition)
    ));
    let next = broker.publish("c", publication(2), opts(10)).await.unwrap();
    assert_eq!(
        next,
        StreamPosition {
            offset: 1,
            epoch: page.position.epoch
        }
    );
}

#[tokio::test]
async fn presence_lists_counts_expires_and_refreshes() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = RedisEngineConfig {
        presence_ttl: Duration::from_secs(1),
        ..cfg(&redis)
    };
    let p1 = RedisPresenceManager::new(&cfg).unwrap();
    let p2 = RedisPresenceManager::new(&cfg).unwrap();
    p1.add("room", info("alice", "c1")).await.unwrap();
    p1.add("room", info("alice", "c2")).await.unwrap();
    p2.add("room", info("bob", "c3")).await.unwrap();
    let all = p2.presence("room").await.unwrap();
    assert_eq!(
        all.keys().cloned().collect::<BTreeSet<_>>(),
        ["c1", "c2", "c3"].map(String::from).into()
    );
    assert_eq!(all["c3"].user, "bob");
    let stats = p1.stats("room").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));
    p1.remove("room", "c2").await.unwrap();
    assert_eq!(p2.stats("room").await.unwrap().num_clients, 2);
    assert!(p1.presence("empty").await.unwrap().is_empty());

    // c1 is refreshed while c3 is not: c3 disappears within the TTL, c1 stays.
    let deadline = Instant::now() + DEADLINE;
    loop {
        p1.add("room", info("alice", "c1")).await.unwrap();
        let now: HashMap<_, _> = p2.presence("room").await.unwrap();
        assert!(now.contains_key("c1"), "a refreshed entry expired");
        if !now.contains_key("c3") {
            break;
        }
        assert!(Instant::now() < deadline, "c3 never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = p2.stats("room").await.unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));
    // Without refresh, everything goes.
    let deadline = Instant::now() + DEADLINE;
    while !p2.presence("room").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "c1 never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An ingest that publishes through `broker` the way the node does (history
/// 100), rejecting channels that start with `bad`.
fn publisher(broker: Arc<RedisBroker>, calls: Arc<AtomicUsize>) -> Ingest {
    Arc::new(move |msg: IngestPublish| {
        let broker = broker.clone();
        let calls = calls.clone();
        Box::pin(async move {
            calls.fetch_add(1, Ordering::Relaxed);
            if msg.channel.starts_with("bad") {
                return Err(IngestError::Rejected(
                    tidings::protocol::codes::ERROR_UNKNOWN_CHANNEL.into(),
                ));
            }
            let publication = Publication {
                data: Some(msg.data),
                tags: msg.tags,
                ..Default::default()
            };
            let opts = PublishOptions {
                idempotency_key: msg.idempotency_key,
                ..opts(100)
            };
            broker
                .publish(&msg.channel, publication, opts)
                .await
                .map_err(|e| IngestError::Failed(e.into()))
        })
    })
}

#[tokio::test]
async fn direct_publish_envelope_is_published_once_by_one_of_the_nodes() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = CancellationToken::new();
    let calls = Arc::new(AtomicUsize::new(0));
    a.start_ingest(publisher(a.clone(), calls.clone()), stop.clone());
    b.start_ingest(publisher(b.clone(), calls.clone()), stop.clone());
    b.subscribe("feed").await.unwrap();

    // What a backend does (docs/engines.md): XADD <prefix>.publish * payload <json>.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{}.publish", cfg.prefix);
    const N: u32 = 50;
    let xadd = |payload: String| {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(payload)
                .query_async::<String>(&mut conn)
                .await
                .unwrap()
        }
    };
    // Malformed and rejected entries are dropped, not retried.
    xadd("not json".into()).await;
    xadd(r#"{"channel":"bad-one","data":{}}"#.into()).await;
    for n in 0..N {
        xadd(format!(
            r#"{{"channel":"feed","data":{{"n":{n}}},"tags":{{"k":"v"}}}}"#
        ))
        .await;
    }
    // The same idempotency key twice: published once.
    for _ in 0..2 {
        xadd(r#"{"channel":"feed","data":{"n":999},"idempotency_key":"once"}"#.into()).await;
    }
    rec_b
        .wait_for("direct publications", |_| {
            rec_b.publications("feed").len() == N as usize + 1
        })
        .await;
    let got = rec_b.publications("feed");
    let ns: BTreeSet<u64> = got
        .iter()
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(p.data.as_ref().unwrap().as_str()).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ns.len(), N as usize + 1, "each entry published once");
    // Tags travel with the publication. Only the idempotent entry has none; its
    // offset is not necessarily the last one, since the two nodes publish the
    // entries they read side by side (docs/engines.md: the order may differ).
    let untagged: Vec<u64> = got
        .iter()
        .filter(|p| p.tags.is_none())
        .map(|p| {
            let v: serde_json::Value =
                serde_json::from_str(p.data.as_ref().unwrap().as_str()).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(untagged, vec![999]);
    // Every entry was handled once and removed from the stream.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let len: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        if len == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{len} entries left in the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.load(Ordering::Relaxed), N as usize + 3);
    // Nothing more arrives later (barrier through the same connection order).
    rec_b.barrier(&a).await;
    assert_eq!(rec_b.publications("feed").len(), N as usize + 1);
    stop.cancel();
}

#[tokio::test]
async fn an_idle_pubsub_connection_survives_its_health_pings() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    let (a, rec_a, _) = node(&cfg).await;
    a.subscribe("idle").await.unwrap();
    // Longer than the pub/sub PING period (3 s): the ping reply must be understood
    // and must not look like a broken connection.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    a.publish("idle", publication(1), opts(0)).await.unwrap();
    rec_a
        .wait_for("publication", |_| rec_a.publications("idle").len() == 1)
        .await;
    assert!(
        !rec_a.events().contains(&Event::Reconnect),
        "{:?}",
        rec_a.events()
    );
}

#[tokio::test]
async fn a_subscribe_right_after_start_waits_for_the_first_connection() {
    let redis = RedisServer::start().await.unwrap();
    let broker = RedisBroker::new(&cfg(&redis), Duration::from_secs(3600)).unwrap();
    let rec = Arc::new(Recorder::default());
    broker.run("fresh-node", rec.clone());
    broker.subscribe("early").await.unwrap();
    broker
        .publish("early", publication(1), opts(0))
        .await
        .unwrap();
    rec.wait_for("publication", |_| rec.publications("early").len() == 1)
        .await;
}

#[tokio::test]
async fn a_broker_started_while_redis_is_down_fails_calls_then_connects() {
    let mut redis = RedisServer::start().await.unwrap();
    let cfg = cfg(&redis);
    redis.kill9().await.unwrap();
    let broker = RedisBroker::new(&cfg, Duration::from_secs(3600)).unwrap();
    let rec = Arc::new(Recorder::default());
    broker.run("late-node", rec.clone());
    let guard = Duration::from_secs(10);
    assert!(tokio::time::timeout(guard, broker.subscribe("c"))
        .await
        .unwrap()
        .is_err());
    broker.unsubscribe("c").await.unwrap();
    assert!(
        tokio::time::timeout(guard, broker.publish("c", publication(1), opts(1)))
            .await
            .unwrap()
            .is_err()
    );
    redis.restart().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while broker.subscribe("c").await.is_err() {
        broker.unsubscribe("c").await.unwrap();
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The command connection retries connecting at most every 100 ms.
    while let Err(e) = broker.publish("c", publication(1), opts(1)).await {
        assert!(Instant::now() < deadline, "publish never recovered: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rec.wait_for("publication", |_| rec.publications("c").len() == 1)
        .await;
}

/// A `redis-server` speaking only TLS, with a certificate for 127.0.0.1 issued by
/// a fresh CA. Returns the child (killed on drop), its port, the CA PEM and the
/// directory holding the files.
async fn tls_redis() -> (tokio::process::Child, u16, String, tempdir::Dir) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = tempdir::Dir::new();
    let write = |name: &str, text: String| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert_file = write("server.crt", cert.pem());
    let key_file = write("server.key", key.serialize_pem());
    let ca_file = write("ca.crt", ca.pem());
    let port = tidings_testkit::brokers::free_port().unwrap();
    let mut child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&cert_file)
        .arg("--tls-key-file")
        .arg(&key_file)
        .arg("--tls-ca-cert-file")
        .arg(&ca_file)
        .arg("--dir")
        .arg(&dir.0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "redis-server (TLS) exited"
        );
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, port, ca.pem(), dir)
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let path =
                std::env::temp_dir().join(format!("tidings-redis-tls-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn tls_to_redis_with_a_private_ca_works_and_an_unknown_ca_is_refused() {
    let (_child, port, ca_pem, _dir) = tls_redis().await;
    let tls_cfg = |server_ca_pem: String, insecure: bool| RedisEngineConfig {
        address: vec![format!("redis://127.0.0.1:{port}")],
        prefix: "tls".into(),
        io_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        tls: tidings::config::RedisTlsConfig {
            enabled: true,
            server_ca_pem,
            insecure_skip_verify: insecure,
            ..Default::default()
        },
        ..Default::default()
    };
    // Trusting the CA: fan-out and history work over TLS.
    let (broker, rec, _) = node(&tls_cfg(ca_pem, false)).await;
    broker.subscribe("secure").await.unwrap();
    let pos = broker
        .publish("secure", publication(1), opts(10))
        .await
        .unwrap();
    assert_eq!(pos.offset, 1);
    rec.wait_for("publication", |_| rec.publications("secure").len() == 1)
        .await;
    // The system roots do not know the private CA: refused.
    let untrusted =
        RedisBroker::new(&tls_cfg(String::new(), false), Duration::from_secs(60)).unwrap();
    assert!(untrusted
        .publish("secure", publication(2), opts(10))
        .await
        .is_err());
    // Unless verification is off.
    let insecure =
        RedisBroker::new(&tls_cfg(String::new(), true), Duration::from_secs(60)).unwrap();
    let pos = insecure
        .publish("secure", publication(3), opts(10))
        .await
        .unwrap();
    assert_eq!(pos.offset, 2);
}

#[tokio::test]
async fn two_shards_each_keep_whole_channels_and_deliver_them() {
    use tidings_testkit::cluster::redis_command;
    let shards = [
        RedisServer::start().await.unwrap(),
        RedisServer::start().await.unwrap(),
    ];
    let mut cfg = cfg(&shards[0]);
    cfg.address = shards.iter().map(RedisServer::url).collect();
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    let channels: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    for ch in &channels {
        b.subscribe(ch).await.unwrap();
    }
    // One publication each, then a batch of two more each, spread over both shards.
    for ch in &channels {
        let pos = a.publish(ch, publication(1), opts(10)).await.unwrap();
        assert_eq!(pos.offset, 1);
    }
    let items = channels
        .iter()
        .flat_map(|ch| [item(ch, 2, opts(10)), item(ch, 3, opts(10))])
        .collect();
    let results = a.publish_batch(items, true).await;
    for (k, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap().offset, 2 + (k % 2) as u64, "item {k}");
    }
    for ch in &channels {
        rec_b
            .wait_for("every publication on B", |_| {
                rec_b.publications(ch).iter().map(value).collect::<Vec<_>>() == [1, 2, 3]
            })
            .await;
        let page = a.history(ch, HistoryFilter::default()).await.unwrap();
        assert_eq!(
            page.publications.iter().map(value).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
    // Each channel's stream and meta hash live on exactly one shard, and both
    // shards got channels.
    let mut per_shard = [0usize; 2];
    for ch in &channels {
        let mut holders = Vec::new();
        for (i, shard) in shards.iter().enumerate() {
            let meta = format!("{}.meta.{{{ch}}}", cfg.prefix);
            let stream = format!("{}.stream.{{{ch}}}", cfg.prefix);
            let n = redis_command(shard.addr(), &["EXISTS", &meta, &stream])
                .await
                .unwrap();
            match n.as_str() {
                ":2" => holders.push(i),
                ":0" => {}
                other => panic!("{ch} half on shard {i}: {other}"),
            }
        }
        assert_eq!(holders.len(), 1, "{ch} on shards {holders:?}");
        per_shard[holders[0]] += 1;
    }
    assert!(per_shard.iter().all(|&n| n > 0), "{per_shard:?}");
    // Presence follows the channel too.
    let presence = RedisPresenceManager::new(&cfg).unwrap();
    for ch in &channels {
        presence
            .add(ch, info("u", &format!("{ch}-client")))
            .await
            .unwrap();
    }
    for ch in &channels {
        let all = presence.presence(ch).await.unwrap();
        assert_eq!(all.len(), 1, "{ch}");
    }
}

#[tokio::test]
async fn a_shard_that_restarts_resubscribes_and_gives_its_channels_a_new_epoch() {
    let mut shards = [
        RedisServer::start().await.unwrap(),
        RedisServer::start().await.unwrap(),
    ];
    let mut cfg = cfg(&shards[0]);
    cfg.address = shards.iter().map(RedisServer::url).collect();
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    let channels: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    let mut epochs = HashMap::new();
    for ch in &channels {
        b.subscribe(ch).await.unwrap();
        let pos = a.publish(ch, publication(1), opts(10)).await.unwrap();
        epochs.insert(ch.clone(), pos.epoch);
    }
    // The second shard dies and comes back empty.
    shards[1].restart().await.unwrap();
    rec_b
        .wait_for("a reconnect on B", |e| e.contains(&Event::Reconnect))
        .await;
    let deadline = Instant::now() + DEADLINE;
    let mut changed = 0;
    for ch in &channels {
        // Publishing works again on every channel, and delivers.
        let pos = loop {
            match a.publish(ch, publication(2), opts(10)).await {
                Ok(pos) => break pos,
                Err(e) => assert!(Instant::now() < deadline, "{ch}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if pos.epoch != epochs[ch] {
            changed += 1;
            assert_eq!(pos.offset, 1, "{ch} starts over in its new epoch");
        } else {
            assert_eq!(pos.offset, 2, "{ch} kept its stream");
        }
        rec_b
            .wait_for("the publication after the restart", |_| {
                rec_b.publications(ch).iter().any(|p| value(p) == 2)
            })
            .await;
    }
    // The channels of the restarted shard got new epochs, the others did not.
    assert!(changed > 0 && changed < channels.len(), "{changed} changed");
}

/// A broker on a Sentinel shard of its own: master, replica, three sentinels.
fn sentinel_cfg(set: &tidings_testkit::sentinel::RedisSentinelSet) -> RedisEngineConfig {
    RedisEngineConfig {
        sentinel_address: vec![set.sentinel_address()],
        sentinel_master_name: tidings_testkit::sentinel::SENTINEL_MASTER_NAME.into(),
        ..cfg(set.server(0))
    }
}

#[tokio::test]
async fn a_sentinel_failover_is_followed_and_starts_channels_on_a_new_epoch() {
    let mut set = tidings_testkit::sentinel::RedisSentinelSet::start()
        .await
        .unwrap();
    let cfg = sentinel_cfg(&set);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    b.subscribe("f").await.unwrap();
    let before = a.publish("f", publication(1), opts(10)).await.unwrap();
    a.publish("f", publication(2), opts(10)).await.unwrap();
    rec_b
        .wait_for("both publications on B", |_| {
            rec_b.publications("f").len() == 2
        })
        .await;
    let old = set.kill9_master().await.unwrap();
    // Calls fail while the sentinels decide, then succeed on the promoted replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match a.publish("f", publication(3), opts(10)).await {
            Ok(pos) => break pos,
            Err(e) => assert!(Instant::now() < deadline, "no failover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(set.master().await.unwrap(), old);
    // The promoted replica cannot vouch for what the old master had: a new epoch,
    // and recovery from the old one is refused rather than silently short.
    assert_ne!(after.epoch, before.epoch);
    assert_eq!(after.offset, 1);
    let gone = a.history("f", since(2, &before.epoch)).await;
    assert!(
        matches!(gone, Err(BrokerError::UnrecoverablePosition)),
        "{gone:?}"
    );
    // B's pub/sub connection followed the master: it resubscribed, and gets what
    // is published from then on, on the new epoch.
    rec_b
        .wait_for("a reconnect on B", |e| e.contains(&Event::Reconnect))
        .await;
    let next = a.publish("f", publication(4), opts(10)).await.unwrap();
    assert_eq!((next.offset, &next.epoch), (2, &after.epoch));
    rec_b
        .wait_for("the publication after the failover on B", |_| {
            rec_b.publications("f").iter().any(|p| value(p) == 4)
        })
        .await;
    // The pub/sub connection stays on the new master: its health checks (every
    // 3 s) find the master the sentinels name and keep it.
    let reconnects = |e: &[Event]| e.iter().filter(|e| **e == Event::Reconnect).count();
    let settled = reconnects(&rec_b.events());
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(reconnects(&rec_b.events()), settled, "B kept reconnecting");
}

/// A broker on a Redis Cluster.
fn cluster_cfg(set: &tidings_testkit::redis_cluster::RedisClusterSet) -> RedisEngineConfig {
    RedisEngineConfig {
        address: Vec::new(),
        cluster_address: vec![set.cluster_address()],
        prefix: format!("t{}", PREFIX.fetch_add(1, Ordering::Relaxed)),
        io_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_redis_cluster_keeps_each_channel_in_its_slot_and_publishes_it_sharded() {
    use tidings_testkit::cluster::redis_command;
    let set = tidings_testkit::redis_cluster::RedisClusterSet::start()
        .await
        .unwrap();
    let cfg = cluster_cfg(&set);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    let channels: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    for ch in &channels {
        b.subscribe(ch).await.unwrap();
        a.publish(ch, publication(1), opts(10)).await.unwrap();
    }
    // A batch over every channel (one pipeline per channel: one slot each).
    let items = channels.iter().map(|ch| item(ch, 2, opts(10))).collect();
    for r in a.publish_batch(items, true).await {
        assert_eq!(r.unwrap().offset, 2);
    }
    let masters = set.masters().await.unwrap();
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut owners = BTreeSet::new();
    for ch in &channels {
        rec_b
            .wait_for("both publications on B", |_| {
                rec_b.publications(ch).iter().map(value).collect::<Vec<_>>() == [1, 2]
            })
            .await;
        let page = a.history(ch, HistoryFilter::default()).await.unwrap();
        assert_eq!(page.publications.len(), 2);
        // The channel's meta hash, stream and sharded pub/sub channel are all on
        // the one master that owns the slot of {ch}; classic pub/sub is unused.
        let meta = format!("{}.meta.{{{ch}}}", cfg.prefix);
        let pubsub = format!("{}.client.{{{ch}}}", cfg.prefix);
        let mut holders = Vec::new();
        for &port in &masters {
            if let Ok(n) = redis_command(addr(port), &["EXISTS", &meta]).await {
                assert_eq!(n, ":1", "{ch} on its owner {port}");
                let sharded = redis_command(addr(port), &["PUBSUB", "SHARDNUMSUB", &pubsub])
                    .await
                    .unwrap();
                assert!(
                    sharded.ends_with(":1"),
                    "B SSUBSCRIBEd {pubsub}: {sharded:?}"
                );
                holders.push(port);
            }
        }
        assert_eq!(holders.len(), 1, "{ch}: owners {holders:?}");
        owners.insert(holders[0]);
        let classic = redis_command(addr(holders[0]), &["PUBSUB", "NUMSUB", &pubsub])
            .await
            .unwrap();
        assert!(
            classic.ends_with(":0"),
            "classic SUBSCRIBE of {pubsub}: {classic:?}"
        );
    }
    assert!(owners.len() > 1, "all channels on one master: {owners:?}");
    // Presence works per slot too.
    let presence = RedisPresenceManager::new(&cfg).unwrap();
    for ch in &channels {
        presence.add(ch, info("u", "c1")).await.unwrap();
        assert_eq!(presence.presence(ch).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_redis_cluster_failover_starts_the_channel_on_a_new_epoch() {
    let mut set = tidings_testkit::redis_cluster::RedisClusterSet::start_with_replicas()
        .await
        .unwrap();
    let cfg = cluster_cfg(&set);
    let (a, _rec_a, _) = node(&cfg).await;
    let (b, rec_b, _) = node(&cfg).await;
    b.subscribe("f").await.unwrap();
    let before = a.publish("f", publication(1), opts(10)).await.unwrap();
    rec_b
        .wait_for("the publication on B", |_| {
            rec_b.publications("f").len() == 1
        })
        .await;
    set.kill9_master_of("{f}").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match a.publish("f", publication(2), opts(10)).await {
            Ok(pos) => break pos,
            Err(e) => assert!(Instant::now() < deadline, "no failover: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        after.epoch, before.epoch,
        "the promoted replica kept the epoch"
    );
    assert_eq!(after.offset, 1);
    let gone = a.history("f", since(1, &before.epoch)).await;
    assert!(
        matches!(gone, Err(BrokerError::UnrecoverablePosition)),
        "{gone:?}"
    );
    // B's sharded subscription followed the slot to the promoted replica.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 2;
    loop {
        n += 1;
        a.publish("f", publication(n), opts(10)).await.unwrap();
        if wait_briefly_for(&rec_b, "f", n).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never got a publication after the failover"
        );
    }
    assert!(rec_b.events().contains(&Event::Reconnect), "B was not told");
}

async fn wait_briefly_for(rec: &Recorder, channel: &str, v: u32) -> bool {
    for _ in 0..50 {
        if rec.publications(channel).iter().any(|p| value(p) == v) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Direct publish with `cfg`: nodes A and B consume the direct-publish stream,
/// `xadd` adds entries the way a backend does; B must get every one, once.
async fn direct_publish_reaches_b<F, Fut>(cfg: &RedisEngineConfig, entries: u32, xadd: F)
where
    F: Fn(u32, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (a, _rec_a, _) = node(cfg).await;
    let (b, rec_b, _) = node(cfg).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let stop = CancellationToken::new();
    let calls = Arc::new(AtomicUsize::new(0));
    a.start_ingest(publisher(a.clone(), calls.clone()), stop.clone());
    b.start_ingest(publisher(b.clone(), calls.clone()), stop.clone());
    b.subscribe("feed").await.unwrap();
    for n in 0..entries {
        xadd(n, format!(r#"{{"channel":"feed","data":{n}}}"#)).await;
    }
    rec_b
        .wait_for("every direct publication", |_| {
            let mut got: Vec<u32> = rec_b.publications("feed").iter().map(value).collect();
            got.sort_unstable();
            got == (0..entries).collect::<Vec<_>>()
        })
        .await;
    stop.cancel();
}

#[tokio::test]
async fn direct_publish_is_consumed_on_every_shard() {
    let shards = [
        RedisServer::start().await.unwrap(),
        RedisServer::start().await.unwrap(),
    ];
    let mut cfg = cfg(&shards[0]);
    cfg.address = shards.iter().map(RedisServer::url).collect();
    let stream = format!("{}.publish", cfg.prefix);
    let mut conns = Vec::new();
    for s in &shards {
        let client = redis::Client::open(s.url()).unwrap();
        conns.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    // Entries alternate between the two shards' streams.
    direct_publish_reaches_b(&cfg, 10, |n, payload| {
        let mut conn = conns[n as usize % 2].clone();
        let stream = stream.clone();
        async move {
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(payload)
                .query_async::<String>(&mut conn)
                .await
                .unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn direct_publish_works_on_a_redis_cluster() {
    let set = tidings_testkit::redis_cluster::RedisClusterSet::start()
        .await
        .unwrap();
    let cfg = cluster_cfg(&set);
    let stream = format!("{}.publish", cfg.prefix);
    let seeds: Vec<String> = set
        .cluster_address()
        .split(',')
        .map(|a| format!("redis://{a}"))
        .collect();
    let client = redis::cluster::ClusterClient::new(seeds).unwrap();
    let conn = client.get_async_connection().await.unwrap();
    direct_publish_reaches_b(&cfg, 10, |_, payload| {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("payload")
                .arg(payload)
                .query_async::<String>(&mut conn)
                .await
                .unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn each_channel_keeps_its_stream_for_its_own_meta_ttl() {
    let redis = RedisServer::start().await.unwrap();
    // "short:" streams (a namespace's history_meta_ttl) outlive their last
    // publication by one second, the others by an hour.
    let ttl = tidings::broker::MetaTtl::per_channel(|ch| {
        if ch.starts_with("short:") {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(3600)
        }
    });
    let broker = RedisBroker::new(&cfg(&redis), ttl).unwrap();
    let short = broker
        .publish("short:a", publication(1), opts(10))
        .await
        .unwrap();
    let long = broker
        .publish("long:a", publication(1), opts(10))
        .await
        .unwrap();
    let top = |ch: &'static str| {
        let broker = &broker;
        async move {
            let filter = HistoryFilter {
                limit: Some(0),
                ..Default::default()
            };
            broker.history(ch, filter).await.unwrap().position
        }
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = top("short:a").await;
        if now.epoch != short.epoch {
            assert_eq!(now.offset, 0, "a new, empty stream");
            break;
        }
        assert!(Instant::now() < deadline, "the short stream never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(top("long:a").await, long, "the long stream is untouched");
}
