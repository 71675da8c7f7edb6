//! Local fan-out: which connections on this node are subscribed to which channel.
//!
//! The map is sharded by channel name so that subscribes on one channel do not
//! contend with fan-out on another. A publication arrives here already encoded: the
//! same [`Bytes`] go to every subscriber.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tidings_protocol::Disconnect;

use crate::connection::Connection;

const SHARDS: usize = 64;

/// A connection's membership in one channel.
pub struct Subscriber {
    pub conn: Arc<Connection>,
    /// Whether this subscriber gets join/leave pushes.
    pub join_leave: bool,
    /// Fast path: once live, deliveries go straight to the outbox without the lock.
    live: AtomicBool,
    /// While the subscribe is in progress, deliveries wait here with their offsets, so
    /// they can be ordered after the subscribe reply and de-duplicated against the
    /// publications the reply carries. `None` once live.
    pending: Mutex<Option<Pending>>,
}

#[derive(Default)]
struct Pending {
    items: Vec<(u64, Bytes)>,
    bytes: usize,
}

impl Subscriber {
    /// A subscriber that buffers until [`Subscriber::go_live`].
    pub fn new(conn: Arc<Connection>, join_leave: bool) -> Arc<Self> {
        Arc::new(Self {
            conn,
            join_leave,
            live: AtomicBool::new(false),
            pending: Mutex::new(Some(Pending::default())),
        })
    }

    fn deliver(&self, offset: u64, bytes: &Bytes) {
        if self.live.load(Ordering::Acquire) {
            self.conn.send(bytes.clone());
            return;
        }
        let mut pending = self.pending.lock();
        match pending.as_mut() {
            Some(p) => {
                p.bytes += bytes.len();
                if p.bytes > self.conn.outbox_limit() {
                    // Buffered more than the client may have queued: same rule as a
                    // full outbox.
                    p.items.clear();
                    self.conn.outbox.close(Disconnect::slow(), false);
                } else {
                    p.items.push((offset, bytes.clone()));
                }
            }
            None => {
                self.conn.send(bytes.clone());
            }
        }
    }

    /// Sends `first` (the subscribe reply), then what was buffered with an offset
    /// greater than `after_offset` (offset 0 means "no position", always sent), and
    /// switches to direct delivery. Doing all of it under the lock keeps the order.
    pub fn go_live(&self, first: Option<Bytes>, after_offset: u64) {
        let mut pending = self.pending.lock();
        if let Some(bytes) = first {
            self.conn.send(bytes);
        }
        if let Some(p) = pending.take() {
            for (offset, bytes) in p.items {
                if offset == 0 || offset > after_offset {
                    self.conn.send(bytes);
                }
            }
        }
        self.live.store(true, Ordering::Release);
    }
}

impl Connection {
    pub(crate) fn outbox_limit(&self) -> usize {
        self.outbox.max_bytes()
    }
}

type Shard = RwLock<HashMap<String, HashMap<u64, Arc<Subscriber>>>>;

/// Channel → subscribers on this node.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: BuildHasherDefault<DefaultHasher>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: BuildHasherDefault::default(),
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        let h = self.hasher.hash_one(channel) as usize;
        &self.shards[h % SHARDS]
    }

    /// Adds a subscriber; `true` when it is the channel's first on this node.
    pub fn add(&self, channel: &str, sub: Arc<Subscriber>) -> bool {
        let mut shard = self.shard(channel).write();
        let subs = shard.entry(channel.to_string()).or_default();
        let first = subs.is_empty();
        subs.insert(sub.conn.serial, sub);
        first
    }

    /// Removes a connection from a channel; `true` when the channel is now empty here.
    pub fn remove(&self, channel: &str, serial: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if subs.remove(&serial).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Delivers an encoded publication to every subscriber; returns how many.
    pub fn publish(&self, channel: &str, offset: u64, bytes: &Bytes) -> usize {
        let shard = self.shard(channel).read();
        let Some(subs) = shard.get(channel) else {
            return 0;
        };
        for sub in subs.values() {
            sub.deliver(offset, bytes);
        }
        subs.len()
    }

    /// Delivers an encoded join or leave push to subscribers that want them.
    pub fn join_leave(&self, channel: &str, bytes: &Bytes, except: Option<u64>) -> usize {
        let shard = self.shard(channel).read();
        let Some(subs) = shard.get(channel) else {
            return 0;
        };
        let mut n = 0;
        for sub in subs.values() {
            if sub.join_leave && Some(sub.conn.serial) != except {
                sub.deliver(0, bytes);
                n += 1;
            }
        }
        n
    }

    /// Subscribers of a channel on this node.
    pub fn num_subscribers(&self, channel: &str) -> usize {
        self.shard(channel)
            .read()
            .get(channel)
            .map_or(0, HashMap::len)
    }

    /// Every channel with subscribers here, with its subscriber count.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (name, subs) in shard.read().iter() {
                out.push((name.clone(), subs.len()));
            }
        }
        out
    }

    /// Number of channels with subscribers here.
    pub fn num_channels(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}
