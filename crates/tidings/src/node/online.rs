//! Online status: whether a user has a connection anywhere in the cluster, and
//! when they were last seen (`online_status`, docs/online-status.md).
//!
//! A user is tracked like a channel's occupancy (`webhooks.rs`): the node marks
//! the user when it gets the user's first connection or loses the last one, and
//! the reconciler asks the engine whether that was the first or the last across
//! the cluster (a killed node's entries expire and are reaped by a live node). Each
//! such edge is published once, as `{"user", "online", "at"}`, to the user's
//! status channel (`<online_status.namespace>:<user>`). That channel is the
//! whole state: its history keeps the latest status for the namespace's
//! `history_ttl` ("last seen"), clients follow a user by subscribing to it (with
//! the namespace's permission rules), and [`Node::user_status`] reads it.

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tidings_protocol::{codes, RawJson};

use super::{HistoryFilter, Node, NodeError, PublishRequest};

/// Status channels read at once by [`Node::user_status`].
const CONCURRENCY: usize = 16;
/// Reads again of a status channel caught between two writes, and the wait
/// before each.
const RETRIES: usize = 3;
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// What a status channel carries, and what [`Node::user_status`] answers per user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStatus {
    pub user: String,
    /// The user has a connection somewhere in the cluster.
    pub online: bool,
    /// Unix milliseconds: when the user came online (`online`) or was last seen
    /// (offline). Absent for a user never seen within the status channel's
    /// `history_ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl Node {
    /// Publishes the cluster-wide status of `user` to its status channel.
    pub(super) async fn publish_status(&self, user: &str, online: bool) {
        let config = &self.inner.config;
        let channel = config
            .online_status
            .channel(&config.channel.namespace_boundary, user);
        let status = UserStatus {
            user: user.to_owned(),
            online,
            at: Some(now_ms()),
        };
        let req = PublishRequest::new(channel, RawJson::from_value(&status));
        if let Err(e) = self.publish(req).await {
            tracing::warn!(user, online, error = %e, "online status: publish failed");
        }
    }

    /// The status of each of `users`, in order: the latest publication of each
    /// user's status channel.
    ///
    /// # Errors
    /// 108 (not available) when `online_status` is off; 107 (bad request) for
    /// more users than `online_status.max_users_per_request`; the engine's
    /// errors.
    pub async fn user_status(&self, users: &[String]) -> Result<Vec<UserStatus>, NodeError> {
        let config = &self.inner.config.online_status;
        if !config.enabled {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        if users.len() > config.max_users_per_request {
            return Err(codes::ERROR_BAD_REQUEST.into());
        }
        let boundary = &self.inner.config.channel.namespace_boundary;
        // Owned futures: borrowed ones make the API handler's future not Send.
        let reads: Vec<_> = users
            .iter()
            .map(|user| {
                let (node, user) = (self.clone(), user.clone());
                let channel = config.channel(boundary, &user);
                async move {
                    let filter = HistoryFilter {
                        since: None,
                        limit: Some(1),
                        reverse: true,
                    };
                    let mut page = node.history(&channel, filter.clone()).await?;
                    // A stream with a position but no publication is being written
                    // (on NATS the position moves just before the publication is
                    // readable): read again rather than answer "never seen".
                    for _ in 0..RETRIES {
                        if !page.publications.is_empty() || page.position.offset == 0 {
                            break;
                        }
                        tokio::time::sleep(RETRY_AFTER).await;
                        page = node.history(&channel, filter.clone()).await?;
                    }
                    let latest = page
                        .publications
                        .first()
                        .and_then(|p| p.data.as_ref()?.decode::<UserStatus>().ok())
                        .filter(|s| s.user == user);
                    Ok(latest.unwrap_or(UserStatus {
                        user,
                        online: false,
                        at: None,
                    }))
                }
            })
            .collect();
        futures_util::stream::iter(reads)
            .buffered(CONCURRENCY)
            .collect::<Vec<Result<UserStatus, NodeError>>>()
            .await
            .into_iter()
            .collect()
    }
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
