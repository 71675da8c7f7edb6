//! The admin session token: what a login returns and every later request carries
//! in `Authorization: token <token>`.
//!
//! It is a JWT signed with HS256 and `admin.secret`, with an expiry and the
//! audience [`AUDIENCE`]. The audience keeps a client connection token apart even
//! when someone sets `admin.secret` to the same value as
//! `client.token.hmac_secret_key`: a client token has no such `aud`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The `aud` of every admin token.
pub const AUDIENCE: &str = "tidings-admin";

/// How long a session lasts after the login: a working day, after which the UI
/// asks for the password again.
pub const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// Why a token was refused. The admin endpoints answer each with 401 and the
/// same message, so a caller learns nothing of which check failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, a wrong signature or algorithm, a missing claim, another audience.
    #[error("invalid admin token")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    /// Well signed, but past its `exp`.
    #[error("the admin token has expired")]
    Expired,
}

/// A token for a session that starts at `now` (Unix seconds) and lasts `ttl`.
///
/// # Errors
/// Only if signing fails, which HS256 with any secret does not.
pub fn sign(
    secret: &str,
    now: u64,
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        sub: "admin".into(),
        aud: AUDIENCE.into(),
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Checks a token against `secret`: HS256 only, the admin audience, not expired
/// (no leeway).
///
/// # Errors
/// [`TokenError`] for anything else.
pub fn verify(secret: &str, token: &str) -> Result<(), TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.leeway = 0;
    match jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    ) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            Err(TokenError::Expired)
        }
        Err(e) => Err(TokenError::Invalid(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::unix_now;

    const SECRET: &str = "an admin secret of thirty-two bytes!";

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let now = unix_now();
        let token = sign(SECRET, now, SESSION_TTL).unwrap();
        verify(SECRET, &token).unwrap();
        let old = sign(SECRET, now - 7200, std::time::Duration::from_secs(3600)).unwrap();
        assert!(matches!(verify(SECRET, &old), Err(TokenError::Expired)));
    }

    #[test]
    fn another_secret_or_audience_is_refused() {
        let now = unix_now();
        let token = sign("another secret", now, SESSION_TTL).unwrap();
        assert!(matches!(
            verify(SECRET, &token),
            Err(TokenError::Invalid(_))
        ));
        // A client connection token signed with the same secret has no admin `aud`.
        let client = crate::auth::sign_connect_token(
            SECRET,
            &crate::auth::ConnectClaims {
                sub: "admin".into(),
                exp: Some(now + 60),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(verify(SECRET, &client).is_err());
        assert!(verify(SECRET, "not.a.token").is_err());
    }
}
