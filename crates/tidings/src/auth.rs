//! Connection and subscription tokens: JWTs carrying Centrifugo's claims.
//!
//! Which algorithms a token may use is decided by the configuration, never by the
//! token. Each configured key enables its own family only (see [`keys`]), or, with a
//! JWKS endpoint, each fetched key enables the algorithms its type allows (see
//! [`jwks`]). A token's header picks one algorithm; when no configured key serves it
//! the token is refused before any signature check, so `alg: none`, an algorithm
//! from another family and an RSA public key used as an HMAC secret all fail the
//! same way. Nothing in a token's header (`jku`, `x5u`, `jwk`, `x5c`) is ever used:
//! keys come from the configuration or the configured endpoint only.
//!
//! The signature is checked before any claim is trusted; only then are `exp`, `nbf`,
//! `aud` and `iss` validated and the claims decoded.

pub mod jwks;
pub mod keys;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tidings_protocol::RawJson;

use crate::config::{ClientConfig, TokenConfig};
use jwks::JwksCache;
use keys::StaticKeys;

/// Longest token accepted, in bytes. Longer ones are refused unparsed.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Claims of a connection token (Centrifugo names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectClaims {
    /// The user id; empty for an anonymous token.
    #[serde(default)]
    pub sub: String,
    /// Expiry (Unix seconds); the connection must refresh before it.
    #[serde(
        default,
        deserialize_with = "unix_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub exp: Option<u64>,
    /// Issue time (Unix seconds); informational.
    #[serde(
        default,
        deserialize_with = "unix_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<u64>,
    /// Connection info shown to others in presence, join/leave and publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RawJson>,
    /// `info` as base64; used when `info` is absent. It must decode to JSON.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub b64info: String,
    /// Channels to subscribe the connection to on the server side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Server-side subscriptions with options, by channel.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubClaim>,
    /// Server-only metadata, never sent to other clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RawJson>,
    /// When set, the connection expires at this time instead of at `exp`; `0` means
    /// never (the token's `exp` is still checked).
    #[serde(
        default,
        deserialize_with = "unix_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub expire_at: Option<u64>,
    /// Only subscription tokens name a channel; a connection token that does is
    /// refused, so one kind of token cannot stand in for the other.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

/// Options of one server-side subscription in a token's `subs` claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RawJson>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub b64info: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub b64data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<SubscribeOverride>,
}

/// Claims of a subscription token (Centrifugo names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscribeClaims {
    /// Must equal the connection's user (empty for anonymous).
    #[serde(default)]
    pub sub: String,
    /// The channel this token admits to; required.
    #[serde(default)]
    pub channel: String,
    /// When set, only the connection with this client id may use the token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// Expiry of the token and, unless `expire_at` says otherwise, of the subscription.
    #[serde(
        default,
        deserialize_with = "unix_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub exp: Option<u64>,
    #[serde(
        default,
        deserialize_with = "unix_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<u64>,
    /// When the subscription expires; `0` means never.
    #[serde(
        default,
        deserialize_with = "unix_seconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub expire_at: Option<u64>,
    /// Channel info of this subscriber, shown in presence, join/leave and publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RawJson>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub b64info: String,
    /// Returned to the client in the subscribe result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub b64data: String,
    /// Per-subscriber overrides of namespace options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<SubscribeOverride>,
}

/// Namespace options a token may switch on or off for one subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<BoolValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_leave: Option<BoolValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_push_join_leave: Option<BoolValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_recovery: Option<BoolValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_positioning: Option<BoolValue>,
}

/// `{"value": true}`: a boolean that can also be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoolValue {
    pub value: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Validly signed but past its `exp`: the client should fetch a new token
    /// (error 109).
    #[error("token expired")]
    Expired,
    /// Anything else: format, algorithm, key, signature, `nbf`, `aud`, `iss` or
    /// claims (disconnect 3500 for connection tokens).
    #[error("invalid token")]
    Invalid,
}

