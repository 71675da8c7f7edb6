//! The node's calls to the backend proxies, for every front door: each method
//! builds the event's request from the connection, calls the endpoint the
//! configuration picks, and turns the answer into a result or a [`Rejection`].
//! Failures are never silent and never hang: see [`crate::proxy`].

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use tidings_protocol::codes;
use tidings_protocol::RawJson;

use super::{Node, RpcRequest};
use crate::channel;
use crate::connection::{Connection, WireFormat};
use crate::proxy::{
    answered_rejection, proxy_key, wire, Endpoint, ProxyContext, Rejection, RequestHeaders,
};

/// What a client's connect command says, for the connect proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectEvent<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub data: Option<&'a RawJson>,
    /// Channels a unidirectional client asks for (`subs` of its connect request).
    pub channels: &'a [String],
}

/// How long a connection or subscription lives on when the refresh or
/// sub_refresh proxy fails, before the next try (Centrifugo's minute).
const REFRESH_RETRY_SECS: i64 = 60;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn base(conn: &Connection) -> wire::Base<'_> {
    wire::Base {
        client: &conn.client_id,
        transport: conn.transport,
        protocol: match conn.format {
            WireFormat::Json => "json",
            WireFormat::Protobuf => "protobuf",
        },
        // Payloads travel as JSON in the request (no `binary_encoding`).
        encoding: "json",
    }
}

/// Calls an endpoint; an `error` or `disconnect` answer and a failure become a
/// [`Rejection`] (failures logged with what the event was), and each call is
/// counted (`tidings_proxy_calls_total`).
async fn call<Req: serde::Serialize, Res: serde::de::DeserializeOwned>(
    node: &Node,
    endpoint: &Endpoint,
    event: &'static str,
    conn: &Connection,
    ctx: &ProxyContext,
    req: &Req,
) -> Result<Option<Res>, Rejection> {
    let metrics = node.metrics();
    let started = std::time::Instant::now();
    let call = endpoint.call::<Req, Res>(req, conn.request_headers(), ctx);
    let answer = if node.config().opentelemetry.traces_proxy() {
        // A span for OpenTelemetry (see config/opentelemetry.rs).
        let span = tracing::info_span!(
            target: "tidings::otel",
            "proxy",
            otel.name = format!("proxy.{event}").as_str(),
            otel.kind = "client",
            proxy.event = event,
            client.id = conn.client_id.as_str(),
            otel.status_code = tracing::field::Empty,
        );
        let answer = tracing::Instrument::instrument(call, span.clone()).await;
        if answer.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        answer
    } else {
        call.await
    };
    metrics.proxy_duration(event, started.elapsed());
    match answer {
        Ok(resp) => match answered_rejection(&resp) {
            Some(r) => {
                metrics.proxy_call(event, "rejected");
                Err(r)
            }
            None => {
                metrics.proxy_call(event, "ok");
                Ok(resp.result)
            }
        },
        Err(e) => {
            metrics.proxy_call(event, "failed");
            tracing::warn!(event, client = conn.client_id, error = %e, source = ?std::error::Error::source(&e), "proxy call failed");
            Err(endpoint.rejection_for(&e))
        }
    }
}

fn user_request<'a>(
    endpoint: &Endpoint,
    conn: &'a Connection,
    ctx: &'a ProxyContext,
) -> wire::UserRequest<'a> {
    wire::UserRequest {
        base: base(conn),
        user: conn.user(),
        meta: ctx.meta.as_ref().filter(|_| endpoint.includes_meta()),
        channel: None,
        method: None,
        data: None,
    }
}

impl Node {
    /// Whether connects without a token go to the connect proxy.
    pub fn connect_proxy_enabled(&self) -> bool {
        self.inner.proxies.connect.is_some()
    }

    /// Whether connections are refreshed by the refresh proxy (server-side)
    /// rather than by the client.
    pub fn refresh_proxy_enabled(&self) -> bool {
        self.inner.proxies.refresh.is_some()
    }

    /// The headers of a client's connection request that a proxy forwards (`None`
    /// when no proxy forwards headers). Transports keep them on the connection
    /// ([`Connection::set_request_headers`]) before its session starts.
    pub fn proxy_request_headers(&self, headers: &HeaderMap) -> Option<RequestHeaders> {
        self.inner.proxies.keep_headers(headers)
    }

    /// Asks the connect proxy who the client is. `Ok(None)` when the backend
    /// answered without a result (no credentials).
    ///
    /// # Errors
    /// The backend's error or disconnect; error 100 (or the configured transform)
    /// when it failed; 108 when no connect proxy is configured.
    pub async fn proxy_connect(
        &self,
        conn: &Connection,
        ctx: &ProxyContext,
        ev: ConnectEvent<'_>,
    ) -> Result<Option<wire::ConnectResult>, Rejection> {
        let Some(endpoint) = &self.inner.proxies.connect else {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        };
        let req = wire::ConnectRequest {
            base: base(conn),
            name: ev.name,
            version: ev.version,
            data: ev.data,
            channels: ev.channels,
        };
        call(self, endpoint, "connect", conn, ctx, &req).await
    }

    /// Asks the refresh proxy whether the connection lives on. Never fails: a
    /// failed call extends the connection by a minute (and the proxy is asked
    /// again then); an answer without a result expires it.
    pub async fn proxy_refresh(
        &self,
        conn: &Connection,
        ctx: &ProxyContext,
    ) -> wire::RefreshResult {
        let Some(endpoint) = &self.inner.proxies.refresh else {
            return wire::RefreshResult {
                expired: true,
                ..Default::default()
            };
        };
        let req = user_request(endpoint, conn, ctx);
        refresh_outcome(call(self, endpoint, "refresh", conn, ctx, &req).await)
    }

