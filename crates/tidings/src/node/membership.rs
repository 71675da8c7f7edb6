//! A connection's membership in a channel, written once for every front door.
//!
//! Joining a channel is the same work whichever protocol asked for it: the hub
//! learns of the subscriber (and the broker of the node's interest, for the first
//! one), the stream position is read or what the client missed is recovered, the
//! presence entry is written and held (the node's refresh timer keeps every held
//! entry alive past the engine's presence TTL for as long as the connection
//! lives), then, after the front door's reply has gone out, the subscriber goes
//! live and the channel hears the join. Leaving undoes each step. The Centrifugo
//! session and the Socket.IO session both call [`Node::join`], [`Node::go_live`]
//! and [`Node::leave`]; what stays in a front door is what its protocol says:
//! permissions, flags, replies.

use std::sync::Arc;

use bytes::Bytes;
use tidings_protocol::codes::{self, ErrorCode};
use tidings_protocol::{ClientInfo, Publication, RawJson, StreamPosition};

use super::{Node, NodeError};
use crate::broker::{BrokerError, HistoryFilter};
use crate::channel;
use crate::connection::Connection;
use crate::hub::{PushEncoder, Shape, Subscriber};

/// The longest a join waits for the broker subscription another join of the
/// same channel is making on this node.
const SUBSCRIBING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes a first subscriber's entry out of [`NodeInner::subscribing`] when its
/// broker subscription is done, or its join was dropped, unless another first
/// subscriber took the entry over (the channel emptied and filled again).
struct SubscribingEntry<'a> {
    map: &'a super::Subscribing,
    channel: &'a str,
    wait: tokio::sync::watch::Receiver<bool>,
}

impl Drop for SubscribingEntry<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if map
            .get(self.channel)
            .is_some_and(|w| w.same_channel(&self.wait))
        {
            map.remove(self.channel);
        }
    }
}

/// What a joining subscriber wants of the channel's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StreamAsk {
    /// Nothing: a channel without history, or a client that does not track it.
    #[default]
    None,
    /// The current position (epoch and offset).
    Position,
    /// What was published after this position, and the current position.
    Recover(StreamPosition),
}

/// A connection asking to join a channel, after its front door allowed it.
pub struct JoinRequest {
    pub channel: String,
    /// What presence and join/leave messages show of this client in the channel.
    pub info: ClientInfo,
    /// Keep a presence entry for the client.
    pub presence: bool,
    /// Publish join and leave messages for the client.
    pub join_leave: bool,
    /// The client receives the channel's join and leave messages.
    pub push_join_leave: bool,
    pub stream: StreamAsk,
    /// How the client's pushes are encoded.
    pub encoder: &'static dyn PushEncoder,
    /// A tags filter (applied to live and recovered publications alike) and
    /// deltas.
    pub shape: Shape,
    /// A recovery that cannot give everything missed fails the join with 112
    /// instead of answering `recovered: false`.
    pub reject_unrecovered: bool,
}

/// A connection in a channel. Its front door keeps it until the connection
/// leaves, then hands it to [`Node::leave`].
pub struct Member {
    channel: String,
    subscriber: Arc<Subscriber>,
    info: ClientInfo,
    presence: bool,
    join_leave: bool,
}

impl Member {
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// What presence and join/leave messages show of this client.
    pub fn info(&self) -> &ClientInfo {
        &self.info
    }

    /// Replaces the channel-specific info (a refreshed subscription token's
    /// `info`); later leave messages and publications carry it.
    pub fn set_chan_info(&mut self, chan_info: Option<RawJson>) {
        self.info.chan_info = chan_info;
    }

    /// Replaces the connection's info (a refreshed connection token's `info`).
    pub fn set_conn_info(&mut self, conn_info: Option<RawJson>) {
        self.info.conn_info = conn_info;
    }

    /// Whether the hub lost this member's place in the channel's stream (a gap
    /// reached the node): the front door then makes the client recover.
    pub fn lost_place(&self) -> bool {
        self.subscriber.is_insufficient()
    }
}

