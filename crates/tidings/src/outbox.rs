//! The write side of a connection: a queue bounded in bytes, drained in batches.
//!
//! Everything a connection is sent (replies, pushes, pings) goes through its [`Outbox`].
//! Fan-out pushes shared [`Bytes`] into many outboxes without waiting; the connection's
//! writer task takes everything queued at once and writes it as one frame, so a burst
//! costs one system call instead of one per message.
//!
//! When a client stops reading, its outbox fills. Past `client.queue_max_size` bytes
//! the outbox drops what it holds and closes with 3008 "slow": the writer finishes the
//! write it is in (bounded by `websocket.write_timeout`) and sends the close. Nobody
//! else waits and memory stays bounded.

use std::collections::VecDeque;

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use metrics::Histogram;
use parking_lot::Mutex;
use tidings_protocol::Disconnect;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A connection's bounded outgoing queue.
pub struct Outbox {
    // A plain mutex: pushes and drains are short and never await while holding it.
    state: Mutex<State>,
    /// Wakes the writer; `notify_one` keeps a permit, so no wake-up is lost.
    notify: Notify,
    /// Fired on any close, flushing or not, so the session stops reading.
    closed: CancellationToken,
    max_bytes: usize,
    /// Where the wait of each batch is recorded (the node's
    /// `tidings_outbox_wait_seconds`), once the connection is registered.
    wait: OnceLock<Histogram>,
}

struct State {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// Set once: the disconnect to send after the queued items (if any remain).
    close: Option<Disconnect>,
    /// When the oldest queued item arrived (only while a wait histogram is set).
    since: Option<Instant>,
}

/// What the writer should do next.
pub enum Drained {
    /// Write these items as one batch.
    Batch(Vec<Bytes>),
    /// Write these items (possibly none), then close with this disconnect.
    Close(Vec<Bytes>, Disconnect),
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                close: None,
                since: None,
            }),
            notify: Notify::new(),
            closed: CancellationToken::new(),
            max_bytes,
            wait: OnceLock::new(),
        }
    }

    /// From now on, records in `histogram` how long each batch waited: from the
    /// push that made the queue non-empty to the writer taking it.
    pub fn record_wait(&self, histogram: Histogram) {
        let _ = self.wait.set(histogram);
    }

    /// Queues one encoded reply or push. Returns `false` when the outbox is closed,
    /// including when this push overflowed it (the connection is then closed as slow).
    pub fn push(&self, item: Bytes) -> bool {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return false;
        }
        if st.bytes + item.len() > self.max_bytes {
            st.items.clear();
            st.bytes = 0;
            st.since = None;
            st.close = Some(Disconnect::slow());
            drop(st);
            self.closed.cancel();
            self.notify.notify_one();
            return false;
        }
        let was_empty = st.items.is_empty();
        if was_empty && self.wait.get().is_some() {
            st.since = Some(Instant::now());
        }
        st.bytes += item.len();
        st.items.push_back(item);
        drop(st);
        // Only the push that makes the queue non-empty wakes the writer: every
        // consumer looks at the queue under the lock before it waits, so a queue
        // that was already non-empty has been seen, or announced by that push (a
        // fan-out pushes into a queue many times before its writer runs).
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Closes the outbox after what is queued: the writer sends that, then the
    /// disconnect. The first close wins; `false` when the outbox was closed already.
    pub fn close_after_queued(&self, disconnect: Disconnect) -> bool {
        self.close(disconnect, true)
    }

    /// Closes the outbox at once: what is queued is dropped and only the
    /// disconnect is written. The first close wins; `false` when the outbox was
    /// closed already.
    pub fn close_dropping_queued(&self, disconnect: Disconnect) -> bool {
        self.close(disconnect, false)
    }

    fn close(&self, disconnect: Disconnect, flush: bool) -> bool {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return false;
        }
        if !flush {
            st.items.clear();
            st.bytes = 0;
            st.since = None;
        }
        st.close = Some(disconnect);
        drop(st);
        self.closed.cancel();
        self.notify.notify_one();
        true
    }

    /// The disconnect the outbox was closed with, if it was.
    pub fn closed_with(&self) -> Option<Disconnect> {
        self.state.lock().close.clone()
    }

    /// The byte bound of the queue.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Fired on any close.
    pub fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Waits until there is something to write or a close, without taking it.
    pub async fn ready(&self) {
        loop {
            {
                let st = self.state.lock();
                if !st.items.is_empty() || st.close.is_some() {
                    return;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Waits until there is something to write or a close, then takes all of it.
    pub async fn drain(&self) -> Drained {
        loop {
            {
                let mut st = self.state.lock();
                if !st.items.is_empty() || st.close.is_some() {
                    // Taken whole (the queue only grows at the back, so it is
                    // contiguous and becomes a Vec in place), no copy. The fresh
                    // queue gets room for as many as this batch: under fan-out the
                    // next batch is about as large and fills it without regrowing,
                    // and an idle connection keeps only the room of its last batch.
                    let room = st.items.len();
                    let items = Vec::from(std::mem::replace(
                        &mut st.items,
                        VecDeque::with_capacity(room),
                    ));
                    st.bytes = 0;
                    let since = st.since.take();
                    let drained = match &st.close {
                        Some(d) => Drained::Close(items, d.clone()),
                        None => Drained::Batch(items),
                    };
                    drop(st);
                    if let (Some(since), Some(h)) = (since, self.wait.get()) {
                        h.record(since.elapsed().as_secs_f64());
                    }
                    return drained;
                }
            }
            self.notify.notified().await;
        }
    }
}

/// Joins items into one newline-delimited frame.
pub fn join_batch(items: &[Bytes]) -> Bytes {
    if items.len() == 1 {
        return items[0].clone();
    }
    let len = items.iter().map(|b| b.len() + 1).sum();
    let mut out = Vec::with_capacity(len);
    for item in items {
        tidings_protocol::codec::push_line(&mut out, item);
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drains_in_one_batch() {
        let outbox = Outbox::new(1024);
        assert!(outbox.push(Bytes::from_static(b"{\"id\":1}")));
        assert!(outbox.push(Bytes::from_static(b"{\"id\":2}")));
        let Drained::Batch(items) = outbox.drain().await else {
            panic!("expected a batch")
        };
        assert_eq!(
            join_batch(&items),
            Bytes::from_static(b"{\"id\":1}\n{\"id\":2}")
        );
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_and_drops_queue() {
        let outbox = Outbox::new(1024);
        assert!(outbox.push(Bytes::from(vec![b'x'; 1000])));
        assert!(!outbox.push(Bytes::from(vec![b'x'; 100])));
        assert!(outbox.closed_token().is_cancelled());
        match outbox.drain().await {
            Drained::Close(items, d) => {
                assert!(items.is_empty());
                assert_eq!(d.code, 3008);
            }
            Drained::Batch(_) => panic!("expected close"),
        }
        assert!(!outbox.push(Bytes::from_static(b"{}")));
    }

    #[tokio::test]
    async fn flushing_close_keeps_queued_items() {
        let outbox = Outbox::new(1024);
        outbox.push(Bytes::from_static(b"a"));
        outbox.close_after_queued(Disconnect::shutdown());
        match outbox.drain().await {
            Drained::Close(items, d) => {
                assert_eq!(items.len(), 1);
                assert_eq!(d.code, 3001);
            }
            Drained::Batch(_) => panic!("expected close"),
        }
    }
}
