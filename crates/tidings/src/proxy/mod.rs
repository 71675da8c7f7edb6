//! Backend proxies: the connect, refresh, subscribe, publish, sub_refresh and RPC
//! events of clients, sent to the application's backend over HTTP with Centrifugo
//! v6's JSON bodies (see docs/proxy.md).
//!
//! A core service: front doors reach it through `Node`'s `proxy_*` methods, so
//! every transport and both front doors get the same behaviour. Each endpoint
//! holds a bounded number of requests in flight; a caller waits for a slot and for
//! the answer within the endpoint's `timeout`, never longer, and an answer larger
//! than `max_response_size` is cut off with an error. A slow or dead backend
//! therefore costs its callers at most the timeout and never blocks anyone else.
//!
//! - [`wire`]: the request and answer bodies.
//! - this file: [`Proxies`] (the endpoints of a node), [`Endpoint`] (one backend
//!   URL and its HTTP client), [`ProxyError`] and [`Rejection`].

pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidings_protocol::codes;
use tidings_protocol::{Disconnect, RawJson};
use tokio::sync::Semaphore;

use crate::config::{Config, ProxyConfig, DEFAULT_PROXY_NAME};

/// Most headers of a client's request kept for the proxies, and most bytes of
/// one value: the copy is per connection, so it is bounded.
const MAX_KEPT_HEADERS: usize = 32;
const MAX_KEPT_HEADER_VALUE: usize = 8 * 1024;

/// The headers of a client's connection request that some proxy forwards.
pub type RequestHeaders = Box<[(HeaderName, HeaderValue)]>;

