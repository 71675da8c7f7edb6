//! Local fan-out: which connections on this node are subscribed to which channel.
//!
//! The map is sharded by channel name so that subscribes on one channel do not
//! contend with fan-out on another. A publication arrives here already encoded: the
//! same [`Bytes`] go to every subscriber.
//!
//! For a channel with history the hub also remembers the last position it delivered
//! (epoch, offset). That is how a node notices what the broker failed to bring: a
//! publication at or below that offset, in the same epoch, is a duplicate and is
//! dropped; one further ahead, or in another epoch, means publications went missing
//! on the way to this node. When the broker does not say the epoch, a publication
//! at or below the last offset may open a new epoch (history lost), so it counts
//! as a gap too. The channel's subscribers are then told to resubscribe and recover
//! (unsubscribe push 2500), and get nothing more on the old subscription, so a
//! client's stream never has a silent hole.
//!
//! The channel's position is not enough on its own: subscribers join at different
//! positions (each reads the stream when it subscribes), and a node whose broker
//! subscription was still being set up, or was cut, may miss publications that
//! some of them needed and others did not. So each subscriber with a position
//! also checks its own sequence: it expects the offset after the last one it was
//! sent (or after its subscribe reply), skips what it has, and loses its place
//! on a jump, alone.
use std::any::TypeId;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tidings_protocol::{ClientInfo, Disconnect, FilterNode, Payload, Publication, StreamPosition};

use crate::connection::{Connection, Control};

const SHARDS: usize = 64;

/// How the pushes of one kind of connection are encoded: the Centrifugo protocol in
/// JSON or Protobuf, or a front door's own wire format (Socket.IO events). A
/// subscriber names its encoder; the hub encodes each push at most once per encoder
/// in use on the channel and hands the same bytes to every subscriber of that
/// encoder, so nothing is serialised per subscriber.
///
/// `None` means the encoding cannot carry the push: a payload that is not JSON,
/// for a JSON connection. The hub then closes those subscribers' connections with
/// 3506 "inappropriate protocol", as Centrifugo does.
pub trait PushEncoder: Send + Sync + 'static {
    /// A publication of `channel`.
    fn publication(&self, channel: &str, publication: &Publication) -> Option<Bytes>;
    /// A client joined `channel`.
    fn join(&self, channel: &str, info: &ClientInfo) -> Option<Bytes>;
    /// A client left `channel`.
    fn leave(&self, channel: &str, info: &ClientInfo) -> Option<Bytes>;
    /// A publication of `channel` whose data is `patch`, a fossil delta against the
    /// previous publication the subscriber received. `None` when this encoding
    /// cannot carry the patch: the subscriber then gets the full publication.
    fn publication_delta(
        &self,
        channel: &str,
        publication: &Publication,
        patch: &Bytes,
    ) -> Option<Bytes> {
        let _ = (channel, publication, patch);
        None
    }

    /// Tells encoders apart when a fan-out keeps one encoding per encoder. Not their
    /// address: the encoders are zero-sized statics, and two of those may share one
    /// (`JSON_PUSHES` and `PROTOBUF_PUSHES` did, and JSON subscribers were handed
    /// Protobuf bytes).
    fn kind(&self) -> TypeId {
        TypeId::of::<Self>()
    }
}

fn publication_push(channel: &str, publication: &Publication) -> tidings_protocol::Reply {
    tidings_protocol::Reply::push(tidings_protocol::Push {
        channel: channel.to_string(),
        publication: Some(publication.clone()),
        ..Default::default()
    })
}

fn join_leave_push(channel: &str, info: &ClientInfo, joined: bool) -> tidings_protocol::Reply {
    let body = Some(tidings_protocol::JoinLeave { info: info.clone() });
    let (join, leave) = if joined { (body, None) } else { (None, body) };
    tidings_protocol::Reply::push(tidings_protocol::Push {
        channel: channel.to_string(),
        join,
        leave,
        ..Default::default()
    })
}

/// The Centrifugo client protocol's JSON pushes.
pub struct JsonPushes;

/// The encoder of JSON Centrifugo connections.
pub static JSON_PUSHES: JsonPushes = JsonPushes;

impl PushEncoder for JsonPushes {
    fn publication(&self, channel: &str, publication: &Publication) -> Option<Bytes> {
        publication_push(channel, publication)
            .try_to_json()
            .ok()
            .map(Bytes::from)
    }

    fn join(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        join_leave_push(channel, info, true)
            .try_to_json()
            .ok()
            .map(Bytes::from)
    }

    fn leave(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        join_leave_push(channel, info, false)
            .try_to_json()
            .ok()
            .map(Bytes::from)
    }
}

/// The Centrifugo client protocol's Protobuf pushes (length-delimited replies).
pub struct ProtobufPushes;

/// The encoder of Protobuf Centrifugo connections.
pub static PROTOBUF_PUSHES: ProtobufPushes = ProtobufPushes;

impl PushEncoder for ProtobufPushes {
    fn publication(&self, channel: &str, publication: &Publication) -> Option<Bytes> {
        Some(tidings_protocol::proto::publication_push(
            channel,
            publication,
        ))
    }

    fn join(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        Some(tidings_protocol::proto::reply_frame(&join_leave_push(
            channel, info, true,
        )))
    }

    fn leave(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        Some(tidings_protocol::proto::reply_frame(&join_leave_push(
            channel, info, false,
        )))
    }
}

/// The encoder of a Centrifugo connection in `format`.
pub fn centrifugo_pushes(format: crate::connection::WireFormat) -> &'static dyn PushEncoder {
    match format {
        crate::connection::WireFormat::Json => &JSON_PUSHES,
        crate::connection::WireFormat::Protobuf => &PROTOBUF_PUSHES,
    }
}

/// The encoder of a Centrifugo subscription in `format` that negotiated fossil
/// deltas.
pub fn centrifugo_delta_pushes(format: crate::connection::WireFormat) -> &'static dyn PushEncoder {
    match format {
        crate::connection::WireFormat::Json => &JSON_DELTA_PUSHES,
        crate::connection::WireFormat::Protobuf => &PROTOBUF_DELTA_PUSHES,
    }
}

/// The JSON pushes of a subscription with fossil deltas. Its publications carry
/// `data` as a JSON *string*, full or delta alike, because that is what the SDKs
/// apply a delta to and parse (centrifuge-js: `JSON.parse` of the string).
pub struct JsonDeltaPushes;

/// The encoder of JSON subscriptions with fossil deltas.
pub static JSON_DELTA_PUSHES: JsonDeltaPushes = JsonDeltaPushes;

/// `publication` with its data as a JSON string holding `text`.
fn with_string_data(publication: &Publication, text: &str, delta: bool) -> Publication {
    Publication {
        data: Some(Payload::from_value(text)),
        delta,
        ..publication.clone()
    }
}

/// The full data of a publication for a JSON delta subscriber: the payload's text
/// as a JSON string. `None` when the payload is not JSON text (the connection is
/// closed with 3506, as for any JSON connection).
pub fn json_delta_full(publication: &Publication) -> Option<Publication> {
    match &publication.data {
        None => Some(publication.clone()),
        Some(data) if data.is_json() => {
            let text = std::str::from_utf8(data.as_bytes()).ok()?;
            Some(with_string_data(publication, text, false))
        }
        Some(_) => None,
    }
}