/// A token configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A configured key does not parse.
    #[error("{key}: {reason}")]
    Key { key: String, reason: String },
    /// A regular expression does not compile.
    #[error("{key}: {reason}")]
    Regex { key: String, reason: String },
    /// The JWKS endpoint is not a usable URL.
    #[error("{key}: {reason}")]
    Jwks { key: String, reason: String },
    /// Options that exclude each other.
    #[error("{0}")]
    Conflict(String),
}

/// Verifies tokens against one [`TokenConfig`].
pub struct TokenVerifier {
    keys: KeySource,
    audience: Option<String>,
    issuer: Option<String>,
    audience_regex: Option<regex::Regex>,
    issuer_regex: Option<regex::Regex>,
    user_id_claim: Option<String>,
    /// `client.insecure_skip_token_signature_verify`: development only.
    skip_signature: bool,
}

enum KeySource {
    /// PEM keys and the HMAC secret from the configuration.
    Static(Box<StaticKeys>),
    /// Keys from the configured JWKS endpoint.
    Jwks(Arc<JwksCache>),
}

impl TokenVerifier {
    /// Builds a verifier, parsing every configured key. `prefix` names the config
    /// section in errors (`client.token`).
    ///
    /// # Errors
    /// [`AuthConfigError`] for a key that does not parse, a bad regular expression or
    /// JWKS URL, or options that exclude each other.
    pub fn new(
        config: &TokenConfig,
        prefix: &str,
        skip_signature: bool,
    ) -> Result<Self, AuthConfigError> {
        let regex = |name: &str, pattern: &str| -> Result<Option<regex::Regex>, AuthConfigError> {
            if pattern.is_empty() {
                return Ok(None);
            }
            regex::Regex::new(pattern)
                .map(Some)
                .map_err(|e| AuthConfigError::Regex {
                    key: format!("{prefix}.{name}"),
                    reason: e.to_string(),
                })
        };
        if !config.audience.is_empty() && !config.audience_regex.is_empty() {
            return Err(AuthConfigError::Conflict(format!(
                "{prefix}.audience and {prefix}.audience_regex exclude each other"
            )));
        }
        if !config.issuer.is_empty() && !config.issuer_regex.is_empty() {
            return Err(AuthConfigError::Conflict(format!(
                "{prefix}.issuer and {prefix}.issuer_regex exclude each other"
            )));
        }
        let claim = &config.user_id_claim;
        if !claim.is_empty() && !claim.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_') {
            return Err(AuthConfigError::Conflict(format!(
                "{prefix}.user_id_claim must match ^[a-zA-Z_]+$"
            )));
        }
        let keys = if config.jwks_public_endpoint.is_empty() {
            KeySource::Static(Box::new(StaticKeys::from_config(config, prefix)?))
        } else {
            KeySource::Jwks(Arc::new(
                JwksCache::new(&config.jwks_public_endpoint).map_err(|reason| {
                    AuthConfigError::Jwks {
                        key: format!("{prefix}.jwks_public_endpoint"),
                        reason,
                    }
                })?,
            ))
        };
        Ok(Self {
            keys,
            audience: Some(config.audience.clone()).filter(|s| !s.is_empty()),
            issuer: Some(config.issuer.clone()).filter(|s| !s.is_empty()),
            audience_regex: regex("audience_regex", &config.audience_regex)?,
            issuer_regex: regex("issuer_regex", &config.issuer_regex)?,
            user_id_claim: Some(claim.clone()).filter(|s| !s.is_empty()),
            skip_signature,
        })
    }

    /// The algorithms static keys accept, for logs (empty with JWKS: they depend on
    /// the fetched keys).
    pub fn static_algorithms(&self) -> Vec<Algorithm> {
        match &self.keys {
            KeySource::Static(keys) => keys.algorithms(),
            KeySource::Jwks(_) => Vec::new(),
        }
    }

    /// The JWKS cache, when keys come from an endpoint.
    pub fn jwks(&self) -> Option<&Arc<JwksCache>> {
        match &self.keys {
            KeySource::Jwks(cache) => Some(cache),
            KeySource::Static(_) => None,
        }
    }

    /// Verifies a connection token and returns its claims, with `sub` set to the
    /// user id (from `user_id_claim` when configured) and `info` decoded from
    /// `b64info` when only that was given.
    ///
    /// # Errors
    /// [`TokenError::Expired`] for a validly signed token past `exp`;
    /// [`TokenError::Invalid`] for anything else wrong, including a `channel` claim.
    pub async fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let payload = self.verified_payload(token).await?;
        let mut claims: ConnectClaims =
            serde_json::from_slice(&payload).map_err(|e| invalid(&format!("claims: {e}")))?;
        if !claims.channel.is_empty() {
            return Err(invalid("a connection token has a channel claim"));
        }
        if claims.info.is_none() && !claims.b64info.is_empty() {
            claims.info = Some(b64_json(&claims.b64info)?);
        }
        for sub in claims.subs.values_mut() {
            if sub.info.is_none() && !sub.b64info.is_empty() {
                sub.info = Some(b64_json(&sub.b64info)?);
            }
            if sub.data.is_none() && !sub.b64data.is_empty() {
                sub.data = Some(b64_json(&sub.b64data)?);
            }
        }
        if let Some(user) = self.custom_user(&payload)? {
            claims.sub = user;
        }
        Ok(claims)
    }

    /// Verifies a subscription token; like [`Self::verify_connect`], and the
    /// `channel` claim is required.
    ///
    /// # Errors
    /// As [`Self::verify_connect`]; a missing `channel` claim is invalid.
    pub async fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        let payload = self.verified_payload(token).await?;
        let mut claims: SubscribeClaims =
            serde_json::from_slice(&payload).map_err(|e| invalid(&format!("claims: {e}")))?;
        if claims.channel.is_empty() {
            return Err(invalid("a subscription token without a channel claim"));
        }
        if claims.info.is_none() && !claims.b64info.is_empty() {
            claims.info = Some(b64_json(&claims.b64info)?);
        }
        if claims.data.is_none() && !claims.b64data.is_empty() {
            claims.data = Some(b64_json(&claims.b64data)?);
        }
        if let Some(user) = self.custom_user(&payload)? {
            claims.sub = user;
        }
        Ok(claims)
    }

    /// Checks format, algorithm, key, signature, then `exp`, `nbf`, `aud` and `iss`,
    /// and returns the decoded JSON payload.
    async fn verified_payload(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        let header = pre_parse(token)?;
        let alg = header.alg;
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            // Checked below against the regex, or not at all.
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        let key: DecodingKey = if self.skip_signature {
            validation.insecure_disable_signature_validation();
            DecodingKey::from_secret(b"")
        } else {
            match &self.keys {
                KeySource::Static(keys) => keys
                    .key_for(alg)
                    .cloned()
                    .ok_or_else(|| invalid(&format!("algorithm {alg:?} is not configured")))?,
                KeySource::Jwks(cache) => {
                    let kid = header
                        .kid
                        .as_deref()
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| invalid("no kid in the header"))?;
                    let jwk = cache
                        .key(kid)
                        .await
                        .ok_or_else(|| invalid("no JWKS key with this kid"))?;
                    if !jwk.algorithms.contains(&alg) {
                        return Err(invalid(&format!("algorithm {alg:?} does not fit the key")));
                    }
                    jwk.key.clone()
                }
            }
        };
        jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => invalid(&e.to_string()),
            },
        )?;
        // The signature covers these bytes; decode them once more for our own types.
        let payload = token
            .split('.')
            .nth(1)
            .ok_or_else(|| invalid("no payload"))?;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| invalid("payload is not base64url"))?;
        if exp_before_1970(&payload) {
            return Err(TokenError::Expired);
        }
        if self.audience_regex.is_some() || self.issuer_regex.is_some() {
            #[derive(Deserialize)]
            struct Registered {
                #[serde(default)]
                aud: Option<OneOrMany>,
                #[serde(default)]
                iss: Option<String>,
            }
            let reg: Registered =
                serde_json::from_slice(&payload).map_err(|_| invalid("aud or iss malformed"))?;
            if let Some(re) = &self.audience_regex {
                let ok = reg
                    .aud
                    .is_some_and(|aud| aud.iter().any(|a| re.is_match(a)));
                if !ok {
                    return Err(invalid("aud does not match audience_regex"));
                }
            }
            if let Some(re) = &self.issuer_regex {
                if !reg.iss.is_some_and(|iss| re.is_match(&iss)) {
                    return Err(invalid("iss does not match issuer_regex"));
                }
            }
        }
        Ok(payload)
    }

    /// The user id from `user_id_claim`, when one is configured. Strings and numbers
    /// are accepted; anything else (or nothing) is the anonymous user.
    fn custom_user(&self, payload: &[u8]) -> Result<Option<String>, TokenError> {
        let Some(claim) = &self.user_id_claim else {
            return Ok(None);
        };
        let map: HashMap<String, serde_json::Value> =
            serde_json::from_slice(payload).map_err(|_| invalid("claims are not an object"))?;
        Ok(Some(match map.get(claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }))
    }
}

