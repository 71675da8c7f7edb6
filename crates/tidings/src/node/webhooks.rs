//! The node's side of the webhooks: which events happen, decided once for every
//! front door.
//!
//! - **Channel occupancy** (`channel_occupied`, `channel_vacated`): the hub tells
//!   when a channel gets its first local subscriber and loses its last.
//! - **Members** (`member_added`, `member_removed`): the connections of a user in
//!   a channel with presence, counted here as membership adds and drops presence
//!   entries.
//!
//! A local change only marks its key dirty. One task per node, the reconciler,
//! compares each dirty key's local state with what it told the engine's
//! [`OccupancyTracker`](crate::occupancy::OccupancyTracker) and calls `enter` or
//! `leave`; the engine answers whether the change was the cluster-wide first or
//! last, and only then is an event emitted. The same task refreshes this node's
//! entries (the timer of `client.presence_update_interval`) and reaps keys whose
//! every holder expired (a node killed with -9), so all calls for one key are
//! made in order, one at a time, and a quick join and leave costs no call at all
//! when both happen before the task runs. One thing makes a client wait: a
//! user's first connection on a node is answered once the reconciler told the
//! engine (see [`Node::user_tracked`]), so a user who opens a connection on
//! one node and then closes the one on another is never reported offline in
//! between.
//!
//! - **Client events** (`client_event`): [`Node::publish_from_client`], which
//!   both front doors use for a client's publication.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use parking_lot::Mutex;
use tidings_protocol::StreamPosition;
use tokio::sync::Notify;

use super::{Node, NodeError, PublishRequest};
use crate::connection::Connection;
use crate::occupancy::Change;
use crate::webhook::WebhookEvent;

/// The longest a user's first connection on a node waits for the engine to
/// know of it ([`Node::user_tracked`]); past it the connection goes on, and the
/// reconciler keeps trying.
const USER_TRACKED_WAIT: Duration = Duration::from_secs(2);
/// Keys reaped per engine call.
const REAP_BATCH: usize = 100;
/// Engine calls in flight at once during a reconcile or refresh pass.
const CONCURRENCY: usize = 16;
/// Wait before a key whose engine call failed is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the node tracks cluster-wide for the webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Channel(String),
    Member {
        channel: String,
        user: String,
    },
    /// A user with a connection (online status).
    User(String),
}

impl Key {
    /// The engine's key: `c:<channel>`, `m:<user length>:<user><channel>` or
    /// `u:<user>`.
    fn encode(&self) -> String {
        match self {
            Key::Channel(c) => format!("c:{c}"),
            Key::User(u) => format!("u:{u}"),
            Key::Member { channel, user } => format!("m:{}:{user}{channel}", user.len()),
        }
    }

    fn decode(key: &str) -> Option<Key> {
        if let Some(channel) = key.strip_prefix("c:") {
            return Some(Key::Channel(channel.to_owned()));
        }
        if let Some(user) = key.strip_prefix("u:") {
            return Some(Key::User(user.to_owned()));
        }
        let rest = key.strip_prefix("m:")?;
        let (len, rest) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        if !rest.is_char_boundary(len) {
            return None;
        }
        let (user, channel) = rest.split_at(len);
        Some(Key::Member {
            channel: channel.to_owned(),
            user: user.to_owned(),
        })
    }

    /// The event of this key's first holder (`true`) or of its last leaving.
    fn event(&self, up: bool) -> WebhookEvent {
        match self {
            Key::Channel(c) => WebhookEvent::channel(
                if up {
                    "channel_occupied"
                } else {
                    "channel_vacated"
                },
                c,
                None,
            ),
            Key::Member { channel, user } => WebhookEvent::channel(
                if up { "member_added" } else { "member_removed" },
                channel,
                Some(user),
            ),
            Key::User(user) => WebhookEvent {
                name: if up { "user_online" } else { "user_offline" },
                user_id: Some(user.clone()),
                ..Default::default()
            },
        }
    }
}