impl PushEncoder for JsonDeltaPushes {
    fn publication(&self, channel: &str, publication: &Publication) -> Option<Bytes> {
        JSON_PUSHES.publication(channel, &json_delta_full(publication)?)
    }

    fn publication_delta(
        &self,
        channel: &str,
        publication: &Publication,
        patch: &Bytes,
    ) -> Option<Bytes> {
        // A patch may split a multi-byte character; such a patch cannot travel as
        // a JSON string, and the full publication goes instead.
        let text = std::str::from_utf8(patch).ok()?;
        JSON_PUSHES.publication(channel, &with_string_data(publication, text, true))
    }

    fn join(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        JSON_PUSHES.join(channel, info)
    }

    fn leave(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        JSON_PUSHES.leave(channel, info)
    }
}

/// The Protobuf pushes of a subscription with fossil deltas: `data` is the bytes,
/// full or delta.
pub struct ProtobufDeltaPushes;

/// The encoder of Protobuf subscriptions with fossil deltas.
pub static PROTOBUF_DELTA_PUSHES: ProtobufDeltaPushes = ProtobufDeltaPushes;

impl PushEncoder for ProtobufDeltaPushes {
    fn publication(&self, channel: &str, publication: &Publication) -> Option<Bytes> {
        PROTOBUF_PUSHES.publication(channel, publication)
    }

    fn publication_delta(
        &self,
        channel: &str,
        publication: &Publication,
        patch: &Bytes,
    ) -> Option<Bytes> {
        let with_patch = Publication {
            data: Some(Payload::from_bytes(patch.clone())),
            delta: true,
            ..publication.clone()
        };
        PROTOBUF_PUSHES.publication(channel, &with_patch)
    }

    fn join(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        PROTOBUF_PUSHES.join(channel, info)
    }

    fn leave(&self, channel: &str, info: &ClientInfo) -> Option<Bytes> {
        PROTOBUF_PUSHES.leave(channel, info)
    }
}

/// The fossil delta that turns `prev` into `next`, when it is shorter than `next`.
pub fn fossil_patch(prev: &[u8], next: &[u8]) -> Option<Bytes> {
    // The crate's argument order is (target, source).
    let patch = fossil_delta::delta(next, prev);
    (patch.len() < next.len()).then(|| Bytes::from(patch))
}

/// What one fan-out hands out: encoded lazily, once per encoder. A channel's
/// subscribers nearly always share one encoder, so [`Encodings::deliver`] keeps
/// the encoding of the previous subscriber at hand and compares one encoder key
/// ([`PushEncoder::kind`]) per subscriber; other encoders' encodings (a channel
/// with JSON, Protobuf and Socket.IO subscribers) wait in a short list.
struct Encodings<'a> {
    encode: &'a dyn Fn(&dyn PushEncoder) -> Option<Bytes>,
    channel: &'a str,
    /// Subscribers that lost their place on this push.
    lost: usize,
    done: Vec<(TypeId, Option<Bytes>)>,
    /// The encoder of the previous subscriber (none yet) and its encoding.
    last_key: Option<TypeId>,
    last: Option<Bytes>,
    /// Set when the push is a publication: what tags filters and deltas need.
    publication: Option<PublicationFanout<'a>>,
}

/// A publication on its way out, for the subscribers with a tags filter or deltas.
struct PublicationFanout<'a> {
    channel: &'a str,
    publication: &'a Publication,
    /// Where it sits in the channel's delta chain; `None` while the channel has no
    /// delta subscriber here.
    link: Option<Link>,
    /// The fossil patch against the previous publication, worked out at most once,
    /// when the first subscriber that can take it comes: `Some(None)` when there is
    /// none (not marked for delta, no previous data, or not shorter).
    patch: Option<Option<Bytes>>,
    /// The delta encodings made so far, per encoder.
    deltas: Vec<(TypeId, Option<Bytes>)>,
}

impl<'a> Encodings<'a> {
    fn new(encode: &'a dyn Fn(&dyn PushEncoder) -> Option<Bytes>, channel: &'a str) -> Self {
        Self {
            encode,
            channel,
            lost: 0,
            done: Vec::new(),
            last_key: None,
            last: None,
            publication: None,
        }
    }

    fn for_publication(
        encode: &'a dyn Fn(&dyn PushEncoder) -> Option<Bytes>,
        channel: &'a str,
        publication: &'a Publication,
        link: Option<Link>,
    ) -> Self {
        Self {
            publication: Some(PublicationFanout {
                channel,
                publication,
                link,
                patch: None,
                deltas: Vec::new(),
            }),
            ..Self::new(encode, channel)
        }
    }

    /// Delivers the push to `sub` in its encoder's encoding.
    #[inline]
    fn deliver(&mut self, sub: &Subscriber, offset: u64) {
        if sub.shaped {
            return self.deliver_shaped(sub, offset);
        }
        if self.last_key != Some(sub.encoder_key) {
            self.switch(sub);
        }
        match &self.last {
            Some(bytes) => self.lost += usize::from(sub.deliver(self.channel, offset, bytes)),
            None => sub.cannot_carry(),
        }
    }

    /// A subscriber with a tags filter or deltas.
    #[cold]
    fn deliver_shaped(&mut self, sub: &Subscriber, offset: u64) {
        let Some(fanout) = &self.publication else {
            // Join and leave: neither filtered nor delta-encoded.
            if self.last_key != Some(sub.encoder_key) {
                self.switch(sub);
            }
            return match &self.last {
                Some(bytes) => self.lost += usize::from(sub.deliver(self.channel, offset, bytes)),
                None => sub.cannot_carry(),
            };
        };
        if let Some(filter) = &sub.tags_filter {
            if !tidings_protocol::filter::matches(filter, fanout.publication.tags.as_ref()) {
                // The client will not have this publication: a delta after it
                // could not be applied.
                sub.delta_base.store(0, Ordering::Release);
                self.lost += usize::from(sub.pass_over(fanout.channel, offset));
                return;
            }
        }
        let link = fanout.link.clone().filter(|_| sub.delta);
        if self.last_key != Some(sub.encoder_key) {
            self.switch(sub);
        }
        let Some(full) = self.last.clone() else {
            return sub.cannot_carry();
        };
        let Some(link) = link else {
            self.lost += usize::from(sub.deliver(self.channel, offset, &full));
            return;
        };
        let channel = self.channel;
        let lost = sub.deliver_chained(channel, offset, &link, &full, || self.delta_for(sub));
        self.lost += usize::from(lost);
    }

    /// The delta encoding of the publication for `sub`'s encoder, made once.
    fn delta_for(&mut self, sub: &Subscriber) -> Option<Bytes> {
        let fanout = self.publication.as_mut()?;
        let patch = fanout
            .patch
            .get_or_insert_with(|| {
                let link = fanout.link.as_ref()?;
                let prev = link.prev.as_ref()?;
                let next = fanout.publication.data.as_ref()?;
                fossil_patch(prev.as_bytes(), next.as_bytes())
            })
            .clone()?;
        let key = sub.encoder_key;
        if let Some((_, bytes)) = fanout.deltas.iter().find(|(k, _)| *k == key) {
            return bytes.clone();
        }
        let bytes = sub
            .encoder
            .publication_delta(fanout.channel, fanout.publication, &patch);
        fanout.deltas.push((key, bytes.clone()));
        bytes
    }

