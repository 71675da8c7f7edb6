//! The one NATS connection a node's broker and presence manager share, and the
//! helpers both use on it: the JetStream context, timed requests, KV buckets, and a
//! round trip that confirms everything sent before it.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::sync::watch;

use super::subjects::Subjects;
use super::ENGINE;
use crate::broker::EngineError;
use crate::config::NatsEngineConfig;

/// One NATS connection (kept up by async-nats, which reconnects and resubscribes by
/// itself) shared by [`super::NatsBroker`] and the NATS presence manager.
pub struct NatsConnection {
    pub(crate) config: NatsEngineConfig,
    pub(crate) subjects: Subjects,
    pub(super) client: OnceLock<async_nats::Client>,
    js: OnceLock<jetstream::Context>,
    /// Bumped when publications may have been missed: a reconnect (not the first
    /// connect) or a slow-consumer drop.
    pub(super) doubt: watch::Sender<u64>,
}

impl NatsConnection {
    /// Starts connecting in the background and returns at once; calls fail with a
    /// backend error until the connection is up. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// A message when the TLS settings cannot be used or there is no runtime.
    pub fn start(config: &NatsEngineConfig) -> Result<Arc<Self>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the NATS engine needs a Tokio runtime".to_string())?;
        let conn = Arc::new(Self {
            config: config.clone(),
            subjects: Subjects::new(&config.prefix),
            client: OnceLock::new(),
            js: OnceLock::new(),
            doubt: watch::channel(0).0,
        });
        let mut options = async_nats::ConnectOptions::new()
            .name("tidings")
            .connection_timeout(config.dial_timeout)
            .request_timeout(Some(config.request_timeout))
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Quick retries: nodes must be back within seconds of the server.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            });
        if config.tls.enabled || config.url.starts_with("tls://") {
            options = options.require_tls(true);
            if !config.tls.server_ca_pem.is_empty() || !config.tls.cert_pem.is_empty() {
                options = options.tls_client_config(tls_client_config(config)?);
            }
        }
        let weak = Arc::downgrade(&conn);
        let seen_connect = Arc::new(std::sync::atomic::AtomicBool::new(false));
        options = options.event_callback(move |event| {
            let weak = weak.clone();
            let seen_connect = seen_connect.clone();
            async move {
                let Some(conn) = weak.upgrade() else { return };
                match event {
                    async_nats::Event::Connected => {
                        if seen_connect.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            tracing::info!("NATS connection is back");
                            conn.doubt.send_modify(|n| *n += 1);
                        }
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "NATS dropped messages for a slow subscription");
                        conn.doubt.send_modify(|n| *n += 1);
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
        let url = config.url.clone();
        let target = conn.clone();
        runtime.spawn(async move {
            match options.connect(url.as_str()).await {
                Ok(client) => {
                    let mut js = jetstream::new(client.clone());
                    js.set_timeout(target.config.request_timeout);
                    let _ = target.js.set(js);
                    let _ = target.client.set(client);
                }
                Err(e) => tracing::error!(error = %e, url, "NATS engine cannot connect"),
            }
        });
        Ok(conn)
    }

    /// The client, when connected right now.
    pub(crate) fn client(&self) -> Result<&async_nats::Client, EngineError> {
        let not_connected = EngineError::NotConnected { engine: ENGINE };
        let client = self.client.get().ok_or(not_connected.clone())?;
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(not_connected);
        }
        Ok(client)
    }

    /// The JetStream context, when connected right now.
    pub(crate) fn jetstream(&self) -> Result<&jetstream::Context, EngineError> {
        self.client()?;
        self.js
            .get()
            .ok_or(EngineError::NotConnected { engine: ENGINE })
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client().is_ok()
    }

    /// Waits for the first connection (for tests and startup checks).
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.client().is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Runs `fut` with the request timeout; `operation` names it in the error.
    pub(crate) async fn timed<T, E>(
        &self,
        operation: &'static str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, EngineError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match tokio::time::timeout(self.config.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EngineError::failed(ENGINE, operation, e)),
            Err(_) => Err(EngineError::Timeout {
                engine: ENGINE,
                operation,
            }),
        }
    }

    /// A KV bucket whose entries live `ttl`, created when missing.
    pub(crate) async fn key_value(
        &self,
        bucket: &str,
        ttl: Duration,
    ) -> Result<jetstream::kv::Store, EngineError> {
        let js = self.jetstream()?;
        if let Ok(store) = self.timed("KV lookup", js.get_key_value(bucket)).await {
            return Ok(store);
        }
        // The bucket's stream is made here rather than with `create_key_value`,
        // whose request the 2.9 servers of Debian and Ubuntu answer in a form
        // async-nats cannot read. Same layout as a KV bucket of history 1.
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            duplicate_window: ttl.min(Duration::from_secs(120)),
            storage: stream::StorageType::Memory,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        };
        if let Err(e) = self.timed("KV create", js.create_stream(config)).await {
            // Another node may have created it meanwhile.
            tracing::debug!(error = %e, bucket, "KV bucket create");
        }
        self.timed("KV lookup", js.get_key_value(bucket)).await
    }

    /// Returns once the server has handled everything this connection sent before
    /// (subscriptions included): a request nobody answers comes back "no
    /// responders" only after that.
    pub(super) async fn barrier(&self) -> Result<(), EngineError> {
        let client = self.client()?;
        let req = client.request(self.subjects.barrier(), Bytes::new());
        match tokio::time::timeout(
            self.config.write_timeout.max(self.config.request_timeout),
            req,
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Ok(Err(e)) => Err(EngineError::failed(ENGINE, "round trip", e)),
            Err(_) => Err(EngineError::Timeout {
                engine: ENGINE,
                operation: "round trip",
            }),
        }
    }
}