/// The result of [`Node::join`]: the membership, and what the front door's reply
/// tells the client about the stream.
pub struct Joined {
    pub member: Member,
    /// The stream's position, when one was asked for.
    pub position: Option<StreamPosition>,
    /// What the client missed, oldest first (recovery only).
    pub publications: Vec<Publication>,
    /// Everything since the client's position is in `publications` (in cache
    /// mode: the latest publication is, or the client has it).
    pub recovered: bool,
    /// A recovery was attempted: the client asked, or `auto_cache_recover` did.
    pub recovering: bool,
    /// Publications that arrive before the reply goes out wait here; hand it to
    /// [`Node::go_live`] after the reply.
    pub pending: Pending,
}

/// A subscriber whose deliveries are held until its front door replied.
pub struct Pending {
    subscriber: Arc<Subscriber>,
    /// The offset the reply covers, when the member read the stream: held
    /// publications at or below it are in the reply already, and the next one
    /// must follow it.
    position: Option<u64>,
}

impl Node {
    /// Checks what holds for every join: a valid channel name in a known
    /// namespace, and room under `client.channel_limit` for the connection.
    ///
    /// # Errors
    /// 107/102 for a bad channel, 106 when the connection is in as many channels
    /// as it may be.
    pub fn check_join(&self, conn: &Connection, channel: &str) -> Result<(), ErrorCode> {
        channel::resolve(self.config(), channel)?;
        let limit = self.config().client.channel_limit;
        if limit > 0 && conn.num_channels() >= limit {
            return Err(codes::ERROR_LIMIT_EXCEEDED);
        }
        Ok(())
    }