    #[cold]
    fn switch(&mut self, sub: &Subscriber) {
        let key = sub.encoder_key;
        let bytes = match self.done.iter().find(|(k, _)| *k == key) {
            Some((_, bytes)) => bytes.clone(),
            None => {
                let bytes = (self.encode)(sub.encoder);
                self.done.push((key, bytes.clone()));
                bytes
            }
        };
        self.last_key = Some(key);
        self.last = bytes;
    }
}

/// A connection's membership in one channel.
pub struct Subscriber {
    pub conn: Arc<Connection>,
    /// Whether this subscriber gets join/leave pushes.
    pub join_leave: bool,
    /// How its pushes are encoded.
    encoder: &'static dyn PushEncoder,
    /// [`PushEncoder::kind`] of `encoder`, compared once per delivery.
    encoder_key: TypeId,
    /// Fast path: once live, deliveries go straight to the outbox without the lock.
    live: AtomicBool,
    /// Set when this subscription lost its place in the stream; nothing more is
    /// delivered to it, and its session turns it into an unsubscribe push 2500.
    insufficient: AtomicBool,
    /// The offset this subscriber must be sent next on a channel with history:
    /// one past its subscribe reply's position, then one past each publication
    /// sent. A publication below it is in the reply (it was still on its way to
    /// this node when the stream was read) or was sent already, and is skipped;
    /// one above it means publications never reached this subscriber, which
    /// then loses its place. 0 for a subscriber without a position (it did not
    /// ask for one, or it is not live yet).
    next: AtomicU64,
    /// While the subscribe is in progress, deliveries wait here with their offsets, so
    /// they can be ordered after the subscribe reply and de-duplicated against the
    /// publications the reply carries. `None` once live.
    pending: Mutex<Option<Pending>>,
    /// Only publications whose tags match are delivered.
    tags_filter: Option<Arc<FilterNode>>,
    /// The subscription negotiated fossil deltas.
    delta: bool,
    /// `tags_filter` or `delta`: the fan-out takes the slower path for it.
    shaped: bool,
    /// The channel's delta chain number ([`Link::seq`]) of the last publication
    /// this subscriber was sent live; 0 when it has none to apply a delta to
    /// (just subscribed, or it skipped one).
    delta_base: AtomicU64,
}

/// What a subscriber receives beyond its encoder's pushes.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Deliver only the publications whose tags match.
    pub tags_filter: Option<Arc<FilterNode>>,
    /// Send fossil deltas where the publisher marked a publication for them.
    pub delta: bool,
}

/// A publication's place in its channel's delta chain on this node.
#[derive(Debug, Clone)]
struct Link {
    /// Numbers the channel's publications on this node, from 1.
    seq: u64,
    /// `seq` of the previous publication; 0 for none.
    prev_seq: u64,
    /// The previous publication's data.
    prev: Option<Payload>,
    /// The publisher marked this publication for delta delivery.
    marked: bool,
}

/// The publications a channel's delta subscribers may receive deltas against.
#[derive(Default)]
struct DeltaChain {
    seq: u64,
    prev: Option<(u64, Option<Payload>)>,
}

impl DeltaChain {
    /// Appends a publication and returns its link.
    fn advance(&mut self, publication: &Publication, marked: bool) -> Link {
        self.seq += 1;
        let seq = self.seq;
        let (prev_seq, prev) = self
            .prev
            .replace((seq, publication.data.clone()))
            .unwrap_or((0, None));
        Link {
            seq,
            prev_seq,
            prev,
            marked,
        }
    }
}

#[derive(Default)]
struct Pending {
    /// Offsets with what to send; `None` for a publication this subscriber
    /// does not get (its tags filter), which still moves its place on.
    items: Vec<(u64, Option<Bytes>)>,
    bytes: usize,
}

impl Subscriber {
    /// A subscriber that buffers until [`Subscriber::go_live`].
    pub fn new(
        conn: Arc<Connection>,
        join_leave: bool,
        encoder: &'static dyn PushEncoder,
    ) -> Arc<Self> {
        Self::shaped(conn, join_leave, encoder, Shape::default())
    }

    /// A subscriber with a tags filter or deltas (see [`Shape`]).
    pub fn shaped(
        conn: Arc<Connection>,
        join_leave: bool,
        encoder: &'static dyn PushEncoder,
        shape: Shape,
    ) -> Arc<Self> {
        Arc::new(Self {
            conn,
            join_leave,
            encoder,
            encoder_key: encoder.kind(),
            live: AtomicBool::new(false),
            insufficient: AtomicBool::new(false),
            next: AtomicU64::new(0),
            pending: Mutex::new(Some(Pending::default())),
            shaped: shape.tags_filter.is_some() || shape.delta,
            tags_filter: shape.tags_filter,
            delta: shape.delta,
            delta_base: AtomicU64::new(0),
        })
    }

