//! The node's clients by id and by user, and the server API's operations on a
//! user's connections (disconnect, unsubscribe, subscribe, refresh), applied on every
//! node.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tidings_protocol::codes;
use tidings_protocol::Disconnect;

use super::{Node, NodeError};
use crate::channel;
use crate::connection::{Connection, Control, ServerRefresh, ServerSubscribe};

/// Who is connected on this node, by client id and by user.
#[derive(Default)]
pub(super) struct Clients {
    pub(super) clients: HashMap<String, Arc<Connection>>,
    pub(super) users: HashMap<String, HashSet<String>>,
}

impl Node {
    /// Records a connected client. `false` when its user already holds
    /// `client.user_connection_limit` connections on this node (anonymous users are
    /// not counted); the check and the insert share one lock, so simultaneous
    /// connects of one user cannot overshoot.
    #[must_use]
    pub fn register(&self, conn: &Arc<Connection>) -> bool {
        let limit = self.inner.config.client.user_connection_limit;
        let mut reg = self.inner.clients.lock();
        let user = conn.user();
        if limit > 0 && !user.is_empty() && reg.users.get(user).is_some_and(|s| s.len() >= limit) {
            return false;
        }
        conn.outbox
            .record_wait(self.inner.metrics.outbox_wait.clone());
        reg.clients.insert(conn.client_id.clone(), conn.clone());
        let ids = reg.users.entry(user.to_string()).or_default();
        let first = ids.is_empty();
        ids.insert(conn.client_id.clone());
        drop(reg);
        if first && !user.is_empty() {
            self.user_connections_changed(user);
        }
        true
    }

    /// Forgets a client recorded by [`Node::register`].
    pub fn unregister(&self, conn: &Connection) {
        let mut reg = self.inner.clients.lock();
        if reg.clients.remove(&conn.client_id).is_none() {
            return;
        }
        let mut last = false;
        if let Some(set) = reg.users.get_mut(conn.user()) {
            set.remove(&conn.client_id);
            if set.is_empty() {
                reg.users.remove(conn.user());
                last = true;
            }
        }
        drop(reg);
        if last && !conn.user().is_empty() {
            self.user_connections_changed(conn.user());
        }
    }

    /// Connections matching a user and optional client id.
    fn targets(&self, user: &str, client: Option<&str>) -> Vec<Arc<Connection>> {
        let reg = self.inner.clients.lock();
        let ids: Vec<String> = match client.filter(|c| !c.is_empty()) {
            Some(c) => vec![c.to_string()],
            None => reg
                .users
                .get(user)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        };
        ids.iter()
            .filter_map(|id| reg.clients.get(id))
            .filter(|c| c.user() == user)
            .cloned()
            .collect()
    }

    /// Sends a user operation to every node, this one included. When the broker
    /// refuses it, this node still applies it to its own connections and the
    /// caller gets the error (the other nodes may not have it).
    async fn broadcast(
        &self,
        msg: super::cluster::Message,
        apply_here: impl FnOnce(),
    ) -> Result<(), NodeError> {
        let bytes = super::cluster::encode(self, msg);
        if bytes.len() > super::cluster::MAX_MESSAGE {
            return Err(codes::ERROR_BAD_REQUEST.into());
        }
        match self.inner.broker.publish_control(bytes, None).await {
            Ok(()) => Ok(()),
            Err(e) => {
                apply_here();
                Err(e.into())
            }
        }
    }

    /// Disconnects a user's connections (or one of them) on every node, except
    /// those whitelisted.
    ///
    /// # Errors
    /// A backend error when the broker could not carry the request to the other
    /// nodes (this node's connections are disconnected anyway).
    pub async fn disconnect(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        d: Disconnect,
    ) -> Result<(), NodeError> {
        let msg = super::cluster::Message::Disconnect {
            user: user.to_string(),
            client: client.map(str::to_owned),
            whitelist: whitelist.to_vec(),
            disconnect: d.clone(),
        };
        self.broadcast(msg, || {
            self.disconnect_local(user, client, whitelist, d);
        })
        .await
    }

