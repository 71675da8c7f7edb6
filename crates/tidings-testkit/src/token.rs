//! HS256 connection tokens, signed the way an application backend signs them
//! with `client.token.hmac_secret_key`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Seconds since the Unix epoch, for `exp` claims.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs a connection token for user `sub`, expiring at the Unix time `exp`
/// (no `exp` claim when `None`).
///
/// # Errors
///
/// Fails only if the claims cannot be encoded, which does not happen for
/// these inputs.
pub fn hs256_token(secret: &str, sub: &str, exp: Option<u64>) -> anyhow::Result<String> {
    let mut claims = json!({ "sub": sub });
    if let Some(exp) = exp {
        claims["exp"] = json!(exp);
    }
    hs256_token_with_claims(secret, &claims)
}

/// Signs arbitrary claims (for `info`, `channels`, odd `exp` values and the like).
///
/// # Errors
///
/// Fails if the claims cannot be serialised.
pub fn hs256_token_with_claims(secret: &str, claims: &Value) -> anyhow::Result<String> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing HS256 token")
}