    /// How this subscriber's pushes are encoded.
    pub fn encoder(&self) -> &'static dyn PushEncoder {
        self.encoder
    }

    /// Whether this subscription lost its place in the stream (see the module docs).
    pub fn is_insufficient(&self) -> bool {
        self.insufficient.load(Ordering::Acquire)
    }

    /// Stops deliveries and asks the session to unsubscribe the client with 2500 so
    /// it resubscribes with recovery. A session too busy to take the request is
    /// closed with 3010 instead, after which the client reconnects and recovers.
    fn lose_place(&self, channel: &str) {
        if self.insufficient.swap(true, Ordering::AcqRel) {
            return;
        }
        let ask = Control::Insufficient {
            channel: channel.to_string(),
        };
        if self.conn.control.try_send(ask).is_err() {
            self.conn
                .outbox
                .close_dropping_queued(Disconnect::insufficient_state());
        }
    }

    /// This connection's encoding cannot carry a push (see [`PushEncoder`]): it
    /// is closed with 3506.
    fn cannot_carry(&self) {
        if self.insufficient.load(Ordering::Acquire) {
            return;
        }
        self.conn
            .outbox
            .close_dropping_queued(Disconnect::inappropriate_protocol());
    }

    /// Sends (or holds) a push; `true` when it made the subscriber lose its
    /// place instead (see [`Subscriber::next`]).
    fn deliver(&self, channel: &str, offset: u64, bytes: &Bytes) -> bool {
        if self.insufficient.load(Ordering::Acquire) {
            return false;
        }
        if !self.live.load(Ordering::Acquire) && self.hold(offset, Some(bytes)) {
            return false;
        }
        match self.in_sequence(channel, offset) {
            Seq::Next => {
                self.conn.send(bytes.clone());
                false
            }
            Seq::Had => false,
            Seq::Lost => true,
        }
    }

    /// Whether a live publication at `offset` is the one this subscriber needs
    /// next (see [`Subscriber::next`]), moving past it if so. Deliveries of one
    /// channel's publications are serialised by the channel's position lock, and
    /// [`Subscriber::go_live`] sets `next` before deliveries bypass the pending
    /// buffer, so a load and a store suffice.
    #[inline]
    fn in_sequence(&self, channel: &str, offset: u64) -> Seq {
        let next = self.next.load(Ordering::Acquire);
        if offset == 0 || next == 0 {
            return Seq::Next;
        }
        if offset < next {
            return Seq::Had;
        }
        if offset > next {
            self.skipped(channel, next, offset);
            return Seq::Lost;
        }
        self.next.store(offset + 1, Ordering::Release);
        Seq::Next
    }

    /// Publications from `expected` up to `got` never reached this subscriber:
    /// it loses its place and recovers them from the history.
    #[cold]
    fn skipped(&self, channel: &str, expected: u64, got: u64) {
        tracing::warn!(
            channel,
            expected,
            got,
            "a subscriber's publications never reached this node: it recovers"
        );
        self.lose_place(channel);
    }

    /// Holds a delivery (`None`: a publication passed over) while the subscribe
    /// reply has not gone out: `false` when the subscriber went live meanwhile
    /// and the caller goes on.
    fn hold(&self, offset: u64, bytes: Option<&Bytes>) -> bool {
        let mut pending = self.pending.lock();
        let Some(p) = pending.as_mut() else {
            return false;
        };
        // A passed-over publication costs its slot, so a flood of them is
        // bounded like one of deliveries.
        p.bytes += bytes.map_or(std::mem::size_of::<(u64, Option<Bytes>)>(), Bytes::len);
        if p.bytes > self.conn.outbox_limit() {
            // Buffered more than the client may have queued: same rule as a
            // full outbox.
            p.items.clear();
            self.conn.outbox.close_dropping_queued(Disconnect::slow());
        } else {
            p.items.push((offset, bytes.cloned()));
        }
        true
    }

    /// A publication this subscriber does not get (its tags filter): its place
    /// in the stream moves past it all the same. `true` as for
    /// [`Subscriber::deliver`].
    fn pass_over(&self, channel: &str, offset: u64) -> bool {
        if offset == 0 || self.insufficient.load(Ordering::Acquire) {
            return false;
        }
        if !self.live.load(Ordering::Acquire) && self.hold(offset, None) {
            return false;
        }
        self.in_sequence(channel, offset) == Seq::Lost
    }

    /// Delivers a publication to a delta subscriber: the delta when the subscriber
    /// is live and was sent the publication the delta is against, the full
    /// publication otherwise. Deliveries that wait for the subscribe reply are
    /// full (some of them may be dropped as covered by the reply, and a delta
    /// after a dropped one could not be applied), so the first publication after
    /// a subscribe is full.
    fn deliver_chained(
        &self,
        channel: &str,
        offset: u64,
        link: &Link,
        full: &Bytes,
        delta: impl FnOnce() -> Option<Bytes>,
    ) -> bool {
        if self.insufficient.load(Ordering::Acquire) {
            return false;
        }
        if !self.live.load(Ordering::Acquire) && self.hold(offset, Some(full)) {
            return false;
        }
        match self.in_sequence(channel, offset) {
            Seq::Next => {}
            Seq::Had => return false,
            Seq::Lost => return true,
        }
        let base = self.delta_base.swap(link.seq, Ordering::AcqRel);
        if link.marked && base != 0 && base == link.prev_seq {
            if let Some(bytes) = delta() {
                self.conn.send(bytes);
                return false;
            }
        }
        self.conn.send(full.clone());
        false
    }

    /// Sends `first` (the subscribe reply), then what was buffered after
    /// `position` (the offset the reply covered; `None` when the subscriber has
    /// no position, and everything buffered is sent), and switches to direct
    /// delivery. Doing all of it under the lock keeps the order. A buffered
    /// publication that is not the next offset after the reply's (the node
    /// missed some before it) makes the subscriber lose its place instead, and
    /// `true` is returned.
    pub fn go_live(&self, channel: &str, first: Option<Bytes>, position: Option<u64>) -> bool {
        let mut pending = self.pending.lock();
        let mut next = position.map_or(0, |offset| offset + 1);
        if let Some(bytes) = first {
            self.conn.send(bytes);
        }
        let place_lost = self.insufficient.load(Ordering::Acquire);
        let mut lost = false;
        if let Some(p) = pending.take().filter(|_| !place_lost) {
            for (offset, bytes) in p.items {
                let send = if offset == 0 || next == 0 {
                    true
                } else if offset == next {
                    next += 1;
                    true
                } else if offset > next {
                    self.skipped(channel, next, offset);
                    lost = true;
                    break;
                } else {
                    false
                };
                if let (true, Some(bytes)) = (send, bytes) {
                    self.conn.send(bytes);
                }
            }
        }
        self.next.store(next, Ordering::Release);
        self.live.store(true, Ordering::Release);
        lost
    }
}

/// Where a live publication falls in a subscriber's sequence.
#[derive(Debug, PartialEq, Eq)]
enum Seq {
    /// The one it needs next (or it keeps no sequence): send.
    Next,
    /// It has it (its reply carried it, or it was sent): skip.
    Had,
    /// Some before it never reached the subscriber, which lost its place.
    Lost,
}

impl Connection {
    pub(crate) fn outbox_limit(&self) -> usize {
        self.outbox.max_bytes()
    }
}

/// The last position the hub delivered on a channel with history. An empty epoch
/// means "not known yet" (a broker that delivers without epochs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Delivered {
    epoch: String,
    offset: u64,
    /// `false` after the broker reconnected, until a position check or a
    /// publication with its epoch confirms the position: publications that came in
    /// while the connection was down may be missing, and without an epoch the next
    /// offset cannot be told from the first ones of a new epoch.
    trusted: bool,
    /// The position was read from the stream by a subscribe, not delivered: the
    /// publications up to it may still be on their way here, and go out when they
    /// come (each subscriber skips what its reply covered).
    noted: bool,
}

/// One channel on this node.
#[derive(Default)]
struct Channel {
    subs: HashMap<u64, Arc<Subscriber>>,
    /// `None` until the first publication with an offset, or the first subscribe
    /// that read the stream's position. A plain mutex, held while one publication
    /// is checked and handed out, so order and de-duplication go together.
    last: Mutex<Option<Delivered>>,
    /// Subscribers here that negotiated deltas; the chain is kept only while
    /// there are some.
    delta_subs: usize,
    /// Held while a publication is handed out to a channel with delta
    /// subscribers, so each one's base moves in publication order (after `last`
    /// when both are taken).
    chain: Mutex<DeltaChain>,
}

/// How a publication with an offset follows the channel's last position.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The next offset (or the first the hub sees): delivered, and the new last.
    Next,
    /// At or below a position a subscribe noted: delivered, the last stays.
    BeforeNoted,
    /// Publications before it never arrived, or the epoch changed.
    Gap,
}

/// What [`Hub::publish`] did with a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to this many subscribers.
    Delivered(usize),
    /// At or below the last delivered offset: dropped.
    Duplicate,
    /// Publications before it never arrived (or the epoch changed): the channel's
    /// subscribers were told to recover, this many of them.
    Gap(usize),
}

type Shard = RwLock<HashMap<String, Channel>>;

