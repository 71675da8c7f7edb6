//! `client.*`: what a client connection may do and how long it may take: allowed
//! origins, connection and subscription tokens, pings, queue and history bounds,
//! connection limits and the per-connection command budget.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    /// The connect and refresh proxies (see docs/proxy.md).
    pub proxy: super::ClientProxyConfig,
    /// Subscribe every authenticated user to a personal channel.
    pub subscribe_to_user_personal_channel: super::PersonalChannelConfig,
    /// The disconnect a unidirectional client gets for a connect error.
    pub connect_code_to_unidirectional_disconnect: super::ConnectCodeToDisconnect,
    /// Origins allowed to open browser connections; `*` and `*.example.com`-style
    /// wildcards work. Same-origin requests and requests without `Origin` are allowed.
    /// Default: none.
    pub allowed_origins: Vec<String>,
    /// How connection tokens are verified (and subscription tokens, unless
    /// `subscription_token.enabled`).
    pub token: TokenConfig,
    /// Separate keys for subscription tokens; used only when `enabled`.
    pub subscription_token: SubscriptionTokenConfig,
    /// Connect without a token as an anonymous user (user id `""`). Default `false`.
    pub allow_anonymous_connect_without_token: bool,
    /// Reject tokens whose `sub` is empty. Default `false`.
    pub disallow_anonymous_connection_tokens: bool,
    /// Development only: no token check and every channel permission granted.
    /// Default `false`.
    pub insecure: bool,
    /// Development only: token claims are read but signatures are not checked, for
    /// connection and subscription tokens alike. Default `false`.
    pub insecure_skip_token_signature_verify: bool,
    /// Grace after a connection's expiry for the client's `refresh` to arrive; past
    /// it the connection is closed with 3005. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// Grace after a subscription's expiry for the client's `sub_refresh`; past it
    /// the client is unsubscribed with 2501. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub expired_sub_close_delay: Duration,
    /// Interval between server pings. Default `25s`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long to wait for a pong after a ping. Default `8s`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Bytes a connection may have queued for writing before it is disconnected
    /// with 3008 "slow". Default `1048576`.
    pub queue_max_size: usize,
    /// Most publications a history call returns. Default `300`.
    pub history_max_publication_limit: usize,
    /// Most publications a recovery returns; past it the answer is `recovered: false`.
    /// Default `300`.
    pub recovery_max_publication_limit: usize,
    /// Most channels one connection may subscribe to. Default `128`; `0` = no limit.
    pub channel_limit: usize,
    /// How long a connection may stay open without sending `connect`. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub stale_close_delay: Duration,
    /// Most connections one user (non-empty user id) may hold on this node; the next
    /// `connect` is closed with 3504. Default `0` (no limit).
    pub user_connection_limit: usize,
    /// Most client connections this node holds at once; past it new ones get HTTP 503.
    /// Default `0` (no limit).
    pub connection_limit: usize,
    /// Most new client connections this node accepts per second (bursts of as many);
    /// past it new ones get HTTP 503. Default `0` (no limit).
    pub connection_rate_limit: u32,
    /// The per-connection command budget (a Tidings key; Centrifugo has no free
    /// equivalent).
    pub command_rate_limit: CommandRateLimitConfig,
    /// How often the node re-adds the presence entries of its live clients, so that
    /// the entries of a node that died expire by the engine's presence TTL (keep it
    /// well under that TTL). Default `27s`.
    #[serde(with = "humantime_serde")]
    pub presence_update_interval: Duration,
    /// How often the node compares each of its channels' last delivered position
    /// with the broker's stream top; subscribers of a channel that fell behind are
    /// told to resubscribe and recover (unsubscribe push 2500). Default `40s`.
    #[serde(with = "humantime_serde")]
    pub channel_position_check_delay: Duration,
}