/// A KV bucket, looked up (or created) on first use and remembered until
/// [`KvBucket::forget`] (the server may have lost it).
pub(crate) struct KvBucket {
    name: String,
    /// How long its entries live, for a bucket created here.
    ttl: Duration,
    /// A plain mutex: only cloned out or replaced, never held across an await.
    store: Mutex<Option<jetstream::kv::Store>>,
}

impl KvBucket {
    pub(crate) fn new(name: String, ttl: Duration) -> Self {
        Self {
            name,
            ttl,
            store: Mutex::new(None),
        }
    }

    /// The bucket, looked up or created on `conn` when not known yet.
    pub(crate) async fn get(
        &self,
        conn: &NatsConnection,
    ) -> Result<jetstream::kv::Store, EngineError> {
        if let Some(s) = self.store.lock().clone() {
            return Ok(s);
        }
        let store = conn.key_value(&self.name, self.ttl).await?;
        *self.store.lock() = Some(store.clone());
        Ok(store)
    }

    /// Looks the bucket up again next time.
    pub(crate) fn forget(&self) {
        *self.store.lock() = None;
    }
}

fn tls_client_config(config: &NatsEngineConfig) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("engine.nats.tls: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    if config.tls.server_ca_pem.is_empty() {
        return Err("engine.nats.tls: server_ca_pem is required with a client certificate".into());
    }
    for cert in crate::tls::certificates("server_ca_pem", &config.tls.server_ca_pem)
        .map_err(|e| format!("engine.nats.tls: {e}"))?
    {
        roots
            .add(cert)
            .map_err(|e| format!("engine.nats.tls: {e}"))?;
    }
    let builder = builder.with_root_certificates(roots);
    if config.tls.cert_pem.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let certs = crate::tls::certificates("cert_pem", &config.tls.cert_pem)
        .map_err(|e| format!("engine.nats.tls: {e}"))?;
    let key = crate::tls::private_key("key_pem", &config.tls.key_pem)
        .map_err(|e| format!("engine.nats.tls: {e}"))?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("engine.nats.tls: {e}"))
}