/// Channel → subscribers on this node.
pub struct Hub {
    shards: Box<[Shard]>,
    /// See [`Hub::take_lost_places`].
    lost_places: AtomicU64,
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
            lost_places: AtomicU64::new(0),
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        let h = self.hasher.hash_one(channel) as usize;
        &self.shards[h % SHARDS]
    }

    /// Adds a subscriber; `true` when it is the channel's first on this node.
    pub fn add(&self, channel: &str, sub: Arc<Subscriber>) -> bool {
        let mut shard = self.shard(channel).write();
        let entry = shard.entry(channel.to_string()).or_default();
        let first = entry.subs.is_empty();
        if sub.delta {
            entry.delta_subs += 1;
        }
        if let Some(old) = entry.subs.insert(sub.conn.serial, sub) {
            if old.delta {
                entry.delta_subs -= 1;
            }
        }
        first
    }

    /// Removes a connection from a channel; `true` when the channel is now empty here.
    pub fn remove(&self, channel: &str, serial: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(entry) = shard.get_mut(channel) else {
            return false;
        };
        let Some(removed) = entry.subs.remove(&serial) else {
            return false;
        };
        if removed.delta {
            entry.delta_subs -= 1;
            if entry.delta_subs == 0 {
                *entry.chain.lock() = DeltaChain::default();
            }
        }
        if entry.subs.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    /// Delivers a publication to every subscriber, encoded once per encoder in
    /// use, unless it is a duplicate or follows a gap (see the module docs). `epoch`
    /// is `None` when the broker does not say; offset 0 means a channel without
    /// history (always delivered).
    pub fn publish(
        &self,
        channel: &str,
        epoch: Option<&str>,
        publication: &Publication,
    ) -> Delivery {
        let offset = publication.offset;
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return Delivery::Delivered(0);
        };
        // The publisher's delta mark steers delivery; no subscriber sees it.
        let marked = publication.delta;
        let unmarked;
        let publication = if marked {
            unmarked = Publication {
                delta: false,
                ..publication.clone()
            };
            &unmarked
        } else {
            publication
        };
        let encode = |encoder: &dyn PushEncoder| encoder.publication(channel, publication);
        if offset == 0 {
            let mut chain = (entry.delta_subs > 0).then(|| entry.chain.lock());
            let link = chain.as_mut().map(|c| c.advance(publication, marked));
            let mut encodings = Encodings::for_publication(&encode, channel, publication, link);
            for sub in entry.subs.values() {
                encodings.deliver(sub, offset);
            }
            return Delivery::Delivered(entry.subs.len());
        }
        let mut last = entry.last.lock();
        let epoch = epoch.unwrap_or("");
        let step = match last.as_ref() {
            None => Step::Next,
            Some(prev) => {
                let both_known = !epoch.is_empty() && !prev.epoch.is_empty();
                if both_known && epoch != prev.epoch {
                    Step::Gap
                } else if !prev.trusted && !both_known {
                    // After a reconnect, without an epoch to compare: recover.
                    Step::Gap
                } else if offset <= prev.offset {
                    match (both_known, prev.noted) {
                        // Published before a subscribe read the stream, and on its
                        // way here since: not a duplicate for subscribers that read
                        // the stream earlier (the others skip it).
                        (true, true) => Step::BeforeNoted,
                        (true, false) => return Delivery::Duplicate,
                        // Without both epochs this may be the start of a new epoch
                        // (the broker lost its history) rather than a repeat:
                        // recovering is the safe answer, and costs little where it
                        // was a repeat.
                        (false, _) => Step::Gap,
                    }
                } else if offset == prev.offset + 1 {
                    Step::Next
                } else {
                    Step::Gap
                }
            }
        };
        if let (Step::BeforeNoted, Some(prev)) = (&step, last.as_mut()) {
            prev.noted = offset < prev.offset;
        } else {
            let epoch_now = match last.as_ref() {
                // Contiguous: the epoch stays what it was, unless this one says.
                Some(prev) if step == Step::Next && epoch.is_empty() => prev.epoch.clone(),
                // After a gap the old epoch may be wrong: only what the broker says.
                _ => epoch.to_string(),
            };
            *last = Some(Delivered {
                epoch: epoch_now,
                offset,
                trusted: true,
                noted: false,
            });
        }
        if step == Step::Gap {
            // Every subscriber resubscribes; no delta may span the gap.
            *entry.chain.lock() = DeltaChain::default();
            for sub in entry.subs.values() {
                sub.lose_place(channel);
            }
            return Delivery::Gap(entry.subs.len());
        }
        let mut chain = (entry.delta_subs > 0).then(|| entry.chain.lock());
        let link = chain.as_mut().map(|c| c.advance(publication, marked));
        let mut encodings = Encodings::for_publication(&encode, channel, publication, link);
        for sub in entry.subs.values() {
            encodings.deliver(sub, offset);
        }
        if encodings.lost > 0 {
            self.lost_places
                .fetch_add(encodings.lost as u64, Ordering::Relaxed);
        }
        Delivery::Delivered(entry.subs.len())
    }

    /// How many subscribers lost their place on their own (a jump in their
    /// sequence) since the last call; for the metrics.
    pub fn take_lost_places(&self) -> u64 {
        if self.lost_places.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.lost_places.swap(0, Ordering::Relaxed)
    }

    /// Records the stream position `sub`'s subscribe read, when the hub knows none
    /// yet for the channel, so that a gap right after the first subscribe is
    /// noticed too. When the hub is delivering another epoch than the one `sub`
    /// read, `sub` loses its place: the offsets it would check belong to a
    /// stream it never saw; `true` then.
    pub fn note_position(
        &self,
        channel: &str,
        position: &StreamPosition,
        sub: &Subscriber,
    ) -> bool {
        if position.epoch.is_empty() {
            return false;
        }
        let shard = self.shard(channel).read();
        if let Some(entry) = shard.get(channel) {
            let mut last = entry.last.lock();
            match last.as_mut() {
                None => {
                    *last = Some(Delivered {
                        epoch: position.epoch.clone(),
                        offset: position.offset,
                        trusted: true,
                        noted: true,
                    });
                }
                Some(prev) if prev.epoch.is_empty() => prev.epoch = position.epoch.clone(),
                Some(prev) if prev.epoch != position.epoch => {
                    drop(last);
                    sub.lose_place(channel);
                    return true;
                }
                Some(_) => {}
            }
        }
        false
    }

    /// The last position delivered on each channel that has one.
    pub fn positions(&self) -> Vec<(String, StreamPosition)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (name, entry) in shard.read().iter() {
                if let Some(d) = entry.last.lock().as_ref() {
                    out.push((
                        name.clone(),
                        StreamPosition {
                            offset: d.offset,
                            epoch: d.epoch.clone(),
                        },
                    ));
                }
            }
        }
        out
    }

    /// The last position delivered on a channel, if any.
    pub fn position(&self, channel: &str) -> Option<StreamPosition> {
        let shard = self.shard(channel).read();
        let entry = shard.get(channel)?;
        let last = entry.last.lock();
        last.as_ref().map(|d| StreamPosition {
            offset: d.offset,
            epoch: d.epoch.clone(),
        })
    }

    /// The broker's stream is at `top` and this node did not deliver up to it: every
    /// subscriber of the channel is told to recover, and `top` becomes the last
    /// delivered position. Returns how many subscribers were told.
    pub fn lost_place(&self, channel: &str, top: &StreamPosition) -> usize {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return 0;
        };
        let mut last = entry.last.lock();
        for sub in entry.subs.values() {
            sub.lose_place(channel);
        }
        *last = Some(Delivered {
            epoch: top.epoch.clone(),
            offset: top.offset,
            trusted: true,
            noted: false,
        });
        entry.subs.len()
    }

    /// The broker connection came back: until confirmed, no channel's last position
    /// is trusted (see [`Delivered::trusted`]).
    pub fn distrust_all(&self) {
        for shard in self.shards.iter() {
            for entry in shard.read().values() {
                if let Some(d) = entry.last.lock().as_mut() {
                    d.trusted = false;
                }
            }
        }
    }

    /// The broker's stream is at `top` and the channel's last delivered position
    /// is the same: trusted again.
    pub fn confirm(&self, channel: &str, top: &StreamPosition) {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        let mut last = entry.last.lock();
        if let Some(d) = last.as_mut() {
            let same_epoch = d.epoch.is_empty() || d.epoch == top.epoch;
            if same_epoch && d.offset == top.offset {
                d.epoch = top.epoch.clone();
                d.trusted = true;
            }
        }
    }

    /// Delivers a join (`joined`) or leave push to the subscribers that want them,
    /// encoded once per encoder in use.
    pub fn join_leave(&self, channel: &str, info: &ClientInfo, joined: bool) -> usize {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return 0;
        };
        let encode = |encoder: &dyn PushEncoder| {
            if joined {
                encoder.join(channel, info)
            } else {
                encoder.leave(channel, info)
            }
        };
        let mut encodings = Encodings::new(&encode, channel);
        let mut n = 0;
        for sub in entry.subs.values() {
            if sub.join_leave {
                encodings.deliver(sub, 0);
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
            .map_or(0, |entry| entry.subs.len())
    }

    /// Every channel with subscribers here, with its subscriber count.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (name, entry) in shard.read().iter() {
                out.push((name.clone(), entry.subs.len()));
            }
        }
        out
    }

    /// Number of channels with subscribers here.
    pub fn num_channels(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Drained;

    /// Sends a publication's data as it is, so a test reads back what it published.
    struct Raw;

    impl PushEncoder for Raw {
        fn publication(&self, _: &str, publication: &Publication) -> Option<Bytes> {
            Some(Bytes::copy_from_slice(
                publication.data.as_ref().map_or(&b""[..], |d| d.as_bytes()),
            ))
        }
        fn join(&self, _: &str, _: &ClientInfo) -> Option<Bytes> {
            Some(Bytes::new())
        }
        fn leave(&self, _: &str, _: &ClientInfo) -> Option<Bytes> {
            Some(Bytes::new())
        }
    }

    static RAW: Raw = Raw;

    fn subscriber() -> (Arc<Subscriber>, crate::connection::ControlReceiver) {
        let (conn, control) = Connection::new("test", 1 << 20);
        (Subscriber::new(conn, false, &RAW), control)
    }

    /// A publication at `offset` whose data is the offset.
    fn p(offset: u64) -> Publication {
        Publication {
            data: Some(tidings_protocol::RawJson::parse(offset.to_string()).unwrap()),
            offset,
            ..Default::default()
        }
    }

    async fn sent(sub: &Subscriber) -> Vec<Bytes> {
        if sub.conn.outbox.queued_bytes() == 0 {
            return Vec::new();
        }
        match sub.conn.outbox.drain().await {
            Drained::Batch(items) | Drained::Close(items, _) => items,
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn json_and_protobuf_subscribers_of_one_channel_each_get_their_encoding() {
        let hub = Hub::new();
        let (conn, _c1) = Connection::new("json", 1 << 20);
        let json = Subscriber::new(conn, false, &JSON_PUSHES);
        let (conn, _c2) = Connection::new("protobuf", 1 << 20);
        let protobuf = Subscriber::new(conn, false, &PROTOBUF_PUSHES);
        for sub in [&json, &protobuf] {
            hub.add("c", sub.clone());
            sub.go_live("c", None, None);
        }
        let publication = p(1);
        assert_eq!(
            hub.publish("c", Some("e"), &publication),
            Delivery::Delivered(2)
        );
        let want_json = JSON_PUSHES.publication("c", &publication).unwrap();
        let want_protobuf = PROTOBUF_PUSHES.publication("c", &publication).unwrap();
        assert_ne!(want_json, want_protobuf);
        assert_eq!(sent(&json).await, vec![want_json]);
        assert_eq!(sent(&protobuf).await, vec![want_protobuf]);
    }

    #[tokio::test]
    async fn duplicates_are_dropped_and_contiguous_offsets_delivered() {
        let hub = Hub::new();
        let (sub, _control) = subscriber();
        hub.add("c", sub.clone());
        sub.go_live("c", None, None);
        assert_eq!(hub.publish("c", Some("e"), &p(1)), Delivery::Delivered(1));
        assert_eq!(hub.publish("c", Some("e"), &p(2)), Delivery::Delivered(1));
        assert_eq!(hub.publish("c", Some("e"), &p(2)), Delivery::Duplicate);
        assert_eq!(hub.publish("c", Some("e"), &p(1)), Delivery::Duplicate);
        assert_eq!(sent(&sub).await, vec![b("1"), b("2")]);
    }

    #[tokio::test]
    async fn without_an_epoch_a_step_back_is_a_possible_new_epoch() {
        let hub = Hub::new();
        let (sub, mut control) = subscriber();
        hub.add("c", sub.clone());
        sub.go_live("c", None, None);
        assert_eq!(hub.publish("c", None, &p(5)), Delivery::Delivered(1));
        assert_eq!(hub.publish("c", None, &p(6)), Delivery::Delivered(1));
        // Offsets start over: a FLUSHALL, say. Not a duplicate to drop quietly.
        assert_eq!(hub.publish("c", None, &p(1)), Delivery::Gap(1));
        assert!(control.try_recv().is_some());
        assert_eq!(hub.position("c").map(|p| p.epoch), Some(String::new()));
        // The next subscriber's position names the epoch again.
        let (fresh, _c) = subscriber();
        hub.add("c", fresh.clone());
        let pos = StreamPosition {
            offset: 1,
            epoch: "new".into(),
        };
        hub.note_position("c", &pos, &fresh);
        fresh.go_live("c", None, Some(1));
        assert_eq!(hub.publish("c", None, &p(2)), Delivery::Delivered(2));
        assert_eq!(hub.position("c").map(|p| p.epoch), Some("new".to_string()));
        assert_eq!(sent(&sub).await, vec![b("5"), b("6")]);
        assert_eq!(sent(&fresh).await, vec![b("2")]);
    }

    #[tokio::test]
    async fn a_publication_the_subscribe_reply_covered_is_not_delivered_again() {
        let hub = Hub::new();
        let (early, _c1) = subscriber();
        hub.add("c", early.clone());
        early.go_live("c", None, None);
        hub.publish("c", Some("e"), &p(1));
        // A second subscriber read the stream at offset 3 while 2 and 3 were still
        // on their way here; its reply carried them.
        let (late, _c2) = subscriber();
        hub.add("c", late.clone());
        late.go_live("c", Some(b("reply")), Some(3));
        hub.publish("c", Some("e"), &p(2));
        hub.publish("c", Some("e"), &p(3));
        hub.publish("c", Some("e"), &p(4));
        assert_eq!(sent(&late).await, vec![b("reply"), b("4")]);
        assert_eq!(sent(&early).await, vec![b("1"), b("2"), b("3"), b("4")]);
    }

    #[tokio::test]
    async fn a_jump_stops_delivery_and_asks_the_session_to_recover() {
        let hub = Hub::new();
        let (sub, mut control) = subscriber();
        hub.add("c", sub.clone());
        sub.go_live("c", None, None);
        hub.publish("c", Some("e"), &p(1));
        assert_eq!(hub.publish("c", Some("e"), &p(3)), Delivery::Gap(1));
        assert!(sub.is_insufficient());
        assert!(matches!(
            control.try_recv(),
            Some(Control::Insufficient { channel }) if channel == "c"
        ));
        // Nothing after the gap reaches the old subscription.
        hub.publish("c", Some("e"), &p(4));
        assert_eq!(sent(&sub).await, vec![b("1")]);
        // A new subscriber continues from the new position.
        let (fresh, _c) = subscriber();
        hub.add("c", fresh.clone());
        fresh.go_live("c", None, Some(4));
        assert_eq!(hub.publish("c", Some("e"), &p(5)), Delivery::Delivered(2));
        assert_eq!(sent(&fresh).await, vec![b("5")]);
    }

    #[tokio::test]
    async fn a_new_epoch_is_a_gap_even_when_offsets_start_over() {
        let hub = Hub::new();
        let (sub, mut control) = subscriber();
        hub.add("c", sub.clone());
        sub.go_live("c", None, None);
        hub.publish("c", Some("old"), &p(7));
        assert_eq!(hub.publish("c", Some("new"), &p(1)), Delivery::Gap(1));
        assert!(control.try_recv().is_some());
        assert_eq!(sent(&sub).await, vec![b("7")]);
    }

    #[tokio::test]
    async fn a_subscriber_that_lost_its_place_while_pending_gets_only_its_reply() {
        let hub = Hub::new();
        let (sub, _control) = subscriber();
        hub.add("c", sub.clone());
        hub.note_position(
            "c",
            &StreamPosition {
                offset: 2,
                epoch: "e".into(),
            },
            &sub,
        );
        hub.publish("c", Some("e"), &p(3));
        assert_eq!(hub.publish("c", Some("e"), &p(5)), Delivery::Gap(1));
        sub.go_live("c", Some(b("reply")), Some(2));
        assert_eq!(sent(&sub).await, vec![b("reply")]);
    }

    fn at(offset: u64) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: "e".into(),
        }
    }

    /// The chaos run's silent gap: on a channel new to this node, a publication
    /// arrived before any subscribe had noted a position, after one the node
    /// never got. A subscriber that read the stream before that one must not go
    /// on from the later one as if nothing was missing.
    #[tokio::test]
    async fn a_first_publication_past_a_subscribers_position_makes_it_recover() {
        let hub = Hub::new();
        let (sub, mut control) = subscriber();
        hub.add("c", sub.clone());
        // Offset 4 never reached this node; 5 comes before the read is noted.
        assert_eq!(hub.publish("c", Some("e"), &p(5)), Delivery::Delivered(1));
        assert!(!hub.note_position("c", &at(3), &sub));
        assert!(sub.go_live("c", Some(b("reply")), Some(3)));
        assert!(sub.is_insufficient());
        assert!(matches!(
            control.try_recv(),
            Some(Control::Insufficient { channel }) if channel == "c"
        ));
        hub.publish("c", Some("e"), &p(6));
        assert_eq!(sent(&sub).await, vec![b("reply")]);
    }

    /// Two subscribers read the stream at different offsets while the node's
    /// broker subscription was new. The later read is noted first; the
    /// publications between the two reads are still delivered to the subscriber
    /// that read earlier, and skipped by the other.
    #[tokio::test]
    async fn publications_between_two_subscribes_reach_the_earlier_reader() {
        let hub = Hub::new();
        let (early, _c1) = subscriber();
        let (late, _c2) = subscriber();
        hub.add("c", early.clone());
        hub.add("c", late.clone());
        hub.note_position("c", &at(5), &late);
        hub.note_position("c", &at(3), &early);
        late.go_live("c", Some(b("late reply")), Some(5));
        early.go_live("c", Some(b("early reply")), Some(3));
        for offset in 4..=6 {
            assert_eq!(
                hub.publish("c", Some("e"), &p(offset)),
                Delivery::Delivered(2)
            );
        }
        // Now a real duplicate.
        assert_eq!(hub.publish("c", Some("e"), &p(6)), Delivery::Duplicate);
        assert_eq!(
            sent(&early).await,
            vec![b("early reply"), b("4"), b("5"), b("6")]
        );
        assert_eq!(sent(&late).await, vec![b("late reply"), b("6")]);
    }

    /// A live subscriber whose next offset never reached the node loses its
    /// place on its own, even where the channel's position moved past the
    /// missing one without a delivery (a later subscribe's read was noted).
    #[tokio::test]
    async fn a_live_subscriber_that_misses_an_offset_recovers() {
        let hub = Hub::new();
        let (early, mut control) = subscriber();
        let (late, _c2) = subscriber();
        hub.add("c", early.clone());
        hub.add("c", late.clone());
        hub.note_position("c", &at(5), &late);
        hub.note_position("c", &at(3), &early);
        early.go_live("c", None, Some(3));
        late.go_live("c", None, Some(5));
        // 4 and 5 never come here.
        assert_eq!(hub.publish("c", Some("e"), &p(6)), Delivery::Delivered(2));
        assert!(early.is_insufficient());
        assert!(!late.is_insufficient());
        assert_eq!(hub.take_lost_places(), 1);
        assert_eq!(hub.take_lost_places(), 0);
        assert!(control.try_recv().is_some());
        assert_eq!(sent(&early).await, Vec::<Bytes>::new());
        assert_eq!(sent(&late).await, vec![b("6")]);
    }

    /// A subscriber read one epoch; the hub is delivering another (the
    /// history was lost in between): it recovers.
    #[tokio::test]
    async fn a_read_in_another_epoch_than_the_hubs_makes_the_subscriber_recover() {
        let hub = Hub::new();
        let (sub, _control) = subscriber();
        hub.add("c", sub.clone());
        hub.publish("c", Some("new"), &p(1));
        assert!(hub.note_position("c", &at(7), &sub));
        assert!(sub.is_insufficient());
    }

    #[tokio::test]
    async fn after_a_reconnect_epochless_publications_wait_for_confirmation() {
        let hub = Hub::new();
        let (sub, mut control) = subscriber();
        hub.add("c", sub.clone());
        sub.go_live("c", None, None);
        let pos = |offset| StreamPosition {
            offset,
            epoch: "e".into(),
        };
        hub.publish("c", Some("e"), &p(5));
        hub.distrust_all();
        // The epoch says it follows on: delivered.
        assert_eq!(hub.publish("c", Some("e"), &p(6)), Delivery::Delivered(1));
        hub.distrust_all();
        hub.confirm("c", &pos(6));
        // Confirmed by the check: an epoch-less successor is delivered too.
        assert_eq!(hub.publish("c", None, &p(7)), Delivery::Delivered(1));
        hub.distrust_all();
        // Not confirmed: an epoch-less successor may be offset 8 of a new epoch.
        assert_eq!(hub.publish("c", None, &p(8)), Delivery::Gap(1));
        assert!(control.try_recv().is_some());
        assert_eq!(sent(&sub).await, vec![b("5"), b("6"), b("7")]);
    }

    #[tokio::test]
    async fn the_position_check_marks_a_channel_behind_the_broker() {
        let hub = Hub::new();
        let (sub, mut control) = subscriber();
        hub.add("c", sub.clone());
        sub.go_live("c", None, None);
        hub.publish("c", Some("e"), &p(1));
        let top = StreamPosition {
            offset: 4,
            epoch: "e".into(),
        };
        assert_eq!(hub.lost_place("c", &top), 1);
        assert!(control.try_recv().is_some());
        assert_eq!(hub.position("c"), Some(top));
        assert_eq!(hub.publish("c", Some("e"), &p(4)), Delivery::Duplicate);
    }

    /// A JSON object of about 10 KB whose field `n` is `n`.
    fn big(n: u64) -> Publication {
        let filler: String = (0..400).map(|i| format!("\"k{i}\":{i},")).collect();
        let text = format!("{{{filler}\"n\":{n}}}");
        Publication {
            data: Some(tidings_protocol::RawJson::parse(text).unwrap()),
            offset: n,
            delta: true,
            ..Default::default()
        }
    }

    fn decode_pushes(frames: &[Bytes]) -> Vec<Publication> {
        frames
            .iter()
            .flat_map(|f| tidings_protocol::proto::decode_replies(f, Default::default()).unwrap())
            .map(|r| r.push.unwrap().publication.unwrap())
            .collect()
    }

    #[test]
    fn a_fossil_patch_rebuilds_the_next_payload() {
        let (a, b) = (big(1), big(2));
        let (a, b) = (a.data.unwrap(), b.data.unwrap());
        let patch = fossil_patch(a.as_bytes(), b.as_bytes()).expect("a shorter patch");
        assert!(patch.len() * 20 < b.len(), "{} bytes", patch.len());
        let rebuilt = fossil_delta::apply(a.as_bytes(), &patch).unwrap();
        assert_eq!(rebuilt, b.as_bytes().to_vec());
        assert!(fossil_patch(b"short", b"other").is_none());
    }

    #[tokio::test]
    async fn a_delta_subscriber_gets_one_full_publication_then_deltas() {
        let hub = Hub::new();
        let (conn, _control) = Connection::new("test", 1 << 20);
        let sub = Subscriber::shaped(
            conn,
            false,
            &PROTOBUF_DELTA_PUSHES,
            Shape {
                delta: true,
                ..Default::default()
            },
        );
        let (plain, _c) = subscriber();
        hub.add("ch", sub.clone());
        hub.add("ch", plain.clone());
        sub.go_live("c", None, None);
        plain.go_live("c", None, None);
        for n in 1..=3 {
            hub.publish("ch", Some("e"), &big(n));
        }
        let got = decode_pushes(&sent(&sub).await);
        assert_eq!(
            got.iter().map(|p| p.delta).collect::<Vec<_>>(),
            [false, true, true]
        );
        let mut data = got[0].data.clone().unwrap().as_bytes().to_vec();
        for p in &got[1..] {
            data = fossil_delta::apply(&data, p.data.as_ref().unwrap().as_bytes()).unwrap();
        }
        assert_eq!(data, big(3).data.unwrap().as_bytes().to_vec());
        // The plain subscriber gets full data, and no one sees the publisher's mark.
        let full = sent(&plain).await;
        assert_eq!(full.len(), 3);
        assert_eq!(full[2], big(3).data.unwrap().as_bytes().clone());
    }

    /// A subscriber whose tags filter keeps the publications tagged `keep`.
    fn keeping(
        encoder: &'static dyn PushEncoder,
        delta: bool,
    ) -> (Arc<Subscriber>, crate::connection::ControlReceiver) {
        let (conn, control) = Connection::new("test", 1 << 20);
        let filter = FilterNode {
            key: "keep".into(),
            cmp: "ex".into(),
            ..Default::default()
        };
        let shape = Shape {
            delta,
            tags_filter: Some(Arc::new(filter)),
        };
        (Subscriber::shaped(conn, false, encoder, shape), control)
    }

    /// `publication`, tagged `keep` when `keep`.
    fn kept(publication: Publication, keep: bool) -> Publication {
        Publication {
            tags: keep.then(|| [("keep".to_string(), "1".to_string())].into()),
            ..publication
        }
    }

    #[tokio::test]
    async fn unmarked_or_filtered_publications_break_the_delta_chain() {
        let hub = Hub::new();
        let (sub, _control) = keeping(&PROTOBUF_DELTA_PUSHES, true);
        hub.add("ch", sub.clone());
        // Positioned at the empty stream: the filtered-out 4 moves its place on.
        sub.go_live("ch", None, Some(0));
        let tagged = |n: u64, keep: bool, marked: bool| Publication {
            delta: marked,
            ..kept(big(n), keep)
        };
        hub.publish("ch", Some("e"), &tagged(1, true, true));
        hub.publish("ch", Some("e"), &tagged(2, true, false));
        hub.publish("ch", Some("e"), &tagged(3, true, true));
        hub.publish("ch", Some("e"), &tagged(4, false, true));
        hub.publish("ch", Some("e"), &tagged(5, true, true));
        hub.publish("ch", Some("e"), &tagged(6, true, true));
        let got = decode_pushes(&sent(&sub).await);
        let seen: Vec<(u64, bool)> = got.iter().map(|p| (p.offset, p.delta)).collect();
        // 2 is not marked: full. 4 is filtered out: 5 cannot be a delta against it.
        assert_eq!(
            seen,
            [(1, false), (2, false), (3, true), (5, false), (6, true)]
        );
        assert!(!sub.is_insufficient());
    }

    /// Publications a tags filter passes over, before and after the subscribe
    /// reply, still count in the subscriber's sequence: no false recovery.
    #[tokio::test]
    async fn filtered_out_publications_keep_a_subscribers_sequence() {
        let hub = Hub::new();
        let (sub, mut control) = keeping(&RAW, false);
        hub.add("c", sub.clone());
        hub.note_position("c", &at(2), &sub);
        let tagged = |n: u64, keep: bool| kept(p(n), keep);
        hub.publish("c", Some("e"), &tagged(3, false));
        hub.publish("c", Some("e"), &tagged(4, true));
        sub.go_live("c", Some(b("reply")), Some(2));
        hub.publish("c", Some("e"), &tagged(5, false));
        hub.publish("c", Some("e"), &tagged(6, true));
        assert!(!sub.is_insufficient());
        assert!(control.try_recv().is_none());
        assert_eq!(sent(&sub).await, vec![b("reply"), b("4"), b("6")]);
    }

    #[tokio::test]
    async fn a_json_delta_subscriber_gets_data_as_strings() {
        let hub = Hub::new();
        let (conn, _control) = Connection::new("test", 1 << 20);
        let sub = Subscriber::shaped(
            conn,
            false,
            &JSON_DELTA_PUSHES,
            Shape {
                delta: true,
                ..Default::default()
            },
        );
        hub.add("ch", sub.clone());
        sub.go_live("c", None, None);
        hub.publish("ch", Some("e"), &big(1));
        hub.publish("ch", Some("e"), &big(2));
        let frames = sent(&sub).await;
        let pushes: Vec<serde_json::Value> = frames
            .iter()
            .map(|f| serde_json::from_slice(f).unwrap())
            .collect();
        let first = &pushes[0]["push"]["pub"];
        let text = first["data"].as_str().expect("a string");
        assert_eq!(text.as_bytes(), big(1).data.unwrap().as_bytes().as_ref());
        assert!(first.get("delta").is_none());
        let second = &pushes[1]["push"]["pub"];
        assert_eq!(second["delta"], true);
        let patch = second["data"].as_str().unwrap();
        let rebuilt = fossil_delta::apply(text.as_bytes(), patch.as_bytes()).unwrap();
        assert_eq!(rebuilt, big(2).data.unwrap().as_bytes().to_vec());
    }
}
