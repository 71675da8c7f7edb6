//! `channel.*`: channel names, and the options of channels without namespace and of
//! each named namespace ([`ChannelOptions`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Config;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelConfig {
    /// The unnamed subscribe, publish and sub_refresh proxies.
    pub proxy: super::ChannelProxyConfig,
    /// Longest accepted channel name, in bytes. Default `255`.
    pub max_length: usize,
    /// Separates a namespace from the rest of a channel name. Default `:`.
    pub namespace_boundary: String,
    /// Starts the user list of a user-limited channel. Default `#`.
    pub user_boundary: String,
    /// Separates users in a user-limited channel. Default `,`.
    pub user_separator: String,
    /// Options of channels whose name has no namespace.
    pub without_namespace: ChannelOptions,
    /// Named namespaces and their options.
    pub namespaces: Vec<Namespace>,
    /// How long a channel's stream position (epoch, offset) outlives its last
    /// publication. Default `720h` (30 days).
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            proxy: Default::default(),
            max_length: 255,
            namespace_boundary: ":".into(),
            user_boundary: "#".into(),
            user_separator: ",".into(),
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            history_meta_ttl: Duration::from_secs(720 * 3600),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(flatten)]
    pub options: ChannelOptions,
}

/// Per-namespace channel behaviour. Every option defaults to off / zero, as in Centrifugo.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelOptions {
    /// Keep presence (who is subscribed) for channels here.
    pub presence: bool,
    /// Publish join/leave messages; subscribers that ask for them (and may read
    /// presence) receive them.
    pub join_leave: bool,
    /// Send join/leave pushes to every subscriber, asked or not.
    pub force_push_join_leave: bool,
    /// Publications kept per channel; 0 keeps none.
    pub history_size: usize,
    /// How long publications are kept; needed with `history_size`.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Every subscription is positioned (stream position tracked).
    pub force_positioning: bool,
    /// Clients may ask for positioning.
    pub allow_positioning: bool,
    /// Every subscription is recoverable.
    pub force_recovery: bool,
    /// Clients may ask for recovery.
    pub allow_recovery: bool,
    /// Authenticated (non-anonymous) clients may subscribe without a subscription token.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe without a subscription token.
    pub allow_subscribe_for_anonymous: bool,
    /// Subscribers may publish.
    pub allow_publish_for_subscriber: bool,
    /// Authenticated clients may publish, subscribed or not.
    pub allow_publish_for_client: bool,
    /// Anonymous clients may publish.
    pub allow_publish_for_anonymous: bool,
    /// Subscribers may query presence.
    pub allow_presence_for_subscriber: bool,
    /// Authenticated clients may query presence.
    pub allow_presence_for_client: bool,
    /// Anonymous clients may query presence.
    pub allow_presence_for_anonymous: bool,
    /// Subscribers may query history.
    pub allow_history_for_subscriber: bool,
    /// Authenticated clients may query history.
    pub allow_history_for_client: bool,
    /// Anonymous clients may query history.
    pub allow_history_for_anonymous: bool,
    /// Channels with `#` admit only the users listed after it.
    pub allow_user_limited_channels: bool,
    /// Subscribes without a token go to the subscribe proxy, which alone decides.
    pub subscribe_proxy_enabled: bool,
    /// The subscribe proxy: a name from `proxies`, or empty (or `default`) for
    /// `channel.proxy.subscribe`.
    pub subscribe_proxy_name: String,
    /// Client publications go to the publish proxy, which alone decides and may
    /// rewrite them.
    pub publish_proxy_enabled: bool,
    /// The publish proxy, named as above.
    pub publish_proxy_name: String,
    /// Subscriptions that expire are extended by the sub_refresh proxy (server-side)
    /// instead of the client's `sub_refresh`.
    pub sub_refresh_proxy_enabled: bool,
    /// The sub_refresh proxy, named as above.
    pub sub_refresh_proxy_name: String,
    /// Subscribers may send a publication tags filter (`tf`); without this option
    /// a subscribe that carries one is refused with 107.
    pub allow_tags_filter: bool,
    /// Delta encodings subscribers may ask for: `["fossil"]` or empty.
    pub allowed_delta_types: Vec<String>,
    /// Every publication in the namespace is marked for delta delivery, as the
    /// server API's per-publish `delta` does for one.
    pub delta_publish: bool,
    /// `stream` (empty means the same) or `cache`: a recovery gives only the
    /// latest publication.
    pub force_recovery_mode: String,
    /// In cache mode, every subscription recovers (the latest publication comes
    /// at once), whether the client asked or not. Needs `force_recovery` and
    /// `force_recovery_mode: cache`.
    pub auto_cache_recover: bool,
    /// How long a stream outlives its last publication here; `0` (the default)
    /// takes `channel.history_meta_ttl`.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// A regular expression the part of a channel name after the namespace must
    /// match (107 otherwise); empty for none. Checked for what clients ask
    /// (subscribe, publish, presence, history), not for the server API or
    /// server-side subscriptions, as in Centrifugo.
    pub channel_regex: String,
    /// `channel_regex` compiled on first use.
    #[serde(skip)]
    pub compiled_regex: RegexCache,
}

/// A compiled `channel_regex`, made on first use (`None` when the option is empty
/// or invalid; validation refuses an invalid one). Not configuration: it is
/// neither read nor written.
#[derive(Debug, Clone, Default)]
pub struct RegexCache(std::sync::OnceLock<Option<regex::Regex>>);

impl ChannelOptions {
    /// The compiled `channel_regex`, `None` when there is none.
    pub fn channel_regex(&self) -> Option<&regex::Regex> {
        self.compiled_regex
            .0
            .get_or_init(|| {
                (!self.channel_regex.is_empty())
                    .then(|| regex::Regex::new(&self.channel_regex).ok())
                    .flatten()
            })
            .as_ref()
    }

    /// Whether subscribers may ask for fossil deltas.
    pub fn allows_fossil_delta(&self) -> bool {
        self.allowed_delta_types.iter().any(|t| t == "fossil")
    }
}

impl Config {
    /// The namespace part of a channel name: before the first
    /// `channel.namespace_boundary`, after a leading `$`; empty for none.
    pub fn namespace_of<'a>(&self, channel: &'a str) -> &'a str {
        let unprefixed = channel.strip_prefix('$').unwrap_or(channel);
        unprefixed
            .split_once(self.channel.namespace_boundary.as_str())
            .map_or("", |(ns, _)| ns)
    }

    /// How long `channel`'s stream outlives its last publication: its namespace's
    /// `history_meta_ttl`, or `channel.history_meta_ttl`.
    pub fn history_meta_ttl_of(&self, channel: &str) -> Duration {
        self.namespace(self.namespace_of(channel))
            .map(|o| o.history_meta_ttl)
            .filter(|ttl| !ttl.is_zero())
            .unwrap_or(self.channel.history_meta_ttl)
    }

    /// The options of a namespace, or `None` when it is not configured.
    pub fn namespace(&self, name: &str) -> Option<&ChannelOptions> {
        if name.is_empty() {
            return Some(&self.channel.without_namespace);
        }
        self.channel
            .namespaces
            .iter()
            .find(|ns| ns.name == name)
            .map(|ns| &ns.options)
    }
}