    /// Asks the channel's subscribe proxy whether the client may subscribe.
    ///
    /// # Errors
    /// The backend's error or disconnect; error 100 (or the configured transform)
    /// when it failed; 108 when the namespace has no subscribe proxy.
    pub async fn proxy_subscribe(
        &self,
        conn: &Connection,
        ctx: &ProxyContext,
        channel_name: &str,
        data: Option<&RawJson>,
    ) -> Result<wire::SubscribeResult, Rejection> {
        let ch = channel::resolve(&self.inner.config, channel_name).map_err(Rejection::from)?;
        let endpoint = ch
            .options
            .subscribe_proxy_enabled
            .then(|| {
                self.inner
                    .proxies
                    .subscribe
                    .get(proxy_key(&ch.options.subscribe_proxy_name))
            })
            .flatten()
            .ok_or(Rejection::from(codes::ERROR_NOT_AVAILABLE))?;
        let req = wire::UserRequest {
            channel: Some(channel_name),
            data,
            ..user_request(endpoint, conn, ctx)
        };
        Ok(call(self, endpoint, "subscribe", conn, ctx, &req)
            .await?
            .unwrap_or_default())
    }

    /// Asks the channel's publish proxy whether the client may publish `data`,
    /// and what to publish instead.
    ///
    /// # Errors
    /// As [`Node::proxy_subscribe`].
    pub async fn proxy_publish(
        &self,
        conn: &Connection,
        ctx: &ProxyContext,
        channel_name: &str,
        data: &RawJson,
    ) -> Result<wire::PublishResult, Rejection> {
        let ch = channel::resolve(&self.inner.config, channel_name).map_err(Rejection::from)?;
        let endpoint = ch
            .options
            .publish_proxy_enabled
            .then(|| {
                self.inner
                    .proxies
                    .publish
                    .get(proxy_key(&ch.options.publish_proxy_name))
            })
            .flatten()
            .ok_or(Rejection::from(codes::ERROR_NOT_AVAILABLE))?;
        let req = wire::UserRequest {
            channel: Some(channel_name),
            data: Some(data),
            ..user_request(endpoint, conn, ctx)
        };
        Ok(call(self, endpoint, "publish", conn, ctx, &req)
            .await?
            .unwrap_or_default())
    }

    /// Asks the channel's sub_refresh proxy whether a subscription lives on. Never
    /// fails, like [`Node::proxy_refresh`].
    pub async fn proxy_sub_refresh(
        &self,
        conn: &Connection,
        ctx: &ProxyContext,
        channel_name: &str,
    ) -> wire::RefreshResult {
        let endpoint = channel::resolve(&self.inner.config, channel_name)
            .ok()
            .filter(|ch| ch.options.sub_refresh_proxy_enabled)
            .and_then(|ch| {
                self.inner
                    .proxies
                    .sub_refresh
                    .get(proxy_key(&ch.options.sub_refresh_proxy_name))
            });
        let Some(endpoint) = endpoint else {
            return wire::RefreshResult {
                expired: true,
                ..Default::default()
            };
        };
        let req = wire::UserRequest {
            channel: Some(channel_name),
            ..user_request(endpoint, conn, ctx)
        };
        refresh_outcome(call(self, endpoint, "sub_refresh", conn, ctx, &req).await)
    }

    /// Runs a client's `rpc`: the node's handler when it has one, else the RPC
    /// proxy of the method's namespace.
    ///
    /// # Errors
    /// The handler's or backend's error or disconnect; 104 for a method in an
    /// unknown RPC namespace; 108 "not available" when neither a handler nor a
    /// proxy takes the method, as in Centrifugo.
    pub async fn rpc(
        &self,
        conn: &Connection,
        ctx: &ProxyContext,
        req: RpcRequest,
    ) -> Result<Option<RawJson>, Rejection> {
        if let Some(handler) = self.inner.rpc.clone() {
            return handler(req).await.map(Some).map_err(Rejection::Error);
        }
        if !self.inner.proxies.has_rpc() {
            return Err(codes::ERROR_NOT_AVAILABLE.into());
        }
        let Some(opts) = self.inner.config.rpc.options_for(&req.method) else {
            return Err(codes::ERROR_METHOD_NOT_FOUND.into());
        };
        let endpoint = opts
            .proxy_enabled
            .then(|| self.inner.proxies.rpc.get(proxy_key(&opts.proxy_name)))
            .flatten()
            .ok_or(Rejection::from(codes::ERROR_NOT_AVAILABLE))?;
        let wire_req = wire::UserRequest {
            method: Some(&req.method),
            data: req.data.as_ref(),
            ..user_request(endpoint, conn, ctx)
        };
        Ok(
            call::<_, wire::RpcResult>(self, endpoint, "rpc", conn, ctx, &wire_req)
                .await?
                .and_then(|r| r.data),
        )
    }
}

/// A refresh or sub_refresh answer as the session acts on it: a failure extends
/// by a minute, a missing result expires.
fn refresh_outcome(outcome: Result<Option<wire::RefreshResult>, Rejection>) -> wire::RefreshResult {
    match outcome {
        Ok(Some(result)) => result,
        Ok(None) => wire::RefreshResult {
            expired: true,
            ..Default::default()
        },
        // An error or disconnect answer does not apply to refreshes (Centrifugo);
        // both, like a failure, give the backend another minute.
        Err(_) => wire::RefreshResult {
            expire_at: unix_now() + REFRESH_RETRY_SECS,
            ..Default::default()
        },
    }
}