    /// Disconnects a user's connections (or one of them) on this node, except those
    /// whitelisted. Returns how many were told to disconnect.
    pub fn disconnect_local(
        &self,
        user: &str,
        client: Option<&str>,
        whitelist: &[String],
        d: Disconnect,
    ) -> usize {
        let mut n = 0;
        for conn in self.targets(user, client) {
            if whitelist.iter().any(|w| w == &conn.client_id) {
                continue;
            }
            if conn
                .control
                .try_send(Control::Disconnect(d.clone()))
                .is_ok()
            {
                n += 1;
            } else {
                // The control queue is full: close directly, the session notices.
                conn.outbox.close_after_queued(d.clone());
                n += 1;
            }
        }
        n
    }

    /// Unsubscribes a user's connections (or one) from a channel, on every node.
    ///
    /// # Errors
    /// 107/102 for a bad channel; a backend error when the broker could not carry
    /// the request to the other nodes.
    pub async fn unsubscribe(
        &self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<(), NodeError> {
        channel::resolve(&self.inner.config, channel)?;
        let msg = super::cluster::Message::Unsubscribe {
            user: user.to_string(),
            channel: channel.to_string(),
            client: client.map(str::to_owned),
        };
        self.broadcast(msg, || {
            self.unsubscribe_local(user, channel, client);
        })
        .await
    }

    /// Unsubscribes a user's connections (or one) on this node from a channel.
    /// Returns how many were asked.
    pub fn unsubscribe_local(&self, user: &str, channel: &str, client: Option<&str>) -> usize {
        if channel::resolve(&self.inner.config, channel).is_err() {
            return 0;
        }
        let mut n = 0;
        for conn in self.targets(user, client) {
            if conn
                .control
                .try_send(Control::Unsubscribe {
                    channel: channel.to_string(),
                })
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Subscribes a user's connections (or one) to a channel, server-side, on every
    /// node.
    ///
    /// # Errors
    /// 107/102 for a bad channel; a backend error when the broker could not carry
    /// the request to the other nodes.
    pub async fn subscribe(
        &self,
        user: &str,
        req: ServerSubscribe,
        client: Option<&str>,
    ) -> Result<(), NodeError> {
        channel::resolve(&self.inner.config, &req.channel)?;
        let msg = super::cluster::Message::Subscribe {
            user: user.to_string(),
            channel: req.channel.clone(),
            client: client.map(str::to_owned),
            info: req.info.clone(),
            data: req.data.clone(),
        };
        self.broadcast(msg, || {
            self.subscribe_local(user, req, client);
        })
        .await
    }

    /// Subscribes a user's connections (or one) on this node to a channel. Returns
    /// how many were asked.
    pub fn subscribe_local(&self, user: &str, req: ServerSubscribe, client: Option<&str>) -> usize {
        if channel::resolve(&self.inner.config, &req.channel).is_err() {
            return 0;
        }
        let mut n = 0;
        for conn in self.targets(user, client) {
            if conn
                .control
                .try_send(Control::Subscribe(Box::new(req.clone())))
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Refreshes a user's connections (or one, by client or session id) on every
    /// node: ends them, moves their expiry, or updates their info, as Centrifugo's
    /// `refresh` API method does.
    ///
    /// # Errors
    /// A backend error when the broker could not carry the request to the other
    /// nodes (this node's connections are refreshed anyway).
    pub async fn refresh(
        &self,
        user: &str,
        client: Option<&str>,
        session: Option<&str>,
        refresh: ServerRefresh,
    ) -> Result<(), NodeError> {
        let msg = super::cluster::Message::Refresh {
            user: user.to_string(),
            client: client.map(str::to_owned),
            session: session.map(str::to_owned),
            refresh: refresh.clone(),
        };
        self.broadcast(msg, || {
            self.refresh_local(user, client, session, &refresh);
        })
        .await
    }

    /// Refreshes a user's connections on this node. Returns how many were asked.
    pub fn refresh_local(
        &self,
        user: &str,
        client: Option<&str>,
        session: Option<&str>,
        refresh: &ServerRefresh,
    ) -> usize {
        let mut n = 0;
        for conn in self.targets(user, client) {
            if session.is_some_and(|s| !s.is_empty() && s != conn.session_id) {
                continue;
            }
            if conn
                .control
                .try_send(Control::Refresh(Box::new(refresh.clone())))
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }
}