/// Reads a token's header before anything is verified: the length bound, the three
/// parts, and a header naming an algorithm this crate knows. `alg: none` and unknown
/// algorithms end here. The header only says which configured key to try; nothing in
/// it is trusted.
///
/// # Errors
/// [`TokenError::Invalid`] for anything that is not a well-formed JWT header.
pub fn pre_parse(token: &str) -> Result<jsonwebtoken::Header, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid("token too long"));
    }
    jsonwebtoken::decode_header(token).map_err(|e| invalid(&format!("header: {e}")))
}

/// `aud` may be one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let slice = match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v.as_slice(),
        };
        slice.iter().map(String::as_str)
    }
}

/// Logs why a token was refused (at debug level: clients control how often this
/// happens) and returns [`TokenError::Invalid`].
fn invalid(reason: &str) -> TokenError {
    tracing::debug!(reason, "token refused");
    TokenError::Invalid
}

/// Decodes a `b64info`/`b64data` claim. The JSON protocol carries these values as
/// raw JSON, so the bytes must be JSON.
fn b64_json(value: &str) -> Result<RawJson, TokenError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| invalid("b64 claim is not base64"))?;
    RawJson::parse(bytes).map_err(|_| invalid("b64 claim does not decode to JSON"))
}

/// The verifiers of one node: connection tokens, and subscription tokens when they
/// have their own settings.
pub struct Auth {
    connection: TokenVerifier,
    /// `None`: subscription tokens use the connection settings, as in Centrifugo.
    subscription: Option<TokenVerifier>,
}