/// The node's tracking state; see the module docs.
pub(super) struct Tracking {
    /// Some webhook gets channel events / member events.
    channels: bool,
    members: bool,
    /// Online status is on: users with connections are tracked.
    users: bool,
    /// Connections per (channel, user) on this node. A plain mutex: counts only.
    counts: Mutex<HashMap<(String, String), usize>>,
    /// Keys whose local state changed since the reconciler last looked.
    dirty: Mutex<HashSet<Key>>,
    /// Keys the engine holds an entry of this node for. Only the reconciler
    /// changes it.
    held: Mutex<HashSet<Key>>,
    wake: Notify,
    /// One pass at a time (the task's, or the last one at shutdown). An async
    /// mutex: held across the engine calls of a pass.
    pass: tokio::sync::Mutex<()>,
    /// How many times a pass took the dirty keys (counted under the `dirty`
    /// lock), and the number of the last pass that finished.
    drains: AtomicU64,
    finished: tokio::sync::watch::Sender<u64>,
}

impl Tracking {
    /// Tracking for the events the webhooks want and for online status; `None`
    /// when nothing tracked is wanted.
    pub(super) fn new(webhooks: Option<&crate::webhook::Webhooks>, online: bool) -> Option<Self> {
        let wants = |event: &str| webhooks.is_some_and(|w| w.wants(event));
        let channels = wants("channel_occupied") || wants("channel_vacated");
        let members = wants("member_added") || wants("member_removed");
        (channels || members || online).then(|| Self {
            channels,
            members,
            users: online,
            counts: Mutex::default(),
            dirty: Mutex::default(),
            held: Mutex::default(),
            wake: Notify::new(),
            pass: tokio::sync::Mutex::new(()),
            drains: AtomicU64::new(0),
            finished: tokio::sync::watch::Sender::new(0),
        })
    }

    fn mark(&self, key: Key) {
        self.dirty.lock().insert(key);
        self.wake.notify_one();
    }
}

impl Node {
    /// The hub got its first or lost its last subscriber of `channel`.
    pub(super) fn channel_occupancy_changed(&self, channel: &str) {
        if let Some(t) = self.inner.tracking.as_ref().filter(|t| t.channels) {
            t.mark(Key::Channel(channel.to_owned()));
        }
    }

