//! `rpc.*`: which client `rpc` calls go to a backend proxy, by RPC namespace (the
//! part of the method before `rpc.namespace_boundary`), with Centrifugo v6's keys.

use serde::{Deserialize, Serialize};

use super::ProxyConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcConfig {
    /// The unnamed RPC proxy (`proxy_name` `default`).
    pub proxy: ProxyConfig,
    /// Options of methods without a namespace.
    pub without_namespace: RpcOptions,
    /// Named RPC namespaces and their options.
    pub namespaces: Vec<RpcNamespace>,
    /// Separates an RPC namespace from the rest of a method. Default `:`.
    pub namespace_boundary: String,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig::default(),
            without_namespace: RpcOptions::default(),
            namespaces: Vec::new(),
            namespace_boundary: ":".into(),
        }
    }
}

/// What happens to the RPC calls of one namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcOptions {
    /// Send the calls to a proxy. Default `false`: they get 108 "not available".
    pub proxy_enabled: bool,
    /// Which proxy: a name from `proxies`, or empty (or `default`) for `rpc.proxy`.
    /// Default: `rpc.proxy`.
    pub proxy_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RpcNamespace {
    pub name: String,
    #[serde(flatten)]
    pub options: RpcOptions,
}

impl RpcConfig {
    /// The options for a method, or `None` when its namespace is not configured.
    pub fn options_for(&self, method: &str) -> Option<&RpcOptions> {
        let ns = method
            .split_once(self.namespace_boundary.as_str())
            .map_or("", |(ns, _)| ns);
        if ns.is_empty() {
            return Some(&self.without_namespace);
        }
        self.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| &n.options)
    }
}