    /// Adds a connection to a channel: the hub (and the broker's interest), the
    /// stream position or the recovery, the presence entry. Deliveries to the new
    /// member wait until [`Node::go_live`].
    ///
    /// # Errors
    /// [`Node::check_join`]'s; a backend error when the broker or the presence
    /// backend failed, in which case nothing of the join is left behind (as in
    /// Centrifugo, a client that cannot be in presence is not subscribed).
    pub async fn join(
        &self,
        conn: &Arc<Connection>,
        req: JoinRequest,
    ) -> Result<Joined, NodeError> {
        self.check_join(conn, &req.channel)?;
        let inner = &self.inner;
        let channel = req.channel.as_str();
        let subscriber = Subscriber::shaped(
            conn.clone(),
            req.push_join_leave,
            req.encoder,
            req.shape.clone(),
        );
        if inner.hub.add(channel, subscriber.clone()) {
            inner.metrics.channels.increment(1.0);
            self.channel_occupancy_changed(channel);
            // Whoever joins while the broker subscription is made waits for it
            // before reading the stream: a publication between its read and the
            // subscription would never reach this node. (One joining between
            // `hub.add` above and the insert below does not wait; its sequence
            // check covers that instant.)
            let (made, wait) = tokio::sync::watch::channel(false);
            inner
                .subscribing
                .lock()
                .insert(channel.to_owned(), wait.clone());
            let entry = SubscribingEntry {
                map: &inner.subscribing,
                channel,
                wait,
            };
            let subscribed = inner.broker.subscribe(channel).await;
            drop(entry);
            if let Err(e) = subscribed {
                self.remove_from_hub(channel, conn);
                return Err(e.into());
            }
            let _ = made.send(true);
        } else {
            let wait = inner.subscribing.lock().get(channel).cloned();
            if let Some(mut wait) = wait {
                // A failed subscription (the sender dropped) or a slow one is
                // not this join's to report: it reads the stream anyway, and its
                // own sequence check makes it recover should anything be missed.
                let _ = tokio::time::timeout(SUBSCRIBING_WAIT, wait.wait_for(|made| *made)).await;
            }
        }
        let mut position = None;
        let mut publications = Vec::new();
        let mut recovered = false;
        let mut read_offset = None;
        // Cache recovery mode (`force_recovery_mode: "cache"`): a recovery gives
        // the latest publication only; with `auto_cache_recover` every join that
        // asks for the position recovers so, as if the client had sent an empty
        // position.
        let (cache_mode, auto) = channel::resolve(self.config(), channel)
            .map(|ch| (ch.cache_recovery(), ch.options.auto_cache_recover))
            .unwrap_or((false, false));
        let stream = match req.stream.clone() {
            StreamAsk::Position if cache_mode && auto => {
                StreamAsk::Recover(StreamPosition::default())
            }
            other => other,
        };
        let recovering = matches!(stream, StreamAsk::Recover(_));
        let filter = req.shape.tags_filter.as_deref();
        let read = match stream {
            StreamAsk::None => Ok(None),
            StreamAsk::Position => self
                .top(channel)
                .await
                .map(|p| Some((p, Vec::new(), false))),
            StreamAsk::Recover(since) if cache_mode => {
                self.recover_cache(channel, since, filter).await.map(Some)
            }
            StreamAsk::Recover(since) => self.recover(channel, since).await.map(Some),
        };
        // "Reject unrecovered" is about the stream's continuity: cache mode never
        // promises it, and Centrifugo checks the flag in stream mode only.
        let read = match read {
            Ok(Some((_, _, false))) if req.reject_unrecovered && recovering && !cache_mode => {
                Err(codes::ERROR_UNRECOVERABLE_POSITION.into())
            }
            other => other,
        };
        match read {
            Ok(None) => {}
            Ok(Some((top, mut missed, all))) => {
                if let Some(filter) = filter {
                    missed.retain(|p| tidings_protocol::filter::matches(filter, p.tags.as_ref()));
                }
                read_offset = Some(top.offset);
                if inner.hub.note_position(channel, &top, &subscriber) {
                    inner.metrics.recoveries_requested.increment(1);
                }
                position = Some(top);
                publications = missed;
                recovered = all;
            }
            Err(e) => {
                self.remove_from_hub(channel, conn);
                return Err(e);
            }
        }
        // Presence is in place before the reply goes out, so whoever hears of the
        // membership (the client itself, or anyone it tells) finds it there.
        if req.presence {
            conn.hold_presence(channel, req.info.clone());
            if let Err(e) = inner.presence.add(channel, req.info.clone()).await {
                tracing::error!(channel, error = %e, "presence add failed");
                conn.drop_presence(channel);
                self.remove_from_hub(channel, conn);
                // A write that failed by timing out may still have been stored.
                let (presence, channel, client) = (
                    inner.presence.clone(),
                    channel.to_string(),
                    conn.client_id.clone(),
                );
                tokio::spawn(async move {
                    let _ = presence.remove(&channel, &client).await;
                });
                return Err(e.into());
            }
            self.member_changed(channel, &req.info.user, true);
        }
        conn.channel_joined();
        inner.metrics.subscription_added();
        Ok(Joined {
            member: Member {
                channel: req.channel,
                subscriber: subscriber.clone(),
                info: req.info,
                presence: req.presence,
                join_leave: req.join_leave,
            },
            position,
            publications,
            recovered,
            recovering,
            pending: Pending {
                subscriber,
                position: read_offset,
            },
        })
    }

    /// Sends `first` (the front door's reply, if it goes on this connection's
    /// outbox), then what arrived for the member since it joined and was not in
    /// the reply, switches it to live delivery and tells the channel it joined.
    pub async fn go_live(&self, member: &Member, pending: Pending, first: Option<Bytes>) {
        let lost = pending
            .subscriber
            .go_live(&member.channel, first, pending.position);
        if lost {
            self.inner.metrics.recoveries_requested.increment(1);
        }
        if member.join_leave {
            if let Err(e) = self
                .inner
                .broker
                .publish_join(&member.channel, member.info.clone())
                .await
            {
                tracing::warn!(channel = member.channel, error = %e, "join publish failed");
            }
        }
    }

