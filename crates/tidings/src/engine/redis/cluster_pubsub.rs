//! The pub/sub side of a Redis Cluster shard: one sharded pub/sub connection per
//! node (redis-rs's cluster connection in RESP3, which sends each `SSUBSCRIBE` to
//! the node that owns the channel's slot and subscribes again after a
//! disconnection or a failover), owned by [`cluster_subscription_task`] as
//! `pubsub::subscription_task` owns a plain one.
//!
//! A disconnection from any node of the cluster may have cost messages, and
//! redis-rs moves subscriptions to a promoted replica only once something makes
//! it reload the slot map. So the task starts over on a disconnection: a new
//! client reads the slot map from the seeds, subscribes every channel again
//! (retrying with backoff until the cluster has failed over), and only then
//! tells the node ([`crate::broker::BrokerEventHandler::handle_reconnect`]),
//! which checks its channels' positions and makes the clients in doubt recover.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::{PushKind, Value};

use super::broker::Inner;
use super::cluster::{PushQueue, PUSH_QUEUE};
use super::conn::{RECONNECT_MAX, RECONNECT_MIN};
use super::pubsub::{deliver, fail_waiters, Changes, PUBSUB_PING};
use super::ENGINE;
use crate::broker::EngineError;

/// `SSUBSCRIBE` takes channels of one slot only: one command per channel, this
/// many at a time.
const SUBSCRIBE_CONCURRENCY: usize = 64;

/// Owns the sharded pub/sub connection of a Redis Cluster shard for the broker's
/// life (see the module docs).
pub(super) async fn cluster_subscription_task(inner: Arc<Inner>, shard: usize) {
    let Some(handler) = inner.handler.get().cloned() else {
        return;
    };
    let Some(target) = inner.conns.get(shard).cluster() else {
        return;
    };
    let uid = inner.node_uid.get().cloned().unwrap_or_default();
    let fixed: Vec<String> = if shard == 0 {
        vec![inner.keys.control(), inner.keys.node(&uid)]
    } else {
        Vec::new()
    };
    let state = &inner.shards[shard];
    let mut backoff = RECONNECT_MIN;
    let mut connected_before = false;
    loop {
        let (tx, mut pushes) = tokio::sync::mpsc::channel(PUSH_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        let queue = PushQueue {
            tx,
            overflowed: overflowed.clone(),
        };
        let connect = async {
            let client = target
                .pubsub_client(inner.cfg.io_timeout, queue)
                .map_err(|e| EngineError::failed(ENGINE, "pub/sub connect", e))?;
            client
                .get_async_connection()
                .await
                .map_err(|e| EngineError::failed(ENGINE, "pub/sub connect", e))
        };
        let conn = tokio::time::timeout(inner.cfg.connect_timeout * 2, connect)
            .await
            .unwrap_or(Err(EngineError::Timeout {
                engine: ENGINE,
                operation: "pub/sub connect",
            }));
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "redis cluster pub/sub: connect failed");
                fail_waiters(state, &e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        let (all, waiters) = {
            let mut s = state.subs.lock();
            s.changed.clear();
            let all: Vec<String> = s.wanted.keys().cloned().collect();
            (all, std::mem::take(&mut s.waiters))
        };
        let mut subscribed: HashSet<String> = HashSet::new();
        let mut ok = subscribe_each(&conn, &fixed, true, inner.cfg.io_timeout).await;
        if ok.is_ok() {
            ok = subscribe_each(&conn, &all, true, inner.cfg.io_timeout).await;
        }
        if let Err(e) = ok {
            tracing::warn!(error = %e, "redis cluster pub/sub: subscribing failed");
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
            handler.handle_reconnect();
        }
        connected_before = true;
        state.sub_notify.notify_one();

        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.tick().await;
        let why = loop {
            tokio::select! {
                push = pushes.recv() => {
                    let Some(push) = push else {
                        break EngineError::failed(ENGINE, "pub/sub", "connection closed");
                    };
                    match push.kind {
                        PushKind::SMessage => {
                            if let [Value::BulkString(channel), Value::BulkString(payload), ..] = push.data.as_slice() {
                                if let Ok(channel) = std::str::from_utf8(channel) {
                                    deliver(&*handler, &inner.keys, &fixed, channel, payload);
                                }
                            }
                        }
                        PushKind::Disconnection => {
                            break EngineError::failed(ENGINE, "pub/sub", "a cluster node's connection was lost");
                        }
                        _ => {}
                    }
                    if overflowed.swap(false, Ordering::Relaxed) {
                        tracing::warn!("redis cluster pub/sub: messages dropped (queue full)");
                        handler.handle_reconnect();
                    }
                }
                _ = state.sub_notify.notified() => {
                    if let Err(e) = apply_changes(&inner, shard, &conn, &mut subscribed).await {
                        break e;
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        inner.cfg.io_timeout,
                        redis::cmd("PING").query_async::<Value>(&mut conn),
                    )
                    .await;
                    match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break EngineError::failed(ENGINE, "pub/sub ping", e),
                        Err(_) => break EngineError::Timeout { engine: ENGINE, operation: "pub/sub ping" },
                    }
                }
            }
        };
        tracing::warn!(reason = %why, "redis cluster pub/sub: connection lost");
        state.subs.lock().connected = false;
        fail_waiters(state, &why);
    }
}

/// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) each of `channels`, one command per
/// channel, [`SUBSCRIBE_CONCURRENCY`] at a time.
async fn subscribe_each(
    conn: &ClusterConnection,
    channels: &[String],
    subscribe: bool,
    io_timeout: Duration,
) -> Result<(), EngineError> {
    let operation = if subscribe {
        "subscribe"
    } else {
        "unsubscribe"
    };
    for chunk in channels.chunks(SUBSCRIBE_CONCURRENCY) {
        let calls = chunk.iter().map(|ch| {
            let mut c = conn.clone();
            async move {
                if subscribe {
                    c.ssubscribe(ch).await
                } else {
                    c.sunsubscribe(ch).await
                }
            }
        });
        match tokio::time::timeout(io_timeout, futures_util::future::join_all(calls)).await {
            Ok(results) => {
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    return Err(EngineError::failed(ENGINE, operation, e));
                }
            }
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

/// Brings the subscriptions in line with what is wanted, then answers the
/// callers that were waiting (as `pubsub::apply_changes`).
async fn apply_changes(
    inner: &Inner,
    shard: usize,
    conn: &ClusterConnection,
    subscribed: &mut HashSet<String>,
) -> Result<(), EngineError> {
    let state = &inner.shards[shard];
    let Changes {
        add,
        remove,
        waiters,
    } = state.subs.lock().take_changes(subscribed);
    let mut result = subscribe_each(conn, &add, true, inner.cfg.io_timeout).await;
    if result.is_ok() {
        subscribed.extend(add);
        result = subscribe_each(conn, &remove, false, inner.cfg.io_timeout).await;
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