/// A token bucket per connection: every command takes a token, tokens come back at
/// `rate` per second up to `burst`. A command without a token is answered with 111;
/// a connection that keeps going is closed with 3013.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommandRateLimitConfig {
    /// Apply the budget. Default `true`.
    pub enabled: bool,
    /// Tokens added per second. Default `100`.
    pub rate: u32,
    /// Size of the bucket: the longest burst a connection may send. Default `200`.
    pub burst: u32,
    /// Refused commands, counted since the bucket was last full, that close the
    /// connection with 3013. Default `50`; `0` never closes.
    pub disconnect_after: u32,
}

impl Default for CommandRateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rate: 100,
            burst: 200,
            disconnect_after: 50,
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            proxy: Default::default(),
            subscribe_to_user_personal_channel: Default::default(),
            connect_code_to_unidirectional_disconnect: Default::default(),
            allowed_origins: Vec::new(),
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
            insecure: false,
            insecure_skip_token_signature_verify: false,
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            queue_max_size: 1_048_576,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            channel_limit: 128,
            stale_close_delay: Duration::from_secs(10),
            user_connection_limit: 0,
            connection_limit: 0,
            connection_rate_limit: 0,
            command_rate_limit: CommandRateLimitConfig::default(),
            presence_update_interval: Duration::from_secs(27),
            channel_position_check_delay: Duration::from_secs(40),
        }
    }
}

/// Where token signing keys come from and which claims must match.
///
/// Each key enables only its own algorithms: the HMAC secret HS256/HS384/HS512, the
/// RSA key RS256/RS384/RS512, the ECDSA key ES256 or ES384 (after its curve), the
/// Ed25519 key EdDSA. With `jwks_public_endpoint` set, keys come from that endpoint
/// only and the static keys are not used. See docs/authentication.md.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenConfig {
    /// Secret for HS256/HS384/HS512 tokens. Default: none.
    pub hmac_secret_key: String,
    /// PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`) for RS256/RS384/RS512
    /// tokens. Default: none.
    pub rsa_public_key: String,
    /// PEM public key on P-256 (ES256) or P-384 (ES384). Default: none.
    pub ecdsa_public_key: String,
    /// PEM Ed25519 public key for EdDSA tokens. A Tidings addition: Centrifugo takes
    /// Ed25519 keys from JWKS only. Default: none.
    pub ed25519_public_key: String,
    /// URL of a JSON Web Key Set (RSA, EC P-256/P-384 and OKP Ed25519 keys), looked
    /// up by the token's `kid`. Default: none.
    pub jwks_public_endpoint: String,
    /// Expected `aud` claim, when set. Default: not checked.
    pub audience: String,
    /// Regular expression the `aud` claim must match, when set. Default: not checked.
    pub audience_regex: String,
    /// Expected `iss` claim, when set. Default: not checked.
    pub issuer: String,
    /// Regular expression the `iss` claim must match, when set. Default: not checked.
    pub issuer_regex: String,
    /// Claim holding the user id instead of `sub`. Default: `sub`.
    pub user_id_claim: String,
}

/// `client.subscription_token`: when `enabled`, subscription tokens are verified with
/// these settings and never with `client.token`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionTokenConfig {
    /// Use the settings below for subscription tokens. Default `false`: subscription
    /// tokens are verified like connection tokens.
    pub enabled: bool,
    #[serde(flatten)]
    pub token: TokenConfig,
}

#[cfg(test)]
mod tests {
    use crate::config::{tests::env, Config};

    #[test]
    fn subscription_token_section_loads_from_file_and_env() {
        let dir = std::env::temp_dir().join(format!("tidings-subtoken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            "client:\n  subscription_token:\n    enabled: true\n    hmac_secret_key: from-file\n    audience: subs\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&file),
            env(&[("TIDINGS_CLIENT_SUBSCRIPTION_TOKEN_ISSUER", "from-env")]),
        )
        .unwrap();
        let sub = &cfg.client.subscription_token;
        assert!(sub.enabled);
        assert_eq!(sub.token.hmac_secret_key, "from-file");
        assert_eq!(sub.token.audience, "subs");
        assert_eq!(sub.token.issuer, "from-env");
        assert!(cfg.unknown_keys.is_empty(), "{:?}", cfg.unknown_keys);
        std::fs::remove_dir_all(&dir).ok();
    }
}