impl Auth {
    /// Builds the verifiers from `client.token` and `client.subscription_token`.
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the offending key.
    pub fn new(client: &ClientConfig) -> Result<Self, AuthConfigError> {
        let skip = client.insecure_skip_token_signature_verify;
        let connection = TokenVerifier::new(&client.token, "client.token", skip)?;
        let subscription = if client.subscription_token.enabled {
            Some(TokenVerifier::new(
                &client.subscription_token.token,
                "client.subscription_token",
                skip,
            )?)
        } else {
            None
        };
        Ok(Self {
            connection,
            subscription,
        })
    }

    /// Checks that the token settings in `client` can be used: every key parses,
    /// every regular expression compiles, the JWKS URL is usable and no two options
    /// exclude each other. Configuration is data and `Config::validate` builds no
    /// verifier, so whoever loads a configuration for a node calls this too: the
    /// binary does, so `serve` and `check-config` stop with the key's name.
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the offending key, as [`Auth::new`].
    pub fn check(client: &ClientConfig) -> Result<(), AuthConfigError> {
        Self::new(client).map(drop)
    }

    /// A verifier that accepts nothing (no keys at all).
    pub fn reject_all() -> Self {
        Self {
            connection: TokenVerifier {
                keys: KeySource::Static(Box::default()),
                audience: None,
                issuer: None,
                audience_regex: None,
                issuer_regex: None,
                user_id_claim: None,
                skip_signature: false,
            },
            subscription: None,
        }
    }