    /// Takes a member out of its channel: the hub, its presence entry, the leave
    /// message.
    pub async fn leave(&self, member: Member) {
        let conn = &member.subscriber.conn;
        let channel = member.channel.as_str();
        self.remove_from_hub(channel, conn);
        conn.channel_left();
        let inner = &self.inner;
        inner.metrics.subscription_removed();
        if member.presence {
            conn.drop_presence(channel);
            self.member_changed(channel, &member.info.user, false);
            let _ = inner.presence.remove(channel, &conn.client_id).await;
        }
        if member.join_leave {
            let _ = inner.broker.publish_leave(channel, member.info).await;
        }
    }

    fn remove_from_hub(&self, channel: &str, conn: &Connection) {
        let inner = &self.inner;
        if inner.hub.remove(channel, conn.serial) {
            inner.metrics.channels.decrement(1.0);
            self.channel_occupancy_changed(channel);
            let broker = inner.broker.clone();
            let channel = channel.to_string();
            // Dropping node-level interest is best effort and must not delay the
            // session; a failure only costs an idle broker subscription.
            tokio::spawn(async move {
                let _ = broker.unsubscribe(&channel).await;
            });
        }
    }

    /// The channel's current stream position.
    async fn top(&self, channel: &str) -> Result<StreamPosition, NodeError> {
        let filter = HistoryFilter {
            limit: Some(0),
            ..Default::default()
        };
        Ok(self.inner.broker.history(channel, filter).await?.position)
    }

    /// Cache recovery: the latest publication (passing `filter`) unless the
    /// client is at the top already: `(top, publications, recovered)`. Without
    /// any publication, recovered only when the client's position is the top.
    async fn recover_cache(
        &self,
        channel: &str,
        since: StreamPosition,
        filter: Option<&tidings_protocol::FilterNode>,
    ) -> Result<(StreamPosition, Vec<Publication>, bool), NodeError> {
        // With a filter the newest matching one may be further back: read as many
        // as a stream recovery would.
        let limit = match filter {
            None => 1,
            Some(_) => self.config().client.recovery_max_publication_limit.max(1),
        };
        let page = self
            .inner
            .broker
            .history(
                channel,
                HistoryFilter {
                    since: None,
                    limit: Some(limit),
                    reverse: true,
                },
            )
            .await?;
        let top = page.position;
        let same_state = since.offset > 0 && since.offset == top.offset && since.epoch == top.epoch;
        let Some(latest) = page.publications.first() else {
            return Ok((top, Vec::new(), same_state));
        };
        let recovered = latest.offset == top.offset;
        if !recovered || same_state {
            return Ok((top, Vec::new(), recovered));
        }
        let chosen = page
            .publications
            .into_iter()
            .find(|p| filter.is_none_or(|f| tidings_protocol::filter::matches(f, p.tags.as_ref())))
            .map(|mut p| {
                p.delta = false;
                p
            });
        Ok((top, chosen.into_iter().collect(), true))
    }

    /// What a client missed since `since`: `(top, publications, recovered)`.
    /// When the position is gone from the stream, or more was published than
    /// `client.recovery_max_publication_limit`, only the top comes back, with
    /// `recovered: false`.
    async fn recover(
        &self,
        channel: &str,
        since: StreamPosition,
    ) -> Result<(StreamPosition, Vec<Publication>, bool), NodeError> {
        let max = self.config().client.recovery_max_publication_limit;
        let filter = HistoryFilter {
            since: Some(since),
            limit: Some(max.saturating_add(1)),
            reverse: false,
        };
        match self.inner.broker.history(channel, filter).await {
            Ok(mut page) if page.publications.len() <= max => {
                for p in &mut page.publications {
                    p.delta = false;
                }
                Ok((page.position, page.publications, true))
            }
            Ok(_) | Err(BrokerError::UnrecoverablePosition) => {
                Ok((self.top(channel).await?, Vec::new(), false))
            }
            Err(e) => Err(e.into()),
        }
    }
}
