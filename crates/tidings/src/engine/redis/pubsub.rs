//! The Redis broker's pub/sub side: one dedicated connection per node, owned by
//! [`subscription_task`], which connects, subscribes (in batches), delivers what
//! arrives to the node in order, applies subscription changes, checks the
//! connection with PINGs and starts over when it fails.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::Value;
use tidings_protocol::{ClientInfo, Publication};
use tokio::sync::oneshot;

use super::broker::{Inner, RedisBroker, ShardState};
use super::conn::{RECONNECT_MAX, RECONNECT_MIN};
use super::keys::Keys;
use super::ENGINE;
use crate::broker::{BrokerError, BrokerEventHandler, EngineError};

/// Channels per SUBSCRIBE / UNSUBSCRIBE command when many change at once
/// (resubscription after a reconnect).
const SUBSCRIBE_BATCH: usize = 512;

/// How often the pub/sub connection is checked with a PING (a connection that dies
/// without a FIN is otherwise noticed only by the kernel, much later).
pub(super) const PUBSUB_PING: Duration = Duration::from_secs(3);

/// What the subscription task must do, shared with the callers of
/// subscribe/unsubscribe.
#[derive(Default)]
pub(super) struct SubState {
    /// Pub/sub channel → how many subscribe calls are not yet matched by an
    /// unsubscribe. Counting (rather than a set) keeps a late unsubscribe of an
    /// earlier subscriber from cancelling a newer subscription.
    pub(super) wanted: HashMap<String, u32>,
    /// Channels whose wanted state may differ from the connection's.
    pub(super) changed: HashSet<String>,
    /// Callers waiting for the next sync of the connection.
    pub(super) waiters: Vec<oneshot::Sender<Result<(), EngineError>>>,
    /// The pub/sub connection is up and in sync (apart from `changed`).
    pub(super) connected: bool,
    /// The first connection attempt has ended. Before that, subscribe calls wait
    /// for it (a node that just started is not "down").
    pub(super) tried: bool,
}

/// What the pub/sub connection must change to match what is wanted, and who waits
/// for it.
pub(super) struct Changes {
    pub(super) add: Vec<String>,
    pub(super) remove: Vec<String>,
    pub(super) waiters: Vec<oneshot::Sender<Result<(), EngineError>>>,
}

impl SubState {
    /// Takes the changed channels: those wanted but not in `subscribed`, those in
    /// `subscribed` no longer wanted, and the callers waiting for this sync. Shared
    /// by the single-server and the Redis Cluster subscription loops.
    pub(super) fn take_changes(&mut self, subscribed: &HashSet<String>) -> Changes {
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for ch in std::mem::take(&mut self.changed) {
            let want = self.wanted.contains_key(&ch);
            let have = subscribed.contains(&ch);
            if want && !have {
                add.push(ch);
            } else if !want && have {
                remove.push(ch);
            }
        }
        Changes {
            add,
            remove,
            waiters: std::mem::take(&mut self.waiters),
        }
    }
}

impl RedisBroker {
    /// One more subscriber of `channel` on this node: subscribes the pub/sub
    /// connection when it is the first, and waits until the connection is in sync.
    pub(super) async fn want(&self, channel: &str) -> Result<(), BrokerError> {
        let name = self.inner.keys.client_channel(channel);
        let shard = self.inner.shard_of(channel);
        {
            let mut s = self.inner.shards[shard].subs.lock();
            let n = s.wanted.entry(name.clone()).or_insert(0);
            *n += 1;
            s.changed.insert(name);
        }
        self.sync_subscriptions(shard).await
    }