    /// Waits (at most [`USER_TRACKED_WAIT`]) until the engine knows this node
    /// holds a connection of `user`, when online status is on: a front door
    /// calls it after [`Node::register`] and before its connect reply. Returns at
    /// once when the engine knew already, or for an anonymous user.
    ///
    /// Boxed: the Socket.IO session awaits it inline in its connect, and its
    /// timer would otherwise add to the size of every such connection's task.
    pub fn user_tracked(&self, user: &str) -> futures_util::future::BoxFuture<'static, ()> {
        let tracked = self.inner.tracking.as_ref().is_some_and(|t| t.users);
        if !tracked || user.is_empty() {
            return Box::pin(std::future::ready(()));
        }
        let node = self.clone();
        let key = Key::User(user.to_owned());
        Box::pin(async move {
            let Some(t) = node.inner.tracking.as_ref() else {
                return;
            };
            if t.held.lock().contains(&key) {
                return;
            }
            // The key was marked before this read, so the pass after the one counted
            // here takes it (or an earlier pass did).
            let ticket = {
                let _dirty = t.dirty.lock();
                t.drains.load(Ordering::Acquire) + 1
            };
            let mut finished = t.finished.subscribe();
            t.wake.notify_one();
            let _ =
                tokio::time::timeout(USER_TRACKED_WAIT, finished.wait_for(|n| *n >= ticket)).await;
        })
    }

    /// `user` got its first connection on this node, or lost its last one.
    pub(super) fn user_connections_changed(&self, user: &str) {
        if let Some(t) = self.inner.tracking.as_ref().filter(|t| t.users) {
            t.mark(Key::User(user.to_owned()));
        }
    }

    /// A connection of `user` entered (`true`) or left presence of `channel`.
    pub(super) fn member_changed(&self, channel: &str, user: &str, entered: bool) {
        let Some(t) = self.inner.tracking.as_ref().filter(|t| t.members) else {
            return;
        };
        // Anonymous connections have no user to report.
        if user.is_empty() {
            return;
        }
        let edge = {
            let mut counts = t.counts.lock();
            let id = (channel.to_owned(), user.to_owned());
            if entered {
                let n = counts.entry(id).or_default();
                *n += 1;
                *n == 1
            } else {
                match counts.get_mut(&id) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        counts.remove(&id);
                        true
                    }
                    None => false,
                }
            }
        };
        if edge {
            t.mark(Key::Member {
                channel: channel.to_owned(),
                user: user.to_owned(),
            });
        }
    }

    /// Publishes a client's publication and, once it is out, tells the webhooks
    /// that want `client_event`. `event` is the client event's name.
    ///
    /// # Errors
    /// [`Node::publish`]'s.
    pub async fn publish_from_client(
        &self,
        conn: &Connection,
        event: &str,
        req: PublishRequest,
    ) -> Result<StreamPosition, NodeError> {
        let hooks = self
            .inner
            .webhooks
            .as_ref()
            .filter(|w| w.wants("client_event"));
        let Some(hooks) = hooks else {
            return self.publish(req).await;
        };
        let (channel, data) = (req.channel.clone(), req.data.clone());
        let position = self.publish(req).await?;
        let (data, b64data) = match data.to_json_text() {
            Ok(text) => (Some(text.into_owned()), None),
            Err(_) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(data.as_bytes());
                (None, Some(b64))
            }
        };
        let user = conn.user();
        hooks.emit(WebhookEvent {
            name: "client_event",
            channel: Some(channel),
            user_id: (!user.is_empty()).then(|| user.to_owned()),
            event: Some(event.to_owned()),
            data,
            b64data,
            socket_id: Some(conn.client_id.clone()),
        });
        Ok(position)
    }

    /// Starts the reconciler when some webhook wants channel or member events.
    /// It stops at shutdown; [`Node::finish_webhooks`] makes the last pass.
    pub(super) fn start_tracking(&self) {
        if self.inner.tracking.is_none() {
            return;
        }
        let node = self.clone();
        let token = self.inner.shutdown.clone();
        let period = self.inner.config.client.presence_update_interval;
        tokio::spawn(async move {
            let Some(t) = node.inner.tracking.as_ref() else {
                return;
            };
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let upkeep = tokio::select! {
                    _ = token.cancelled() => return,
                    _ = t.wake.notified() => false,
                    _ = tick.tick() => true,
                };
                let retry = node.reconcile().await;
                if upkeep {
                    node.refresh_held().await;
                    node.reap_expired().await;
                }
                if retry {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                    t.wake.notify_one();
                }
            }
        });
    }

    /// Tells the engine what changed locally since the last pass; `true` when
    /// some key failed and must be tried again.
    async fn reconcile(&self) -> bool {
        let Some(t) = self.inner.tracking.as_ref() else {
            return false;
        };
        let _pass = t.pass.lock().await;
        let (drain, keys) = {
            let mut dirty = t.dirty.lock();
            let drain = t.drains.fetch_add(1, Ordering::AcqRel) + 1;
            (drain, dirty.drain().collect::<Vec<Key>>())
        };
        let failed = futures_util::stream::iter(keys)
            .map(|key| async move {
                let wanted = self.holds_locally(&key);
                let held = t.held.lock().contains(&key);
                if wanted == held {
                    return None;
                }
                let engine_key = key.encode();
                let uid = self.uid();
                let result = if wanted {
                    self.inner.occupancy.enter(&engine_key, uid).await
                } else {
                    self.inner.occupancy.leave(&engine_key, uid).await
                };
                match result {
                    Ok(change) => {
                        if wanted {
                            t.held.lock().insert(key.clone());
                        } else {
                            t.held.lock().remove(&key);
                        }
                        self.emit_change(&key, change, wanted).await;
                        None
                    }
                    Err(e) => {
                        tracing::warn!(key = engine_key, error = %e, "occupancy change failed: trying again");
                        Some(key)
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(std::future::ready)
            .collect::<Vec<Key>>()
            .await;
        let retry = !failed.is_empty();
        t.dirty.lock().extend(failed);
        t.finished.send_replace(drain);
        retry
    }

    /// Whether this node has what `key` stands for: a subscriber of the channel,
    /// a connection of the user in the channel's presence.
    fn holds_locally(&self, key: &Key) -> bool {
        match key {
            Key::Channel(c) => self.inner.hub.num_subscribers(c) > 0,
            Key::Member { channel, user } => self.inner.tracking.as_ref().is_some_and(|t| {
                t.counts
                    .lock()
                    .contains_key(&(channel.clone(), user.clone()))
            }),
            Key::User(user) => self.inner.clients.lock().users.contains_key(user),
        }
    }

    /// Tells what an engine call reported: the key emptied by expiry before the
    /// call, then this node's own edge.
    async fn emit_change(&self, key: &Key, change: Change, entered: bool) {
        if change.expired {
            self.tell(key, false).await;
        }
        if change.edge {
            self.tell(key, entered).await;
        }
    }

    /// A cluster-wide first (`up`) or last of `key`: a webhook event, and for a
    /// user, the new status in the user's status channel.
    async fn tell(&self, key: &Key, up: bool) {
        if let Key::User(user) = key {
            self.publish_status(user, up).await;
        }
        if let Some(hooks) = self.inner.webhooks.as_ref() {
            hooks.emit(key.event(up));
        }
    }

    /// Moves the expiry of every entry this node holds forward (and learns of
    /// those that expired meanwhile and were reaped: they are first again).
    async fn refresh_held(&self) {
        let Some(t) = self.inner.tracking.as_ref() else {
            return;
        };
        let _pass = t.pass.lock().await;
        let keys: Vec<Key> = t.held.lock().iter().cloned().collect();
        futures_util::stream::iter(keys)
            .for_each_concurrent(CONCURRENCY, |key| async move {
                match self.inner.occupancy.enter(&key.encode(), self.uid()).await {
                    Ok(change) => self.emit_change(&key, change, true).await,
                    Err(e) => tracing::debug!(error = %e, "occupancy refresh failed"),
                }
            })
            .await;
    }

    /// Tells of the keys whose every holder expired (their nodes died), each
    /// reported to exactly one live node by the engine.
    async fn reap_expired(&self) {
        loop {
            let keys = match self.inner.occupancy.reap(REAP_BATCH).await {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::debug!(error = %e, "occupancy reap failed");
                    return;
                }
            };
            for key in &keys {
                match Key::decode(key) {
                    Some(k) => self.tell(&k, false).await,
                    None => tracing::warn!(key, "occupancy: unreadable key reaped"),
                }
            }
            if keys.len() < REAP_BATCH {
                return;
            }
        }
    }

    /// At shutdown, after the connections left: the last changes go to the
    /// engine, then the webhooks get one more try within `within`.
    pub(super) async fn finish_webhooks(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.reconcile()).await;
        if let Some(hooks) = self.inner.webhooks.clone() {
            hooks.close(within).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_the_engine_round_trip() {
        for key in [
            Key::Channel("chat:room-1".into()),
            Key::Channel(String::new()),
            Key::Member {
                channel: "chat:1".into(),
                user: "42:x".into(),
            },
            Key::Member {
                channel: "m:3:abc".into(),
                user: "é".into(),
            },
            Key::User("alice".into()),
            Key::User("c:x".into()),
        ] {
            assert_eq!(Key::decode(&key.encode()), Some(key));
        }
        assert_eq!(Key::decode("x:1"), None);
    }
}
