//! Conversions between the Protobuf messages and the crate's protocol model.
//!
//! Both directions exist for commands and replies alike: the server decodes commands
//! and encodes replies, a client (and every round-trip test) does the opposite.
//! Towards the model, messages are taken by value so strings move rather than copy;
//! from the model, they are borrowed and payloads are shared, not copied.
//!
//! An empty `bytes` field is an absent payload: proto3 does not tell the two apart,
//! and the JSON path never produces an empty payload.

use bytes::Bytes;

use super::messages as pb;
use crate::command::Empty;
use crate::{
    ClientInfo, Command, ConnectRequest, ConnectResult, Disconnect, Error, FilterNode,
    HistoryRequest, HistoryResult, JoinLeave, MessagePush, Payload, PresenceRequest,
    PresenceResult, PresenceStatsRequest, PresenceStatsResult, Publication, PublishRequest, Push,
    RefreshRequest, RefreshResult, Reply, RpcRequest, RpcResult, SendRequest, StreamPosition,
    SubRefreshRequest, SubRefreshResult, SubscribePush, SubscribeRequest, SubscribeResult,
    UnsubscribePush, UnsubscribeRequest,
};

fn to_bytes(payload: &Option<Payload>) -> Bytes {
    payload
        .as_ref()
        .map(|p| p.as_bytes().clone())
        .unwrap_or_default()
}

fn to_payload(bytes: Bytes) -> Option<Payload> {
    (!bytes.is_empty()).then(|| Payload::from_bytes(bytes))
}

// ---- Commands: the Protobuf message into the model (server side). ----

impl From<pb::Command> for Command {
    fn from(c: pb::Command) -> Self {
        Command {
            id: c.id,
            connect: c.connect.map(Into::into),
            subscribe: c.subscribe.map(Into::into),
            unsubscribe: c
                .unsubscribe
                .map(|r| UnsubscribeRequest { channel: r.channel }),
            publish: c.publish.map(|r| PublishRequest {
                channel: r.channel,
                data: to_payload(r.data),
                r#type: r.r#type,
            }),
            presence: c.presence.map(|r| PresenceRequest { channel: r.channel }),
            presence_stats: c
                .presence_stats
                .map(|r| PresenceStatsRequest { channel: r.channel }),
            history: c.history.map(|r| HistoryRequest {
                channel: r.channel,
                limit: r.limit,
                since: r.since.map(Into::into),
                reverse: r.reverse,
            }),
            ping: c.ping.map(|_| Empty {}),
            send: c.send.map(|r| SendRequest {
                data: to_payload(r.data),
            }),
            rpc: c.rpc.map(|r| RpcRequest {
                data: to_payload(r.data),
                method: r.method,
            }),
            refresh: c.refresh.map(|r| RefreshRequest { token: r.token }),
            sub_refresh: c.sub_refresh.map(|r| SubRefreshRequest {
                channel: r.channel,
                token: r.token,
            }),
        }
    }
}

impl From<pb::ConnectRequest> for ConnectRequest {
    fn from(r: pb::ConnectRequest) -> Self {
        ConnectRequest {
            token: r.token,
            data: to_payload(r.data),
            subs: r.subs.into_iter().map(|(k, v)| (k, v.into())).collect(),
            name: r.name,
            version: r.version,
            headers: r.headers,
        }
    }
}

impl From<pb::SubscribeRequest> for SubscribeRequest {
    fn from(r: pb::SubscribeRequest) -> Self {
        SubscribeRequest {
            channel: r.channel,
            token: r.token,
            recover: r.recover,
            epoch: r.epoch,
            offset: r.offset,
            data: to_payload(r.data),
            positioned: r.positioned,
            recoverable: r.recoverable,
            join_leave: r.join_leave,
            delta: r.delta,
            tf: r.tf.map(Into::into),
            flag: r.flag,
            r#type: r.r#type,
        }
    }
}

