//! Keys written into the configuration: the HMAC secret and PEM public keys.
//!
//! Each key enables only the algorithms of its own family, which is what keeps an
//! RSA public key (public by nature) from ever being used as an HMAC secret: an
//! HS256 token is checked against the HMAC secret or not at all.

use jsonwebtoken::{Algorithm, DecodingKey};

use super::AuthConfigError;
use crate::config::TokenConfig;

/// DER of the P-256 curve OID (1.2.840.10045.3.1.7) as it appears in a public key.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the P-384 curve OID (1.3.132.0.34).
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// The keys of a `client.token` section, each with the algorithms it serves.
#[derive(Default)]
pub struct StaticKeys {
    /// HS256/HS384/HS512.
    hmac: Option<DecodingKey>,
    /// RS256/RS384/RS512.
    rsa: Option<DecodingKey>,
    /// ES256 or ES384, after the key's curve.
    ecdsa: Option<(DecodingKey, Algorithm)>,
    /// EdDSA (Ed25519).
    ed25519: Option<DecodingKey>,
}

impl StaticKeys {
    /// Parses the configured keys.
    ///
    /// # Errors
    /// [`AuthConfigError::Key`] for a key that is not a PEM public key of its kind.
    pub fn from_config(config: &TokenConfig, prefix: &str) -> Result<Self, AuthConfigError> {
        let err = |name: &str, reason: String| AuthConfigError::Key {
            key: format!("{prefix}.{name}"),
            reason,
        };
        let mut keys = StaticKeys::default();
        if !config.hmac_secret_key.is_empty() {
            keys.hmac = Some(DecodingKey::from_secret(config.hmac_secret_key.as_bytes()));
        }
        if !config.rsa_public_key.is_empty() {
            let pem = public_pem(&config.rsa_public_key).map_err(|r| err("rsa_public_key", r))?;
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| err("rsa_public_key", format!("not an RSA public key: {e}")))?;
            keys.rsa = Some(key);
        }
        if !config.ecdsa_public_key.is_empty() {
            let text =
                public_pem(&config.ecdsa_public_key).map_err(|r| err("ecdsa_public_key", r))?;
            let der = pem_der(&text).map_err(|r| err("ecdsa_public_key", r))?;
            let alg = if contains(&der, OID_P256) {
                Algorithm::ES256
            } else if contains(&der, OID_P384) {
                Algorithm::ES384
            } else {
                return Err(err(
                    "ecdsa_public_key",
                    "only P-256 (ES256) and P-384 (ES384) keys are supported".into(),
                ));
            };
            let key = DecodingKey::from_ec_pem(text.as_bytes())
                .map_err(|e| err("ecdsa_public_key", format!("not an ECDSA public key: {e}")))?;
            keys.ecdsa = Some((key, alg));
        }
        if !config.ed25519_public_key.is_empty() {
            let text =
                public_pem(&config.ed25519_public_key).map_err(|r| err("ed25519_public_key", r))?;
            let key = DecodingKey::from_ed_pem(text.as_bytes()).map_err(|e| {
                err(
                    "ed25519_public_key",
                    format!("not an Ed25519 public key: {e}"),
                )
            })?;
            keys.ed25519 = Some(key);
        }
        Ok(keys)
    }

    /// The key that verifies `alg`, when one is configured for it.
    pub fn key_for(&self, alg: Algorithm) -> Option<&DecodingKey> {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => self.hmac.as_ref(),
            RS256 | RS384 | RS512 => self.rsa.as_ref(),
            ES256 | ES384 => match &self.ecdsa {
                Some((key, curve_alg)) if *curve_alg == alg => Some(key),
                _ => None,
            },
            EdDSA => self.ed25519.as_ref(),
            // RSASSA-PSS is not among the algorithms Centrifugo accepts.
            PS256 | PS384 | PS512 => None,
        }
    }

    /// Every algorithm some configured key accepts.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        use Algorithm::*;
        [
            HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA,
        ]
        .into_iter()
        .filter(|alg| self.key_for(*alg).is_some())
        .collect()
    }
}

/// Accepts PEM public keys only. A private key in the server's configuration is a
/// mistake worth stopping at: it should live with the token issuer alone. Line breaks
/// written as `\n` (common in environment variables) are turned into real ones.
fn public_pem(value: &str) -> Result<String, String> {
    let text = value.replace("\\n", "\n");
    let text = text.trim();
    if text.contains("PRIVATE KEY") {
        return Err("this is a private key; configure the public key".into());
    }
    if !text.starts_with("-----BEGIN ") || !text.contains("PUBLIC KEY-----") {
        return Err("expected a PEM public key (-----BEGIN PUBLIC KEY-----)".into());
    }
    Ok(text.to_string())
}

/// The DER bytes inside a PEM block.
fn pem_der(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "PEM body is not base64".to_string())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_families_of_configured_keys_are_enabled() {
        let keys = StaticKeys::from_config(
            &TokenConfig {
                hmac_secret_key: "s".into(),
                ..Default::default()
            },
            "client.token",
        )
        .unwrap();
        assert_eq!(
            keys.algorithms(),
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
        );
        assert!(keys.key_for(Algorithm::RS256).is_none());
        assert!(keys.key_for(Algorithm::EdDSA).is_none());
    }

    #[test]
    fn private_keys_and_garbage_are_refused_with_the_key_name() {
        let cfg = TokenConfig {
            rsa_public_key: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into(),
            ..Default::default()
        };
        let err = StaticKeys::from_config(&cfg, "client.token").err().unwrap();
        assert!(
            err.to_string().contains("client.token.rsa_public_key"),
            "{err}"
        );
        let cfg = TokenConfig {
            ecdsa_public_key: "not a key".into(),
            ..Default::default()
        };
        assert!(StaticKeys::from_config(&cfg, "client.token").is_err());
    }
}
