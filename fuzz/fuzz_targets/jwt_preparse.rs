//! Connection tokens (`auth::verify_connect_token`) in three shapes, chosen by the
//! first byte:
//!
//! 0. any text as a token;
//! 1. base64url(header) . base64url(claims) . signature, from fuzz bytes, so the
//!    header and claims parsers see arbitrary JSON (the signature never verifies);
//! 2. arbitrary claims JSON correctly signed with the configured secret, so the
//!    claims decoder and the `exp`, `aud` and `iss` checks run on arbitrary input.
//!
//! Nothing may panic, and a token that verifies meets the configured `aud`/`iss`
//! and has not expired. (A crash found here: a signed claim Tidings does not read
//! may hold bytes that are not UTF-8; see the hostile suite's
//! `token_claims_are_utf8_where_they_are_read`.)
#![no_main]

use std::future::Future as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tidings::auth::{unix_now, ConnectClaims, TokenError, TokenVerifier};
use tidings::config::TokenConfig;

const SECRET: &str = "fuzzing-secret-fuzzing-secret-32";

/// Verifies with the HMAC verifier the configuration describes. With static keys the
/// verification never waits, so polling the future once must finish it.
fn verify_connect_token(config: &TokenConfig, token: &str) -> Result<ConnectClaims, TokenError> {
    let verifier = TokenVerifier::new(config, "client.token", false).expect("valid config");
    let mut fut = std::pin::pin!(verifier.verify_connect(token));
    let waker = std::task::Waker::noop();
    match fut.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => panic!("static-key verification waited"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let checked = mode & 0x80 != 0;
    // The struct update keeps the defaults of fields added later (other algorithms,
    // key sources).
    #[allow(clippy::needless_update)]
    let config = TokenConfig {
        hmac_secret_key: SECRET.into(),
        audience: if checked {
            "tidings".into()
        } else {
            String::new()
        },
        issuer: if checked {
            "auth".into()
        } else {
            String::new()
        },
        ..TokenConfig::default()
    };
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                let _ = verify_connect_token(&config, token);
            }
        }
        1 => {
            let (header, tail) = split(rest);
            let (claims, signature) = split(tail);
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims),
                String::from_utf8_lossy(signature)
            );
            let _ = verify_connect_token(&config, &token);
        }
        _ => {
            let alg =
                [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512][usize::from(mode >> 2) % 3];
            let header = format!("{{\"alg\":\"{alg:?}\",\"typ\":\"JWT\"}}");
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(rest)
            );
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg)
                .expect("HMAC signing cannot fail");
            let token = format!("{message}.{signature}");
            let Ok(claims) = verify_connect_token(&config, &token) else {
                return;
            };
            if let Some(exp) = claims.exp {
                assert!(exp + 2 >= unix_now(), "an expired token verified");
            }
            if checked {
                // serde_json checks UTF-8 only in the strings it keeps, so a claim
                // nobody reads may hold bytes that are not UTF-8 (the signer is
                // trusted; the claims Tidings reads are checked). Read the rest as
                // text with those bytes replaced.
                let text = String::from_utf8_lossy(rest);
                let json: Value = serde_json::from_str(&text).expect("verified claims are JSON");
                assert_eq!(json["iss"], "auth", "iss not checked: {json}");
                let aud_ok = json["aud"] == "tidings"
                    || json["aud"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|v| v == "tidings"));
                assert!(aud_ok, "aud not checked: {json}");
            }
        }
    }
});

/// Splits at the first 0xFF byte (which never occurs in UTF-8).
fn split(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|b| *b == 0xff) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[]),
    }
}