    pub fn connection(&self) -> &TokenVerifier {
        &self.connection
    }

    pub fn subscription(&self) -> &TokenVerifier {
        self.subscription.as_ref().unwrap_or(&self.connection)
    }
}

/// Signs a connection token with HS256 (used by `tidings token` and tests).
///
/// # Errors
/// Returns the encoder's error (it does not fail for HMAC keys in practice).
pub fn sign_connect_token(
    secret: &str,
    claims: &ConnectClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Signs a subscription token with HS256.
///
/// # Errors
/// Returns the encoder's error (it does not fail for HMAC keys in practice).
pub fn sign_subscribe_token(
    secret: &str,
    claims: &SubscribeClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Whether the payload's `exp` is a number below zero. jsonwebtoken reads `exp`
/// as an unsigned number and passes over one it cannot read, so without this a
/// validly signed token with `"exp": -1` would be refused as malformed (3500)
/// rather than as expired (109), which `exp: 0` already is. A time before 1970 is
/// as expired as a time can be.
fn exp_before_1970(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Exp {
        #[serde(default)]
        exp: Option<serde_json::Number>,
    }
    serde_json::from_slice::<Exp>(payload)
        .ok()
        .and_then(|claims| claims.exp)
        .and_then(|exp| exp.as_f64())
        .is_some_and(|exp| exp < 0.0)
}

/// Reads a NumericDate claim (`exp`, `iat`, `expire_at`): seconds since the
/// epoch, which RFC 7519 lets a token write with a fraction (`1700000000.5`), as
/// some JWT libraries do; the fraction is dropped. A negative number is refused
/// (`exp` below zero is caught as expired before the claims are read).
fn unix_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(whole) = number.as_u64() {
        return Ok(Some(whole));
    }
    match number.as_f64() {
        // `u64::MAX as f64` rounds up to 2^64, which is out of range.
        Some(secs) if secs.is_finite() && secs >= 0.0 && secs < u64::MAX as f64 => {
            Ok(Some(secs as u64))
        }
        _ => Err(D::Error::custom(
            "a time claim must be a non-negative number of seconds",
        )),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "a-test-secret-that-is-32-bytes-long";

    fn verifier(cfg: TokenConfig) -> TokenVerifier {
        TokenVerifier::new(&cfg, "client.token", false).unwrap()
    }

    fn hmac() -> TokenConfig {
        TokenConfig {
            hmac_secret_key: SECRET.into(),
            ..Default::default()
        }
    }

    fn hs(alg: Algorithm, claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn valid_token_round_trips_for_every_hmac_algorithm() {
        let v = verifier(hmac());
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = hs(
                alg,
                &json!({"sub": "42", "exp": unix_now() + 60}),
                SECRET.as_bytes(),
            );
            assert_eq!(v.verify_connect(&token).await.unwrap().sub, "42", "{alg:?}");
        }
    }

    #[tokio::test]
    async fn expired_and_wrong_secret_are_told_apart() {
        let v = verifier(hmac());
        let expired = hs(
            Algorithm::HS256,
            &json!({"sub": "42", "exp": unix_now() - 10}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            v.verify_connect(&expired).await.unwrap_err(),
            TokenError::Expired
        );
        // A forged token is invalid even when it is also expired: the signature is
        // checked first.
        let forged = hs(
            Algorithm::HS256,
            &json!({"sub": "42", "exp": unix_now() - 10}),
            b"other",
        );
        assert_eq!(
            v.verify_connect(&forged).await.unwrap_err(),
            TokenError::Invalid
        );
    }

    #[tokio::test]
    async fn exp_below_zero_is_expired_for_both_kinds_of_token() {
        let v = verifier(hmac());
        for exp in [json!(-1), json!(-1000), json!(-0.5), json!(0), json!(1)] {
            let connect = hs(
                Algorithm::HS256,
                &json!({"sub": "42", "exp": exp}),
                SECRET.as_bytes(),
            );
            assert_eq!(
                v.verify_connect(&connect).await.unwrap_err(),
                TokenError::Expired,
                "connection token with exp {exp}"
            );
            let subscribe = hs(
                Algorithm::HS256,
                &json!({"sub": "42", "channel": "$a", "exp": exp}),
                SECRET.as_bytes(),
            );
            assert_eq!(
                v.verify_subscribe(&subscribe).await.unwrap_err(),
                TokenError::Expired,
                "subscription token with exp {exp}"
            );
            // The signature still comes first.
            let forged = hs(
                Algorithm::HS256,
                &json!({"sub": "42", "exp": exp}),
                b"other",
            );
            assert_eq!(
                v.verify_connect(&forged).await.unwrap_err(),
                TokenError::Invalid
            );
        }
    }

    #[tokio::test]
    async fn time_claims_may_have_a_fraction() {
        let v = verifier(hmac());
        let exp = unix_now() as f64 + 60.5;
        let token = hs(
            Algorithm::HS256,
            &json!({"sub": "42", "exp": exp, "iat": 1.5}),
            SECRET.as_bytes(),
        );
        let claims = v.verify_connect(&token).await.unwrap();
        assert_eq!(claims.exp, Some(exp as u64));
        assert_eq!(claims.iat, Some(1));
        let negative_iat = hs(
            Algorithm::HS256,
            &json!({"sub": "42", "iat": -5}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            v.verify_connect(&negative_iat).await.unwrap_err(),
            TokenError::Invalid
        );
    }

    #[tokio::test]
    async fn alg_none_is_rejected() {
        let v = verifier(hmac());
        // header {"alg":"none","typ":"JWT"}, payload {"sub":"42"}, empty signature
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiJ9.";
        assert_eq!(
            v.verify_connect(token).await.unwrap_err(),
            TokenError::Invalid
        );
    }

    #[tokio::test]
    async fn nbf_in_the_future_and_wrong_aud_or_iss_are_invalid() {
        let v = verifier(TokenConfig {
            audience: "tidings".into(),
            issuer: "backend".into(),
            ..hmac()
        });
        let ok = json!({"sub": "1", "aud": "tidings", "iss": "backend"});
        let token = hs(Algorithm::HS256, &ok, SECRET.as_bytes());
        assert!(v.verify_connect(&token).await.is_ok());
        for bad in [
            json!({"sub": "1", "aud": "tidings", "iss": "backend", "nbf": unix_now() + 60}),
            json!({"sub": "1", "aud": "other", "iss": "backend"}),
            json!({"sub": "1", "iss": "backend"}),
            json!({"sub": "1", "aud": "tidings", "iss": "intruder"}),
            json!({"sub": "1", "aud": "tidings"}),
        ] {
            let token = hs(Algorithm::HS256, &bad, SECRET.as_bytes());
            assert_eq!(
                v.verify_connect(&token).await.unwrap_err(),
                TokenError::Invalid,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn regexes_check_aud_and_iss() {
        let v = verifier(TokenConfig {
            audience_regex: "^app-(web|ios)$".into(),
            issuer_regex: "^https://auth\\.example\\.com/".into(),
            ..hmac()
        });
        let good =
            json!({"sub": "1", "aud": ["x", "app-ios"], "iss": "https://auth.example.com/realm"});
        assert!(v
            .verify_connect(&hs(Algorithm::HS256, &good, SECRET.as_bytes()))
            .await
            .is_ok());
        let bad =
            json!({"sub": "1", "aud": "app-android", "iss": "https://auth.example.com/realm"});
        assert!(v
            .verify_connect(&hs(Algorithm::HS256, &bad, SECRET.as_bytes()))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn claim_types_and_b64info_are_checked() {
        let v = verifier(hmac());
        let numeric_sub = hs(Algorithm::HS256, &json!({"sub": 42}), SECRET.as_bytes());
        assert_eq!(
            v.verify_connect(&numeric_sub).await.unwrap_err(),
            TokenError::Invalid
        );
        let string_exp = hs(
            Algorithm::HS256,
            &json!({"sub": "1", "exp": "soon"}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            v.verify_connect(&string_exp).await.unwrap_err(),
            TokenError::Invalid
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(br#"{"name":"Ann"}"#);
        let token = hs(
            Algorithm::HS256,
            &json!({"sub": "1", "b64info": b64}),
            SECRET.as_bytes(),
        );
        let claims = v.verify_connect(&token).await.unwrap();
        assert_eq!(claims.info.unwrap().as_str(), r#"{"name":"Ann"}"#);
        let not_json = base64::engine::general_purpose::STANDARD.encode(b"\xff\x00");
        let token = hs(
            Algorithm::HS256,
            &json!({"sub": "1", "b64info": not_json}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            v.verify_connect(&token).await.unwrap_err(),
            TokenError::Invalid
        );
    }

    #[tokio::test]
    async fn connection_and_subscription_tokens_do_not_stand_in_for_each_other() {
        let v = verifier(hmac());
        let sub_token = hs(
            Algorithm::HS256,
            &json!({"sub": "1", "channel": "$x"}),
            SECRET.as_bytes(),
        );
        assert_eq!(
            v.verify_connect(&sub_token).await.unwrap_err(),
            TokenError::Invalid
        );
        let conn_token = hs(Algorithm::HS256, &json!({"sub": "1"}), SECRET.as_bytes());
        assert_eq!(
            v.verify_subscribe(&conn_token).await.unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(v.verify_subscribe(&sub_token).await.unwrap().channel, "$x");
    }

    #[tokio::test]
    async fn user_id_claim_replaces_sub() {
        let v = verifier(TokenConfig {
            user_id_claim: "user_id".into(),
            ..hmac()
        });
        let token = hs(
            Algorithm::HS256,
            &json!({"sub": "ignored", "user_id": 7}),
            SECRET.as_bytes(),
        );
        assert_eq!(v.verify_connect(&token).await.unwrap().sub, "7");
        assert!(TokenVerifier::new(
            &TokenConfig {
                user_id_claim: "a.b".into(),
                ..hmac()
            },
            "client.token",
            false
        )
        .is_err());
    }

    #[tokio::test]
    async fn no_keys_means_no_tokens() {
        let v = verifier(TokenConfig::default());
        let token = hs(Algorithm::HS256, &json!({"sub": "1"}), b"");
        assert_eq!(
            v.verify_connect(&token).await.unwrap_err(),
            TokenError::Invalid
        );
    }

    #[tokio::test]
    async fn oversized_and_garbage_tokens_are_invalid() {
        let v = verifier(hmac());
        for token in [
            "",
            ".",
            "..",
            "a.b.c",
            "e30.e30.",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(
                v.verify_connect(token).await.unwrap_err(),
                TokenError::Invalid
            );
        }
    }

    #[test]
    fn unusable_token_settings_are_refused_with_the_key_name() {
        let mut client = ClientConfig::default();
        client.token.ecdsa_public_key = "garbage".into();
        let err = Auth::check(&client).unwrap_err().to_string();
        assert!(err.contains("client.token.ecdsa_public_key"), "{err}");
        let mut client = ClientConfig::default();
        client.token.issuer = "a".into();
        client.token.issuer_regex = "a".into();
        assert!(Auth::check(&client).is_err());
        let mut client = ClientConfig::default();
        client.token.jwks_public_endpoint = "https://idp/{{realm}}/certs".into();
        assert!(Auth::check(&client).is_err());
        let mut client = ClientConfig::default();
        client.subscription_token.enabled = true;
        client.subscription_token.token.rsa_public_key = "not a key".into();
        let err = Auth::check(&client).unwrap_err().to_string();
        assert!(
            err.contains("client.subscription_token.rsa_public_key"),
            "{err}"
        );
        assert!(Auth::check(&ClientConfig::default()).is_ok());
    }
}