    /// One subscriber of `channel` fewer: unsubscribes the connection (in the
    /// background) when it was the last.
    pub(super) fn unwant(&self, channel: &str) {
        let name = self.inner.keys.client_channel(channel);
        let state = &self.inner.shards[self.inner.shard_of(channel)];
        {
            let mut s = state.subs.lock();
            if let Some(n) = s.wanted.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.wanted.remove(&name);
                }
            }
            s.changed.insert(name);
            if !s.connected {
                // The next connection subscribes only what is wanted.
                return;
            }
        }
        state.sub_notify.notify_one();
    }

    /// Waits until the pub/sub connection of `shard` has caught up with the
    /// wanted channels.
    async fn sync_subscriptions(&self, shard: usize) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        let state = &self.inner.shards[shard];
        {
            let mut s = state.subs.lock();
            if !s.connected && s.tried {
                return Err(EngineError::NotConnected { engine: ENGINE }.into());
            }
            s.waiters.push(tx);
        }
        state.sub_notify.notify_one();
        match tokio::time::timeout(self.inner.cfg.io_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(_)) => {
                Err(EngineError::failed(ENGINE, "subscribe", "pub/sub task stopped").into())
            }
            Err(_) => Err(EngineError::Timeout {
                engine: ENGINE,
                operation: "subscribe",
            }
            .into()),
        }
    }
}

/// Owns the pub/sub connection of one shard for the broker's life: connect,
/// subscribe the control channels (first shard only) and every wanted channel in
/// batches, deliver messages in order, apply subscription changes, and start over
/// when the connection fails.
pub(super) async fn subscription_task(inner: Arc<Inner>, shard: usize) {
    let Some(handler) = inner.handler.get().cloned() else {
        return;
    };
    let uid = inner.node_uid.get().cloned().unwrap_or_default();
    let fixed: Vec<String> = if shard == 0 {
        vec![inner.keys.control(), inner.keys.node(&uid)]
    } else {
        Vec::new()
    };
    let state = &inner.shards[shard];
    let conn = inner.conns.get(shard);
    let mut backoff = RECONNECT_MIN;
    let mut connected_before = false;
    loop {
        let pubsub = conn.pubsub().await;
        let (pubsub, master) = match pubsub {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "redis pub/sub: connect failed");
                fail_waiters(state, &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        // Everything wanted now; changes made from here on are marked `changed`
        // and applied by the loop below.
        let (all, waiters) = {
            let mut s = state.subs.lock();
            s.changed.clear();
            let all: Vec<String> = s.wanted.keys().cloned().collect();
            (all, std::mem::take(&mut s.waiters))
        };
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut ok = send_batched(&mut sink, &fixed, true, inner.cfg.io_timeout).await;
        if ok.is_ok() {
            ok = send_batched(&mut sink, &all, true, inner.cfg.io_timeout).await;
        }
        if let Err(e) = ok {
            tracing::warn!(error = %e, "redis pub/sub: subscribing failed");
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
            fail_waiters(state, &e);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
            continue;
        }
        subscribed.extend(all);
        {
            let mut s = state.subs.lock();
            s.connected = true;
            s.tried = true;
        }
        for w in waiters {
            let _ = w.send(Ok(()));
        }
        backoff = RECONNECT_MIN;
        if connected_before {
            tracing::info!(
                channels = subscribed.len(),
                "redis pub/sub: reconnected and resubscribed"
            );
            handler.handle_reconnect();
        }
        connected_before = true;
        // Changes that arrived while subscribing.
        state.sub_notify.notify_one();

        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.tick().await;
        let why = loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        break EngineError::failed(ENGINE, "pub/sub", "connection closed");
                    };
                    deliver(&*handler, &inner.keys, &fixed, msg.get_channel_name(), msg.get_payload_bytes());
                }
                _ = state.sub_notify.notified() => {
                    if let Err(e) = apply_changes(&inner, state, &mut sink, &mut subscribed).await {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(inner.cfg.io_timeout, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break EngineError::failed(ENGINE, "pub/sub ping", e),
                        Err(_) => break EngineError::Timeout { engine: ENGINE, operation: "pub/sub ping" },
                    }
                    // A Sentinel shard whose master changed while this connection
                    // stayed open (a failover that did not kill the old master).
                    if let Some(now) = conn.named_master().await {
                        if now != master {
                            break EngineError::failed(ENGINE, "pub/sub", format!("the sentinels name {now} as the master, not {master}"));
                        }
                    }
                }
            }
        };
        tracing::warn!(reason = %why, "redis pub/sub: connection lost");
        state.subs.lock().connected = false;
        fail_waiters(state, &why);
    }
}

