//! Connection tokens: HMAC-signed JWTs carrying Centrifugo's claims.
//!
//! The accepted algorithms are pinned to the HMAC family, so a token with `alg: none`
//! or an asymmetric algorithm is rejected before its claims are looked at.

use std::collections::HashMap;

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tidings_protocol::RawJson;

use crate::config::TokenConfig;

/// Claims of a connection token (Centrifugo names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectClaims {
    /// The user id; empty for an anonymous token.
    #[serde(default)]
    pub sub: String,
    /// Expiry (Unix seconds); the connection must refresh before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Connection info shown to others in presence, join/leave and publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RawJson>,
    /// Channels to subscribe the connection to on the server side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Server-side subscriptions with options, by channel.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub subs: HashMap<String, SubClaim>,
    /// Server-only metadata, never sent to other clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RawJson>,
    /// When set, the connection expires at this time instead of at `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
}

/// Options of one server-side subscription in a token's `subs` claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RawJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is past its `exp`: the client should fetch a new one (error 109).
    #[error("token expired")]
    Expired,
    /// Bad signature, algorithm, audience, issuer or format (disconnect 3500).
    #[error("invalid token")]
    Invalid,
}

/// Verifies a connection token.
///
/// # Errors
/// [`TokenError::Expired`] past `exp`; [`TokenError::Invalid`] for anything else wrong,
/// including no HMAC secret being configured.
pub fn verify_connect_token(
    config: &TokenConfig,
    token: &str,
) -> Result<ConnectClaims, TokenError> {
    if config.hmac_secret_key.is_empty() {
        return Err(TokenError::Invalid);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    if config.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&[config.audience.as_str()]);
        validation.required_spec_claims.insert("aud".into());
    }
    if !config.issuer.is_empty() {
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.required_spec_claims.insert("iss".into());
    }
    let key = DecodingKey::from_secret(config.hmac_secret_key.as_bytes());
    decode::<ConnectClaims>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })
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

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TokenConfig {
        TokenConfig {
            hmac_secret_key: "secret".into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_token_round_trips() {
        let claims = ConnectClaims {
            sub: "42".into(),
            exp: Some(unix_now() + 60),
            ..Default::default()
        };
        let token = sign_connect_token("secret", &claims).unwrap();
        assert_eq!(verify_connect_token(&cfg(), &token).unwrap().sub, "42");
    }

    #[test]
    fn expired_and_wrong_secret_are_told_apart() {
        let expired = ConnectClaims {
            sub: "42".into(),
            exp: Some(unix_now() - 10),
            ..Default::default()
        };
        let token = sign_connect_token("secret", &expired).unwrap();
        assert_eq!(
            verify_connect_token(&cfg(), &token).unwrap_err(),
            TokenError::Expired
        );
        let token = sign_connect_token("other", &ConnectClaims::default()).unwrap();
        assert_eq!(
            verify_connect_token(&cfg(), &token).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn alg_none_is_rejected() {
        // header {"alg":"none","typ":"JWT"}, payload {"sub":"42"}, empty signature
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiJ9.";
        assert_eq!(
            verify_connect_token(&cfg(), token).unwrap_err(),
            TokenError::Invalid
        );
    }
}