/// Why a proxy call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No answer (and no free request slot) within the endpoint's timeout.
    #[error("the backend did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The request failed: connection refused, reset, …
    #[error("request to the backend failed")]
    Request(#[source] reqwest::Error),
    /// The backend answered with a status other than 200.
    #[error("the backend answered HTTP {0}")]
    Status(u16),
    /// The answer was longer than `max_response_size`.
    #[error("the backend's answer exceeds {0} bytes")]
    TooLarge(usize),
    /// The answer is not the JSON the event expects.
    #[error("the backend's answer is not valid JSON for this event")]
    InvalidJson(#[source] serde_json::Error),
    /// The request cannot be written as JSON: a Protobuf client's binary payload.
    #[error("the request cannot be encoded as JSON (a binary payload)")]
    Encode(#[source] serde_json::Error),
}

/// What the client gets instead of a result: an error reply or a disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Error(tidings_protocol::Error),
    Disconnect(Disconnect),
}

impl From<codes::ErrorCode> for Rejection {
    fn from(code: codes::ErrorCode) -> Self {
        Rejection::Error(code.into())
    }
}

/// What a caller adds to the requests of one connection, besides the connection
/// itself: the emulated headers of its connect command and the meta the connect
/// proxy attached.
#[derive(Debug, Clone, Default)]
pub struct ProxyContext {
    pub emulated_headers: HashMap<String, String>,
    pub meta: Option<RawJson>,
}

/// One backend URL.
pub struct Endpoint {
    config: ProxyConfig,
    url: reqwest::Url,
    /// Shared by every endpoint of the node: one pool of keep-alive connections.
    client: reqwest::Client,
    /// Requests in flight, bounded by `max_concurrent_requests`.
    slots: Arc<Semaphore>,
    /// `http_headers` and `emulated_headers`, lower-cased once.
    http_headers: Vec<String>,
    emulated_headers: Vec<String>,
    /// Parsed `http.static_headers`.
    static_headers: HeaderMap,
}

impl Endpoint {
    fn new(config: &ProxyConfig, client: &reqwest::Client) -> Option<Arc<Self>> {
        let url = match reqwest::Url::parse(&config.endpoint) {
            Ok(url) => url,
            Err(e) => {
                // Config::validate refuses this; a hand-built config logs it.
                tracing::error!(endpoint = config.endpoint, error = %e, "proxy endpoint unusable");
                return None;
            }
        };
        let mut static_headers = HeaderMap::new();
        for (k, v) in &config.http.static_headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                static_headers.insert(k, v);
            }
        }
        Some(Arc::new(Self {
            url,
            client: client.clone(),
            slots: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            http_headers: config
                .http_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            emulated_headers: config
                .emulated_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            static_headers,
            config: config.clone(),
        }))
    }

    /// Whether requests carry the connection's meta.
    pub fn includes_meta(&self) -> bool {
        self.config.include_connection_meta
    }

    /// The headers of one request: static ones, then the client's emulated ones,
    /// then the connection request's (each later source wins), as Centrifugo does.
    fn headers(&self, conn_headers: &[(HeaderName, HeaderValue)], ctx: &ProxyContext) -> HeaderMap {
        let mut out = self.static_headers.clone();
        for (k, v) in &ctx.emulated_headers {
            let lower = k.to_ascii_lowercase();
            if self.emulated_headers.contains(&lower) {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(lower.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    out.insert(k, v);
                }
            }
        }
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for (k, v) in conn_headers {
            if self.http_headers.iter().any(|h| h == k.as_str()) {
                // A repeated header (two Cookie lines) keeps every value.
                if replaced.contains(&k) {
                    out.append(k.clone(), v.clone());
                } else {
                    out.insert(k.clone(), v.clone());
                    replaced.push(k);
                }
            }
        }
        out.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        out
    }

    /// POSTs `body` and decodes the answer.
    ///
    /// # Errors
    /// [`ProxyError`] for a request that cannot be encoded, a timeout, a failed
    /// request, a status other than 200, an answer over `max_response_size` or one
    /// that does not decode.
    pub async fn call<Req: Serialize, Res: DeserializeOwned>(
        &self,
        body: &Req,
        conn_headers: &[(HeaderName, HeaderValue)],
        ctx: &ProxyContext,
    ) -> Result<wire::Response<Res>, ProxyError> {
        let body = serde_json::to_vec(body).map_err(ProxyError::Encode)?;
        let headers = self.headers(conn_headers, ctx);
        let timeout = self.config.timeout;
        let bytes = tokio::time::timeout(timeout, self.post(body, headers))
            .await
            .map_err(|_| ProxyError::Timeout(timeout))??;
        serde_json::from_slice(&bytes).map_err(ProxyError::InvalidJson)
    }

    async fn post(&self, body: Vec<u8>, headers: HeaderMap) -> Result<Bytes, ProxyError> {
        // The semaphore is never closed; the wait is bounded by the caller's timeout.
        let _slot = self.slots.acquire().await;
        let mut resp = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(ProxyError::Request)?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(ProxyError::Status(resp.status().as_u16()));
        }
        let max = self.config.max_response_size;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(ProxyError::TooLarge(max));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(ProxyError::Request)? {
            if buf.len() + chunk.len() > max {
                return Err(ProxyError::TooLarge(max));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// What the client gets for a failed call: the configured transform of its
    /// HTTP status, or error 100 (temporary, so the SDKs retry with backoff).
    pub fn rejection_for(&self, e: &ProxyError) -> Rejection {
        if let ProxyError::Status(status) = e {
            for t in &self.config.http.status_to_code_transforms {
                if t.status_code != *status {
                    continue;
                }
                if t.to_error.code > 0 {
                    return Rejection::Error(tidings_protocol::Error {
                        code: t.to_error.code,
                        message: t.to_error.message.clone(),
                        temporary: t.to_error.temporary,
                    });
                }
                if t.to_disconnect.code > 0 {
                    return Rejection::Disconnect(Disconnect::new(
                        t.to_disconnect.code,
                        t.to_disconnect.reason.clone(),
                    ));
                }
            }
        }
        codes::ERROR_INTERNAL.into()
    }
}

/// The `error` or `disconnect` of an answer, when it has one.
pub fn answered_rejection<T>(resp: &wire::Response<T>) -> Option<Rejection> {
    if let Some(d) = &resp.disconnect {
        return Some(Rejection::Disconnect(Disconnect::new(
            d.code,
            d.reason.clone(),
        )));
    }
    resp.error.as_ref().map(|e| {
        Rejection::Error(tidings_protocol::Error {
            code: e.code,
            message: e.message.clone(),
            temporary: e.temporary,
        })
    })
}

/// The proxies of one node, built once from its configuration.
#[derive(Default)]
pub struct Proxies {
    pub connect: Option<Arc<Endpoint>>,
    pub refresh: Option<Arc<Endpoint>>,
    /// By proxy name (`default` for the unnamed one), for each channel event.
    pub subscribe: HashMap<String, Arc<Endpoint>>,
    pub publish: HashMap<String, Arc<Endpoint>>,
    pub sub_refresh: HashMap<String, Arc<Endpoint>>,
    pub rpc: HashMap<String, Arc<Endpoint>>,
    /// Every `http_headers` name of every proxy, lower-case: what transports keep
    /// of a client's request.
    header_names: Vec<String>,
}

/// The key of a `*_proxy_name` option in [`Proxies`]' maps.
pub fn proxy_key(name: &str) -> &str {
    if name.is_empty() {
        DEFAULT_PROXY_NAME
    } else {
        name
    }
}

impl Proxies {
    /// The endpoints the configuration uses. Endpoints are only built where
    /// something refers to them, so an unused `proxies` entry costs nothing.
    pub fn from_config(config: &Config) -> Self {
        let client = match reqwest::Client::builder()
            // Keep-alive to the backend: one pool for every endpoint.
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // The backend is the application's own; an HTTP(S)_PROXY meant for
            // the outside world must not reroute it.
            .no_proxy()
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the proxy HTTP client: proxies are off");
                return Self::default();
            }
        };
        let named: HashMap<&str, &ProxyConfig> = config
            .proxies
            .iter()
            .map(|p| (p.name.as_str(), &p.proxy))
            .collect();
        let mut out = Self::default();
        let cp = &config.client.proxy;
        if cp.connect.enabled {
            out.connect = Endpoint::new(&cp.connect.proxy, &client);
        }
        if cp.refresh.enabled {
            out.refresh = Endpoint::new(&cp.refresh.proxy, &client);
        }
        let pick = |name: &str, default: &ProxyConfig| -> Option<Arc<Endpoint>> {
            let key = proxy_key(name);
            if key == DEFAULT_PROXY_NAME {
                Endpoint::new(default, &client)
            } else {
                named.get(key).and_then(|p| Endpoint::new(p, &client))
            }
        };
        let chp = &config.channel.proxy;
        let all = std::iter::once(&config.channel.without_namespace)
            .chain(config.channel.namespaces.iter().map(|n| &n.options));
        for o in all {
            if o.subscribe_proxy_enabled {
                let key = proxy_key(&o.subscribe_proxy_name).to_string();
                if let (false, Some(e)) = (
                    out.subscribe.contains_key(&key),
                    pick(&o.subscribe_proxy_name, &chp.subscribe),
                ) {
                    out.subscribe.insert(key, e);
                }
            }
            if o.publish_proxy_enabled {
                let key = proxy_key(&o.publish_proxy_name).to_string();
                if let (false, Some(e)) = (
                    out.publish.contains_key(&key),
                    pick(&o.publish_proxy_name, &chp.publish),
                ) {
                    out.publish.insert(key, e);
                }
            }
            if o.sub_refresh_proxy_enabled {
                let key = proxy_key(&o.sub_refresh_proxy_name).to_string();
                if let (false, Some(e)) = (
                    out.sub_refresh.contains_key(&key),
                    pick(&o.sub_refresh_proxy_name, &chp.sub_refresh),
                ) {
                    out.sub_refresh.insert(key, e);
                }
            }
        }
        let rpc = &config.rpc;
        let rpc_all = std::iter::once(&rpc.without_namespace)
            .chain(rpc.namespaces.iter().map(|n| &n.options));
        for o in rpc_all {
            if o.proxy_enabled {
                let key = proxy_key(&o.proxy_name).to_string();
                if let (false, Some(e)) =
                    (out.rpc.contains_key(&key), pick(&o.proxy_name, &rpc.proxy))
                {
                    out.rpc.insert(key, e);
                }
            }
        }
        let mut names: Vec<String> = Vec::new();
        let endpoints = out
            .connect
            .iter()
            .chain(out.refresh.iter())
            .chain(out.subscribe.values())
            .chain(out.publish.values())
            .chain(out.sub_refresh.values())
            .chain(out.rpc.values());
        for e in endpoints {
            for h in &e.http_headers {
                if !names.contains(h) {
                    names.push(h.clone());
                }
            }
        }
        out.header_names = names;
        out
    }

    /// The headers of a client's connection request that some proxy forwards, or
    /// `None` when no proxy forwards any (nothing is kept then).
    pub fn keep_headers(&self, headers: &HeaderMap) -> Option<RequestHeaders> {
        if self.header_names.is_empty() {
            return None;
        }
        let kept: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(k, v)| {
                v.len() <= MAX_KEPT_HEADER_VALUE
                    && self.header_names.iter().any(|h| h == k.as_str())
            })
            .take(MAX_KEPT_HEADERS)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (!kept.is_empty()).then(|| kept.into_boxed_slice())
    }

    /// Whether any RPC namespace sends its calls to a proxy.
    pub fn has_rpc(&self) -> bool {
        !self.rpc.is_empty()
    }
}
