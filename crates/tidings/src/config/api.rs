//! `http_api`: the Centrifugo-compatible server HTTP API.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApiConfig {
    /// Key required in `X-API-Key` or `Authorization: apikey`. Default: none.
    pub key: String,
    /// Serve the API without a key (development only). Default `false`.
    pub insecure: bool,
    /// Path prefix of the API. Default `/api`.
    pub handler_prefix: String,
    /// Largest request body; larger ones get HTTP 413. Default `2097152` (2 MiB).
    pub max_request_body_size: usize,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        Self {
            key: String::new(),
            insecure: false,
            handler_prefix: "/api".into(),
            max_request_body_size: 2 * 1024 * 1024,
        }
    }
}