impl From<pb::FilterNode> for FilterNode {
    fn from(n: pb::FilterNode) -> Self {
        FilterNode {
            op: n.op,
            key: n.key,
            cmp: n.cmp,
            val: n.val,
            vals: n.vals,
            nodes: n.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<&FilterNode> for pb::FilterNode {
    fn from(n: &FilterNode) -> Self {
        pb::FilterNode {
            op: n.op.clone(),
            key: n.key.clone(),
            cmp: n.cmp.clone(),
            val: n.val.clone(),
            vals: n.vals.clone(),
            nodes: n.nodes.iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::StreamPosition> for StreamPosition {
    fn from(p: pb::StreamPosition) -> Self {
        StreamPosition {
            offset: p.offset,
            epoch: p.epoch,
        }
    }
}

// ---- Commands: the model into the Protobuf message (client side). ----

impl From<&Command> for pb::Command {
    fn from(c: &Command) -> Self {
        pb::Command {
            id: c.id,
            connect: c.connect.as_ref().map(Into::into),
            subscribe: c.subscribe.as_ref().map(Into::into),
            unsubscribe: c.unsubscribe.as_ref().map(|r| pb::UnsubscribeRequest {
                channel: r.channel.clone(),
            }),
            publish: c.publish.as_ref().map(|r| pb::PublishRequest {
                channel: r.channel.clone(),
                data: to_bytes(&r.data),
                r#type: r.r#type,
            }),
            presence: c.presence.as_ref().map(|r| pb::PresenceRequest {
                channel: r.channel.clone(),
            }),
            presence_stats: c.presence_stats.as_ref().map(|r| pb::PresenceStatsRequest {
                channel: r.channel.clone(),
            }),
            history: c.history.as_ref().map(|r| pb::HistoryRequest {
                channel: r.channel.clone(),
                limit: r.limit,
                since: r.since.as_ref().map(Into::into),
                reverse: r.reverse,
            }),
            ping: c.ping.map(|_| pb::PingRequest {}),
            send: c.send.as_ref().map(|r| pb::SendRequest {
                data: to_bytes(&r.data),
            }),
            rpc: c.rpc.as_ref().map(|r| pb::RpcRequest {
                data: to_bytes(&r.data),
                method: r.method.clone(),
            }),
            refresh: c.refresh.as_ref().map(|r| pb::RefreshRequest {
                token: r.token.clone(),
            }),
            sub_refresh: c.sub_refresh.as_ref().map(|r| pb::SubRefreshRequest {
                channel: r.channel.clone(),
                token: r.token.clone(),
            }),
        }
    }
}

impl From<&ConnectRequest> for pb::ConnectRequest {
    fn from(r: &ConnectRequest) -> Self {
        pb::ConnectRequest {
            token: r.token.clone(),
            data: to_bytes(&r.data),
            subs: r.subs.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
            name: r.name.clone(),
            version: r.version.clone(),
            headers: r.headers.clone(),
        }
    }
}

impl From<&SubscribeRequest> for pb::SubscribeRequest {
    fn from(r: &SubscribeRequest) -> Self {
        pb::SubscribeRequest {
            channel: r.channel.clone(),
            token: r.token.clone(),
            recover: r.recover,
            epoch: r.epoch.clone(),
            offset: r.offset,
            data: to_bytes(&r.data),
            positioned: r.positioned,
            recoverable: r.recoverable,
            join_leave: r.join_leave,
            delta: r.delta.clone(),
            tf: r.tf.as_ref().map(Into::into),
            flag: r.flag,
            r#type: r.r#type,
        }
    }
}

impl From<&StreamPosition> for pb::StreamPosition {
    fn from(p: &StreamPosition) -> Self {
        pb::StreamPosition {
            offset: p.offset,
            epoch: p.epoch.clone(),
        }
    }
}

// ---- Replies: the model into the Protobuf message (server side). ----

impl From<&Reply> for pb::Reply {
    fn from(r: &Reply) -> Self {
        pb::Reply {
            id: r.id,
            error: r.error.as_ref().map(Into::into),
            push: r.push.as_ref().map(Into::into),
            connect: r.connect.as_ref().map(Into::into),
            subscribe: r.subscribe.as_ref().map(Into::into),
            unsubscribe: r.unsubscribe.map(|_| pb::UnsubscribeResult {}),
            publish: r.publish.map(|_| pb::PublishResult {}),
            presence: r.presence.as_ref().map(|p| pb::PresenceResult {
                presence: p
                    .presence
                    .iter()
                    .map(|(k, v)| (k.clone(), v.into()))
                    .collect(),
            }),
            presence_stats: r.presence_stats.as_ref().map(|p| pb::PresenceStatsResult {
                num_clients: p.num_clients,
                num_users: p.num_users,
            }),
            history: r.history.as_ref().map(|h| pb::HistoryResult {
                publications: h.publications.iter().map(Into::into).collect(),
                epoch: h.epoch.clone(),
                offset: h.offset,
            }),
            ping: r.ping.map(|_| pb::PingResult {}),
            rpc: r.rpc.as_ref().map(|p| pb::RpcResult {
                data: to_bytes(&p.data),
            }),
            refresh: r.refresh.as_ref().map(|p| pb::RefreshResult {
                client: p.client.clone(),
                version: p.version.clone(),
                expires: p.expires,
                ttl: p.ttl,
            }),
            sub_refresh: r.sub_refresh.as_ref().map(|p| pb::SubRefreshResult {
                expires: p.expires,
                ttl: p.ttl,
            }),
        }
    }
}

impl From<&Error> for pb::Error {
    fn from(e: &Error) -> Self {
        pb::Error {
            code: e.code,
            message: e.message.clone(),
            temporary: e.temporary,
        }
    }
}

impl From<&Push> for pb::Push {
    fn from(p: &Push) -> Self {
        pb::Push {
            channel: p.channel.clone(),
            r#pub: p.publication.as_ref().map(Into::into),
            join: p.join.as_ref().map(|j| pb::Join {
                info: Some((&j.info).into()),
            }),
            leave: p.leave.as_ref().map(|l| pb::Leave {
                info: Some((&l.info).into()),
            }),
            unsubscribe: p.unsubscribe.as_ref().map(|u| pb::Unsubscribe {
                code: u.code,
                reason: u.reason.clone(),
            }),
            message: p.message.as_ref().map(|m| pb::Message {
                data: to_bytes(&m.data),
            }),
            subscribe: p.subscribe.as_ref().map(|s| pb::Subscribe {
                recoverable: s.recoverable,
                epoch: s.epoch.clone(),
                offset: s.offset,
                positioned: s.positioned,
                data: to_bytes(&s.data),
            }),
            // The push carries Connect, whose tags differ from ConnectResult's.
            connect: p.connect.as_ref().map(|c| pb::Connect {
                client: c.client.clone(),
                version: c.version.clone(),
                data: to_bytes(&c.data),
                subs: c.subs.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
                expires: c.expires,
                ttl: c.ttl,
                ping: c.ping,
                pong: c.pong,
                session: c.session.clone(),
                node: c.node.clone(),
                time: c.time,
            }),
            disconnect: p.disconnect.as_ref().map(|d| pb::Disconnect {
                code: d.code,
                reason: d.reason.clone(),
                reconnect: d.reconnect,
            }),
            // The refresh push carries expiry only.
            refresh: p.refresh.as_ref().map(|r| pb::Refresh {
                expires: r.expires,
                ttl: r.ttl,
            }),
        }
    }
}

impl From<&Publication> for pb::Publication {
    fn from(p: &Publication) -> Self {
        pb::Publication {
            data: to_bytes(&p.data),
            info: p.info.as_ref().map(Into::into),
            offset: p.offset,
            tags: p.tags.clone().unwrap_or_default(),
            delta: p.delta,
            time: p.time,
        }
    }
}

impl From<&ClientInfo> for pb::ClientInfo {
    fn from(i: &ClientInfo) -> Self {
        pb::ClientInfo {
            user: i.user.clone(),
            client: i.client.clone(),
            conn_info: to_bytes(&i.conn_info),
            chan_info: to_bytes(&i.chan_info),
        }
    }
}

impl From<&ConnectResult> for pb::ConnectResult {
    fn from(c: &ConnectResult) -> Self {
        pb::ConnectResult {
            client: c.client.clone(),
            version: c.version.clone(),
            expires: c.expires,
            ttl: c.ttl,
            data: to_bytes(&c.data),
            subs: c.subs.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
            ping: c.ping,
            pong: c.pong,
            session: c.session.clone(),
            node: c.node.clone(),
            time: c.time,
        }
    }
}

impl From<&SubscribeResult> for pb::SubscribeResult {
    fn from(s: &SubscribeResult) -> Self {
        pb::SubscribeResult {
            expires: s.expires,
            ttl: s.ttl,
            recoverable: s.recoverable,
            epoch: s.epoch.clone(),
            publications: s.publications.iter().map(Into::into).collect(),
            recovered: s.recovered,
            offset: s.offset,
            positioned: s.positioned,
            data: to_bytes(&s.data),
            was_recovering: s.was_recovering,
            delta: s.delta,
        }
    }
}

// ---- Replies: the Protobuf message into the model (client side). ----

impl From<pb::Reply> for Reply {
    fn from(r: pb::Reply) -> Self {
        Reply {
            id: r.id,
            error: r.error.map(|e| Error {
                code: e.code,
                message: e.message,
                temporary: e.temporary,
            }),
            push: r.push.map(Into::into),
            connect: r.connect.map(Into::into),
            subscribe: r.subscribe.map(Into::into),
            unsubscribe: r.unsubscribe.map(|_| Empty {}),
            publish: r.publish.map(|_| Empty {}),
            presence: r.presence.map(|p| PresenceResult {
                presence: p.presence.into_iter().map(|(k, v)| (k, v.into())).collect(),
            }),
            presence_stats: r.presence_stats.map(|p| PresenceStatsResult {
                num_clients: p.num_clients,
                num_users: p.num_users,
            }),
            history: r.history.map(|h| HistoryResult {
                publications: h.publications.into_iter().map(Into::into).collect(),
                epoch: h.epoch,
                offset: h.offset,
            }),
            ping: r.ping.map(|_| Empty {}),
            rpc: r.rpc.map(|p| RpcResult {
                data: to_payload(p.data),
            }),
            refresh: r.refresh.map(|p| RefreshResult {
                client: p.client,
                version: p.version,
                expires: p.expires,
                ttl: p.ttl,
            }),
            sub_refresh: r.sub_refresh.map(|p| SubRefreshResult {
                expires: p.expires,
                ttl: p.ttl,
            }),
        }
    }
}

impl From<pb::Push> for Push {
    fn from(p: pb::Push) -> Self {
        Push {
            channel: p.channel,
            publication: p.r#pub.map(Into::into),
            join: p.join.map(|j| JoinLeave {
                info: j.info.map(Into::into).unwrap_or_default(),
            }),
            leave: p.leave.map(|l| JoinLeave {
                info: l.info.map(Into::into).unwrap_or_default(),
            }),
            unsubscribe: p.unsubscribe.map(|u| UnsubscribePush {
                code: u.code,
                reason: u.reason,
            }),
            message: p.message.map(|m| MessagePush {
                data: to_payload(m.data),
            }),
            subscribe: p.subscribe.map(|s| SubscribePush {
                recoverable: s.recoverable,
                epoch: s.epoch,
                offset: s.offset,
                positioned: s.positioned,
                data: to_payload(s.data),
            }),
            connect: p.connect.map(|c| ConnectResult {
                client: c.client,
                version: c.version,
                data: to_payload(c.data),
                subs: c.subs.into_iter().map(|(k, v)| (k, v.into())).collect(),
                expires: c.expires,
                ttl: c.ttl,
                ping: c.ping,
                pong: c.pong,
                session: c.session,
                node: c.node,
                time: c.time,
            }),
            disconnect: p.disconnect.map(|d| Disconnect {
                code: d.code,
                reason: d.reason,
                reconnect: d.reconnect,
            }),
            refresh: p.refresh.map(|r| RefreshResult {
                expires: r.expires,
                ttl: r.ttl,
                ..Default::default()
            }),
        }
    }
}

impl From<pb::Publication> for Publication {
    fn from(p: pb::Publication) -> Self {
        Publication {
            data: to_payload(p.data),
            info: p.info.map(Into::into),
            offset: p.offset,
            tags: (!p.tags.is_empty()).then_some(p.tags),
            time: p.time,
            delta: p.delta,
        }
    }
}

impl From<pb::ClientInfo> for ClientInfo {
    fn from(i: pb::ClientInfo) -> Self {
        ClientInfo {
            user: i.user,
            client: i.client,
            conn_info: to_payload(i.conn_info),
            chan_info: to_payload(i.chan_info),
        }
    }
}

impl From<pb::ConnectResult> for ConnectResult {
    fn from(c: pb::ConnectResult) -> Self {
        ConnectResult {
            client: c.client,
            version: c.version,
            data: to_payload(c.data),
            subs: c.subs.into_iter().map(|(k, v)| (k, v.into())).collect(),
            expires: c.expires,
            ttl: c.ttl,
            ping: c.ping,
            pong: c.pong,
            session: c.session,
            node: c.node,
            time: c.time,
        }
    }
}

impl From<pb::SubscribeResult> for SubscribeResult {
    fn from(s: pb::SubscribeResult) -> Self {
        SubscribeResult {
            expires: s.expires,
            ttl: s.ttl,
            recoverable: s.recoverable,
            epoch: s.epoch,
            publications: s.publications.into_iter().map(Into::into).collect(),
            recovered: s.recovered,
            offset: s.offset,
            positioned: s.positioned,
            data: to_payload(s.data),
            was_recovering: s.was_recovering,
            delta: s.delta,
        }
    }
}
