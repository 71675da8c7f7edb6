//! `admin`: the admin web UI, with Centrifugo v6's keys.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Serve the admin web UI and its endpoints (on the internal port when there
    /// is one). Default `false`.
    pub enabled: bool,
    /// What an operator types to log in. Required unless `insecure`. Default: none.
    pub password: String,
    /// Signs the session token a login returns (HMAC-SHA256). Required unless
    /// `insecure`. Default: none.
    pub secret: String,
    /// No login: every request to the admin endpoints is allowed (development, or
    /// behind a firewall). Default `false`.
    pub insecure: bool,
    /// Path the UI is served under; `""` is the root (`/`). Default `""`.
    pub handler_prefix: String,
}

impl AdminConfig {
    /// The prefix without a trailing `/` (so `""` for the root).
    pub fn prefix(&self) -> &str {
        self.handler_prefix.trim_end_matches('/')
    }
}