/// Fails every waiting subscribe (and marks the connection down).
pub(super) fn fail_waiters(state: &ShardState, why: &EngineError) {
    let waiters = {
        let mut s = state.subs.lock();
        s.connected = false;
        s.tried = true;
        std::mem::take(&mut s.waiters)
    };
    for w in waiters {
        let _ = w.send(Err(why.clone()));
    }
}

/// SUBSCRIBE or UNSUBSCRIBE `channels`, [`SUBSCRIBE_BATCH`] per command.
async fn send_batched(
    sink: &mut redis::aio::PubSubSink,
    channels: &[String],
    subscribe: bool,
    io_timeout: Duration,
) -> Result<(), EngineError> {
    let operation = if subscribe {
        "subscribe"
    } else {
        "unsubscribe"
    };
    for batch in channels.chunks(SUBSCRIBE_BATCH) {
        let fut = async {
            if subscribe {
                sink.subscribe(batch).await
            } else {
                sink.unsubscribe(batch).await
            }
        };
        match tokio::time::timeout(io_timeout, fut).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(EngineError::failed(ENGINE, operation, e)),
            Err(_) => {
                return Err(EngineError::Timeout {
                    engine: ENGINE,
                    operation,
                })
            }
        }
    }
    Ok(())
}

/// Brings the connection's subscriptions in line with what is wanted, then answers
/// the callers that were waiting.
async fn apply_changes(
    inner: &Inner,
    state: &ShardState,
    sink: &mut redis::aio::PubSubSink,
    subscribed: &mut HashSet<String>,
) -> Result<(), EngineError> {
    let Changes {
        add,
        remove,
        waiters,
    } = state.subs.lock().take_changes(subscribed);
    let mut result = send_batched(sink, &add, true, inner.cfg.io_timeout).await;
    if result.is_ok() {
        subscribed.extend(add);
        result = send_batched(sink, &remove, false, inner.cfg.io_timeout).await;
        if result.is_ok() {
            for ch in &remove {
                subscribed.remove(ch);
            }
        }
    }
    for w in waiters {
        let _ = w.send(result.clone());
    }
    result
}

/// Hands one pub/sub message to the node.
pub(super) fn deliver(
    handler: &dyn BrokerEventHandler,
    keys: &Keys,
    fixed: &[String],
    channel: &str,
    payload: &[u8],
) {
    if let Some(ch) = keys.channel_of(channel) {
        match payload.split_first() {
            Some((b'P', rest)) => match parse_publication(rest) {
                Some((p, epoch)) if p.offset > 0 && !epoch.is_empty() => {
                    handler.handle_stream_publication(ch, &p, epoch)
                }
                Some((p, _)) => handler.handle_publication(ch, &p),
                None => tracing::warn!(channel = ch, "redis: malformed publication dropped"),
            },
            Some((b'J', rest)) => match serde_json::from_slice::<ClientInfo>(rest) {
                Ok(info) => handler.handle_join(ch, &info),
                Err(_) => tracing::warn!(channel = ch, "redis: malformed join dropped"),
            },
            Some((b'L', rest)) => match serde_json::from_slice::<ClientInfo>(rest) {
                Ok(info) => handler.handle_leave(ch, &info),
                Err(_) => tracing::warn!(channel = ch, "redis: malformed leave dropped"),
            },
            _ => tracing::warn!(channel = ch, "redis: unknown message dropped"),
        }
    } else if fixed.iter().any(|f| f == channel) {
        handler.handle_control(payload);
    }
}

/// `<offset>:<epoch>:<publication JSON>` → the publication with its offset.
fn parse_publication(rest: &[u8]) -> Option<(Publication, &str)> {
    let colon = rest.iter().position(|&b| b == b':')?;
    let offset: u64 = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let rest = &rest[colon + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let epoch = std::str::from_utf8(&rest[..colon]).ok()?;
    let mut p: Publication = crate::broker::decode_publication(&rest[colon + 1..]).ok()?;
    p.offset = offset;
    Some((p, epoch))
}
